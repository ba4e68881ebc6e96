"""The cascade: teacher -> assistant -> ... -> student, each stage's student the next one's teacher.

`run_recipe` is the whole job behind `cascade-kd run`:
  1. read and check everything (data, labels, stage shapes, layer maps) before any training;
  2. get the teacher (load it, fine-tune it, or train it from a config) and save it;
  3. for each stage, build the student from the stage's teacher, distil, keep the best dev
     checkpoint, save it; with `direct: true`, distil the final shape straight from the teacher;
  4. score every model on every language and write metrics.json and report.md.
A finished model is never recomputed on `--resume` (its directory holds a `stage.json` marker
written last, with the recipe fingerprint).

Dense stages (`guides: dense`, DGKD, Son et al. ICCV 2021): stage i is taught by all i+1 larger
models of the chain at once, the original teacher and every earlier stage's student (loaded from
disk when those stages were done before a `--resume`). Its logit losses (kl, logit_mse) are
computed against each guide and summed (the paper's choice: the effective weight grows with the
number of guides) or averaged (`guide_reduction: mean`) over the guides kept in the batch, where
exactly `drop_guides` are dropped per batch, reproducibly from the stage seed and the step. `ce`
is unchanged; hidden-state and attention losses still use only the immediate teacher. The direct
baseline is never dense: it learns from the original teacher alone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from cascade_kd.cascade.job import Job, prepare
from cascade_kd.cascade.plan import direct_spec, final_spec, learns_from_teacher
from cascade_kd.cascade.rundir import (
    check_resume_or_overwrite,
    check_same_inputs,
    eval_dir,
    input_digests,
    model_dir,
    open_run_dir,
    read_stage_info,
    write_manifest,
)
from cascade_kd.cascade.stages import distil_stage, get_teacher
from cascade_kd.config.schema import Recipe, where
from cascade_kd.errors import OutputError, RecipeError, UserError
from cascade_kd.evaluation.html_report import write_html_report
from cascade_kd.evaluation.model_card import write_model_cards
from cascade_kd.evaluation.report import write_outputs
from cascade_kd.evaluation.retrieval import evaluate_retrieval, retention_table
from cascade_kd.evaluation.run_files import not_finished
from cascade_kd.evaluation.scoring import (
    evaluate_languages,
    metric_for,
    summarise,
    summarise_groups,
)
from cascade_kd.fileio import read_input
from cascade_kd.outdir import check_output, make_directory, output_path, write_marker
from cascade_kd.students import count_parameters, family_of
from cascade_kd.students.hub import load_checkpoint
from cascade_kd.training.distributed import barrier, is_main, main_say
from cascade_kd.training.progress import RunProgress, RunSet, training_lines_to
from cascade_kd.training.setup import resolve_precision


def run_recipe(recipe: Recipe, out: Path, *, resume: bool = False, overwrite: bool = False, say=print,
               run_set: RunSet | None = None, until: str | None = None) -> dict:
    """Run a whole recipe; returns the metrics written to RUN_DIR/metrics.json. `run_set`: the set
    of runs this one belongs to (`run --seeds`), for the time-left estimate. `until` (a model's
    name: teacher, a stage, direct) stops once that model is saved, scoring nothing and returning
    {"stopped_after": until}: a grid whose other runs read only this run's teacher trains no more
    of it (a `--resume` later goes on from there)."""
    check_resume_or_overwrite(out, resume=resume, overwrite=overwrite)
    names = recipe.cascade.model_names()
    if until is not None and until not in names:
        raise RecipeError(f"until={until!r}: the recipe has no such model", hint=f"one of {', '.join(names)}")
    out = output_path(out)  # a path that cannot be a directory is reported before any work
    say = main_say(say)
    job = prepare(recipe, out, say)  # every input check happens before RUN_DIR is touched
    with open_run_dir(recipe, out, resume=resume, overwrite=overwrite, say=say), training_lines_to(say):
        digests = input_digests(job)
        if resume:  # after the recipe's check, on every process, before the manifest is rewritten
            check_same_inputs(job, digests)
        if is_main():  # RUN_DIR is locked until the run ends; the training lines go to `say` too
            write_manifest(job, digests)
        barrier()  # the others read RUN_DIR (finished stages, training state) only once it is ready
        return _run(job, run_set, until)


def _run(job: Job, run_set: RunSet | None = None, until: str | None = None) -> dict:
    recipe, out = job.recipe, job.out
    started = time.perf_counter()
    job.progress = RunProgress(training_plan(job), run_set)
    stopped = {"stopped_after": until}

    teacher, teacher_info = get_teacher(job)
    if until == "teacher":
        return stopped
    models = [("teacher", "teacher", teacher, teacher_info, model_dir(out, "teacher"))]
    chain = [teacher]  # the teacher, then each stage's student (loaded too when done before a resume)
    stages = recipe.cascade.stages
    for i, stage in enumerate(stages):
        guides = chain[: i + 1] if stage.guides == "dense" else None
        stage_teacher = chain[recipe.cascade.teacher_of(i)]
        student, info = distil_stage(job, stage.name, stage, stage_teacher, i, guides=guides, previous=chain[i])
        role = "student" if i == len(stages) - 1 else "assistant"
        models.append((stage.name, role, student, info, model_dir(out, stage.name)))
        chain.append(student)
        if until == stage.name:
            return stopped
    current = chain[-1]
    if recipe.cascade.trains_direct:
        final = stages[-1]
        spec = direct_spec(final_spec(stages), current.config, teacher.config)
        student, info = distil_stage(job, "direct", final, teacher, len(stages) - 1, spec=spec)
        models.append(("direct", "direct", student, info, model_dir(out, "direct")))
        if until == "direct":
            return stopped
    elif recipe.cascade.direct and stages and "direct" in recipe.cascade.model_fields_set:  # asked for, not the default
        job.say(f"direct: not trained: with one stage, {stages[0].name} is itself distilled straight from the "
                "teacher (cascade.direct compares a chain of stages with that)")

    metrics = score_models(job, models)
    metrics["recipe_fingerprint"] = recipe.fingerprint()  # which recipe's run these scores finish
    metrics["wall_time_s"] = time.perf_counter() - started
    if is_main():
        write_outputs(out, {**_measured_later(out), **metrics})
        publish_run(out, say=job.say)
        state = out / "state"
        if state.is_dir() and not state.is_symlink():  # every model finished: no training state is left to resume from
            names = recipe.cascade.model_names()
            for leftover in state.iterdir():  # a killed checkpoint write's temporary copy (.NAME.*), often a model's size
                if leftover.is_dir() and not leftover.is_symlink() and any(leftover.name.startswith(f".{n}.") for n in names):
                    shutil.rmtree(leftover, ignore_errors=True)
            if not any(state.iterdir()):
                state.rmdir()
    barrier()
    return metrics


def _measured_later(out: Path) -> dict:
    """What other commands added to this run's metrics.json (bench's latency table, a benchmark's
    latency settings): kept when a resume scores the run again. Latency depends on the models'
    shapes, which a run of the same recipe keeps, not on their weights."""
    try:
        earlier = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return {k: v for k, v in earlier.items() if k.startswith("latency")} if isinstance(earlier, dict) else {}


def training_plan(job: Job) -> list[tuple[str, float]]:
    """The run's models in training order, each with its work: training examples x epochs (the
    teacher's counts even where it turns out to need no training; it is then finished at once)."""
    recipe = job.recipe
    plan = [("teacher", len(job.train_set()) * recipe.teacher_train().epochs)]
    stages = recipe.cascade.stages
    for i, stage in enumerate(stages):
        with_transfer = bool(job.transfer) and learns_from_teacher(recipe, stage)
        epochs = recipe.stage_train(i).epochs
        plan.append((stage.name, len(job.training_data(with_transfer)[0]) * epochs))
    if recipe.cascade.trains_direct:
        plan.append(("direct", plan[-1][1]))
    return plan


