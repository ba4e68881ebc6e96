"""`cascade-kd run RECIPE --dry-run`: every check a run makes before it trains (recipe, data files,
tokenizer, teacher config, each student's shape, losses, layer maps; RUN_DIR too when given), then
the plan it would follow, one row per model. Nothing is written in RUN_DIR or beside the recipe,
and no weight is allocated (models are built on the meta device to count their parameters); hub
data and models are fetched into the Hugging Face cache, as a run would."""

from __future__ import annotations

from pathlib import Path

from cascade_kd.cascade.job import prepare
from cascade_kd.cascade.rundir import check_resume_or_overwrite, check_run_dir
from cascade_kd.config.schema import Recipe
from cascade_kd.losses.registry import LOSSES
from cascade_kd.outdir import output_path
from cascade_kd.students import count_parameters, family_of
from cascade_kd.students.hub import model_on_meta


def dry_run(recipe: Recipe, out: Path | None = None, *, resume: bool = False, overwrite: bool = False,
            say=print) -> list[dict]:
    """The run's models in training order, each as {name, role, learns_from, kind, shape, layers,
    params_total, params_embedding, epochs, losses}; raises the UserError a run would raise. With
    `out`, also the checks of RUN_DIR that `run` makes with these `resume` / `overwrite` flags."""
    if out is not None:
        check_resume_or_overwrite(out, resume=resume, overwrite=overwrite)
        out = output_path(out)
    job = prepare(recipe, out or Path("<dry run: nothing is written>"), say)
    if out is not None:
        check_run_dir(recipe, out, resume=resume, overwrite=overwrite, say=say)
    stages, names = recipe.cascade.stages, recipe.cascade.model_names()
    rows = []
    for name in names:
        config = job.configs[name]
        family = family_of(config)
        counts = count_parameters(model_on_meta(config, job.data.task))
        if name == "teacher":
            trains = recipe.teacher.trains(job.teacher_head)  # as stages.get_teacher decides, from the config
            role, source = "teacher", _teacher_source(recipe, trains)
            epochs = recipe.teacher_train().epochs if trains else None
            losses = ("masked-LM" if job.data.task == "mlm" else "labels (cross-entropy)") if trains else "—"
        else:
            index = len(stages) - 1 if name == "direct" else [s.name for s in stages].index(name)
            stage = stages[index]
            role = "direct" if name == "direct" else ("student" if index == len(stages) - 1 else "assistant")
            terms = {n: c for n, c in recipe.stage_losses(stage).items() if c.weight}
            teacher = "teacher" if name == "direct" else names[recipe.cascade.teacher_of(index)]
            source = teacher if any(LOSSES[n].reads_teacher for n in terms) else "labels only"
            if name != "direct" and stage.guides == "dense":
                source += " (dense guides: " + ", ".join(names[:index]) + ")"
            if name != "direct" and stage.student == "previous":
                source += f"; trains {names[index]} further"
            epochs = recipe.stage_train(index).epochs
            losses = ", ".join(f"{n} x {c.weight:g}" for n, c in terms.items())
        rows.append({"name": name, "role": role, "learns_from": source, "kind": family.kind, "shape": family.shape(config),
                     "layers": config.num_hidden_layers, "params_total": counts["params_total"],
                     "params_embedding": counts["params_embedding"], "epochs": epochs, "losses": losses})
    return rows


def _teacher_source(recipe: Recipe, trains: bool) -> str:
    t = recipe.teacher
    if t.model is None:
        return "trained from its config" if trains else "its config, untrained (finetune: never)"
    return f"{t.model}, fine-tuned" if trains else f"{t.model} as it is (its head fits these labels)"


def plan_table(rows: list[dict]) -> str:
    """The dry run's rows as a markdown table."""
    lines = ["| model | role | learns from | kind | shape | parameters (embeddings) | epochs | losses |",
             "|---|---|---|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['role']} | {r['learns_from']} | {r['kind']} | {r['shape']} | "
                     f"{r['params_total'] / 1e6:.2f}M ({r['params_embedding'] / 1e6:.2f}M) | "
                     f"{'—' if r['epochs'] is None else format(r['epochs'], 'g')} | {r['losses']} |")
    return "\n".join(lines)
