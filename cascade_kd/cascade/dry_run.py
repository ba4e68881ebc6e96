"""`cascade-kd run RECIPE --dry-run`: every check a run makes before it trains (recipe, data files,
tokenizer, teacher config, each student's shape, losses, layer maps), then the plan it would
follow, one row per model, with nothing written and no weight allocated (the models are built
on the meta device to count their parameters)."""

from __future__ import annotations

from pathlib import Path

from cascade_kd.cascade.job import prepare
from cascade_kd.config.schema import Recipe
from cascade_kd.students import count_parameters, family_of
from cascade_kd.students.hub import model_on_meta


def dry_run(recipe: Recipe, say=print) -> list[dict]:
    """The run's models in training order, each as {name, role, learns_from, kind, shape, layers,
    params_total, params_embedding, epochs, losses}; raises the UserError a run would raise."""
    job = prepare(recipe, Path("<dry run: nothing is written>"), say)
    stages, names = recipe.cascade.stages, recipe.cascade.model_names()
    rows = []
    for name in names:
        config = job.configs[name]
        family = family_of(config)
        counts = count_parameters(model_on_meta(config, job.data.task))
        if name == "teacher":
            trains = recipe.teacher.model is None or recipe.teacher.finetune != "never"
            role, source = "teacher", _teacher_source(recipe)
            epochs = recipe.teacher_train().epochs if trains else None
            losses = ("masked-LM" if job.data.task == "mlm" else "labels (cross-entropy)") if trains else "—"
        else:
            index = len(stages) - 1 if name == "direct" else [s.name for s in stages].index(name)
            teacher_index = 0 if name == "direct" else recipe.cascade.teacher_of(index)
            role = "direct" if name == "direct" else ("student" if index == len(stages) - 1 else "assistant")
            source = names[teacher_index] + (" (trained further)" if name != "direct" and stages[index].student == "previous"
                                             else "")
            epochs = recipe.stage_train(index).epochs
            losses = ", ".join(f"{n} x {c.weight:g}" for n, c in recipe.stage_losses(stages[index]).items() if c.weight)
        rows.append({"name": name, "role": role, "learns_from": source, "kind": family.kind, "shape": family.shape(config),
                     "layers": config.num_hidden_layers, "params_total": counts["params_total"],
                     "params_embedding": counts["params_embedding"], "epochs": epochs, "losses": losses})
    return rows


def _teacher_source(recipe: Recipe) -> str:
    t = recipe.teacher
    if t.model is None:
        return "trained from its config"
    return {"never": f"{t.model} as it is", "always": f"{t.model}, fine-tuned"}.get(
        t.finetune, f"{t.model}, fine-tuned unless it has a head for these labels")


def plan_table(rows: list[dict]) -> str:
    """The dry run's rows as a markdown table."""
    lines = ["| model | role | learns from | kind | shape | parameters (embeddings) | epochs | losses |",
             "|---|---|---|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['role']} | {r['learns_from']} | {r['kind']} | {r['shape']} | "
                     f"{r['params_total'] / 1e6:.2f}M ({r['params_embedding'] / 1e6:.2f}M) | "
                     f"{'—' if r['epochs'] is None else format(r['epochs'], 'g')} | {r['losses']} |")
    return "\n".join(lines)