def publish_run(run_dir: Path, say=print) -> None:
    """RUN_DIR/report.html and a model card (README.md) in every saved model's directory, from the
    run's metrics.json, manifest.json and markers. A failure here never costs the run: it is said
    and the run's results stay (`cascade-kd report RUN_DIR` builds them again)."""
    try:
        write_model_cards(run_dir, say=say)
        write_html_report(run_dir)
    except UserError as err:
        say(f"WARNING: no HTML report or model cards: {err}")


def score_models(job: Job, models, split: str | None = None) -> dict:
    """Score every model on the report split (default: test if present, else dev) and on the dev
    sets that selected it (those of data.recipe's selection languages)."""
    data = job.data
    split = split or ("test" if "test" in job.encoded else "dev")
    bf16 = resolve_precision(job.recipe.train.precision) == "bf16"
    seen, zero_shot = data.train_languages, data.zero_shot_languages
    selection = job.recipe.data.selection_languages
    rows, teacher_scores = [], None
    for name, role, model, info, directory in models:
        # the kind the recipe named (a registered variant of the transformer family shares its model type)
        kind = info.get("kind") or (info.get("student") or {}).get("kind") or family_of(model).kind
        per_lang = evaluate_languages(model, job.encoded[split], data.task, data.labels,
                                      batch_size=job.recipe.train.eval_batch_size, pad_id=job.pad_id, bf16=bf16)
        dev = {lang: per_lang[lang] for lang in selection} if split == "dev" else evaluate_languages(
            model, job.selection_dev, data.task, data.labels, batch_size=job.recipe.train.eval_batch_size,
            pad_id=job.pad_id, bf16=bf16)
        if role == "teacher":
            teacher_scores = per_lang
        summary = summarise(per_lang, teacher_scores)
        groups = summarise_groups(per_lang, teacher_scores, seen, zero_shot)
        rows.append({
            "name": name, "role": role, "path": str(directory.relative_to(job.out)),
            "kind": kind, "layers_label": family_of(model).layers_label(model.config),
            "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size,
            "heads": model.config.num_attention_heads, **{**count_parameters(model), **info.get("params", {})},
            "per_language": per_lang, "average": summary["average"], "worst": summary["worst"],
            "worst_language": summary["worst_language"], "retention": summary["retention"],
            "retention_per_language": summary["retention_per_language"], **groups,
            "dev_average": sum(dev.values()) / len(dev), "dev_per_language": dev,
            "wall_time_s": info.get("wall_time_s"), "train_tokens_per_s": info.get("tokens_per_s"),
        })
    return {
        "name": job.recipe.name, "task": data.task, "metric": metric_for(data.task, data.labels),
        "split": split, "languages": data.languages, "train_languages": seen, "zero_shot_languages": zero_shot,
        "select_on": job.recipe.data.select_on, "selection_languages": selection,
        "labels": data.labels, "models": rows,
    }


def evaluate_run(recipe: Recipe, run_dir: Path, *, split: str = "test", out: Path | None = None, say=print,
                 parallel: dict | None = None) -> dict:
    """Re-score every saved model of a finished run on the data `recipe` names, without training.
    With `parallel` ({lang: (sentences, english sentences)}, see retrieval.py), also measure each
    model's cross-lingual sentence retrieval and its retention against the teacher."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise not_finished(run_dir)
    job = prepare(recipe, run_dir, say)
    if split not in job.encoded:
        instead = "score the dev data instead: --split dev (split='dev' in Python)" if "dev" in job.encoded else None
        raise RecipeError(f"the recipe names no {split} data", where=where(recipe, "data", split), hint=instead)
    job.encoded = {s: job.encoded[s] for s in ("dev", split)}
    target = claim_eval_dir(run_dir, eval_dir(run_dir, split, out))
    if (target / "metrics.json").is_file():  # an earlier eval's, allowed to be replaced: say so, before any work
        say(f"eval: {target} holds an earlier eval, which this one replaces (give --out to keep both)")
    previous = read_metrics(metrics_path)
    models = []
    for row in previous["models"]:
        directory = run_dir / row["path"]
        if not (directory / "config.json").is_file():
            raise UserError(f"model {row['name']!r} is missing", where=str(directory))
        info = read_stage_info(directory)[0] or {}
        models.append((row["name"], row["role"], load_checkpoint(directory, job.data.task), info, directory))
    metrics = score_models(job, models, split=split)
    # the run whose models these are (its manifest: seed, recipe), relative to this folder: moved together
    metrics["evaluated_run"] = os.path.relpath(run_dir.resolve(), target.resolve())
    metrics["evaluated_with"] = recipe.fingerprint()  # which data scored them
    if parallel:
        per_model = {}
        for name, _, model, _, _ in models:
            say(f"retrieval: {name} on {len(parallel)} language pair(s)")
            per_model[name] = evaluate_retrieval(model, job.tokenizer, parallel, max_length=recipe.task.max_length,
                                                 batch_size=recipe.train.eval_batch_size)
        metrics["retrieval"] = {"per_model": per_model, "summary": retention_table(per_model, teacher=models[0][0])}
    write_eval(target, metrics)
    return metrics


EVAL_FILES = ("metrics.json", "report.md")


def claim_eval_dir(run_dir: Path, target: Path) -> Path:
    """Where eval may write: a new or empty folder, or an earlier eval's (whose two files it replaces);
    never the run itself or a folder holding it. Returns the checked path."""
    if Path(target).resolve() == Path(run_dir).resolve():
        raise UserError("eval would overwrite the run's own metrics.json and report.md", where=str(target),
                        hint="give another --out (default RUN_DIR/eval-SPLIT)")
    found = check_output(target, "eval", rewrite=True, inputs={"run directory": Path(run_dir)}, legacy=_legacy_eval)
    listed = found.marker["entries"] if found.state == "own" else EVAL_FILES
    for name in EVAL_FILES:  # replaced by a rename: only what an earlier eval wrote there
        path = found.path / name
        if os.path.lexists(path) and (name not in listed or (path.is_dir() and not path.is_symlink())):
            raise OutputError(f"{name} there is not one an earlier eval wrote, and eval would replace it",
                              where=str(path), hint="move it away, or choose another --out")
    return found.path


def write_eval(target: Path, metrics: dict) -> None:
    """The marker first (so an interrupted write leaves a folder eval may write again), then the files."""
    make_directory(target)
    write_marker(target, "eval", EVAL_FILES)
    write_outputs(target, metrics)


def _legacy_eval(path: Path) -> bool:
    """An eval output written before markers: nothing but metrics.json (a run's metrics) and report.md."""
    entries = {p.name for p in path.iterdir()}
    return entries <= set(EVAL_FILES) and "metrics.json" in entries and read_metrics(path / "metrics.json", quiet=True) is not None


def read_metrics(path: Path, quiet: bool = False) -> dict | None:
    """A run's metrics.json (a JSON object with a list of models), else a UserError (None if quiet)."""
    try:
        data = json.loads(read_input(path, limit=256 << 20, what="metrics.json").decode("utf-8"))
        if isinstance(data, dict) and isinstance(data.get("models"), list) and all(
                isinstance(r, dict) and {"name", "role", "path"} <= set(r) for r in data["models"]):
            return data
        problem = "not a cascade-kd metrics.json (no list of models)"
    except UserError as err:
        problem = err.message
    except (ValueError, UnicodeDecodeError) as exc:
        problem = f"not valid JSON ({type(exc).__name__})"
    if quiet:
        return None
    raise UserError(f"metrics.json cannot be read: {problem}", where=str(path),
                    hint="it is written at the end of a run: finish the run with --resume")
