"""The Python API: what the `cascade-kd` command does, as functions (the CLI is a thin layer over them).

    import cascade_kd as ckd

    recipe = ckd.Recipe.from_yaml("recipe.yaml")      # or ckd.Recipe.from_dict(d, base_dir=".")
    result = ckd.run(recipe, "runs/x", resume=True)   # the content of runs/x/metrics.json
    ckd.evaluate("runs/x", split="test")              # re-score every saved model, no training
    ckd.export_onnx("runs/x/stages/student", int8=True)

Every problem with the input raises a `UserError` (a `RecipeError` for the recipe, a `DataError` for
a data file) whose message names the file, line or key and says how to fix it: the same line the
command prints before exiting with code 2.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

from transformers import AutoTokenizer

from cascade_kd.cascade import evaluate_run, run_recipe
from cascade_kd.cascade.dry_run import dry_run as _dry_run
from cascade_kd.cascade.run import publish_run, read_metrics
from cascade_kd.cascade.rundir import is_run, locked_run_dir
from cascade_kd.cascade.seeds import run_seeds as _run_seeds
from cascade_kd.config import Recipe
from cascade_kd.deploy.bench import BACKENDS, bench_run
from cascade_kd.deploy.export import INT8_MIN_AGREEMENT, export_model, find_run_dir, model_task
from cascade_kd.deploy.trim import DEFAULT_MAX_UNK_INCREASE, trim_model_dir
from cascade_kd.errors import UserError
from cascade_kd.evaluation.compare import COMPARISON_FILES, check_output_dir, compare_runs, rebuild_comparison
from cascade_kd.evaluation.html_report import write_html_report
from cascade_kd.evaluation.model_card import write_model_cards
from cascade_kd.evaluation.report import write_outputs
from cascade_kd.evaluation.retrieval import tatoeba_pairs
from cascade_kd.evaluation.run_files import not_finished, read_run
from cascade_kd.students.hub import load_checkpoint

Say = Callable[[str], None]


def _own_progress_only(function):
    """transformers draws bars of its own (loading and writing weights) that `say` cannot silence;
    the call's own lines say what is happening, so those bars are off during the call, as on the
    command line, and back as they were after it."""
    @functools.wraps(function)
    def call(*args, **kwargs):
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
        from transformers.utils import logging as hf_logging

        # transformers' switch turns the hub's bars on and off too: each goes back as it was
        transformers_on, hub_on = hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
        hf_logging.disable_progress_bar()
        try:
            return function(*args, **kwargs)
        finally:
            if transformers_on:
                hf_logging.enable_progress_bar()
            (enable_progress_bars if hub_on else disable_progress_bars)()
    return call


def _recipe(recipe: Recipe | str | Path | dict, base_dir: str | Path = ".") -> Recipe:
    """A Recipe from a Recipe, a path to a YAML file, or a dict (paths in it relative to `base_dir`)."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe, base_dir=base_dir)
    if isinstance(recipe, (str, Path)):
        return Recipe.from_yaml(recipe)
    raise TypeError(f"a recipe is a Recipe, a path to a YAML file or a dict, not {type(recipe).__name__}")


@_own_progress_only
def run(recipe: Recipe | str | Path | dict, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        say: Say = print) -> dict:
    """Run a recipe: get the teacher, distil every stage (and the direct baseline), score every model
    on every language. Writes RUN_DIR (checkpoints, metrics.json, report.md) and returns the metrics.

    `resume=True` continues an interrupted run: finished models are loaded, an interrupted stage goes
    on from its last checkpoint. `overwrite=True` replaces an earlier run in RUN_DIR. Without either,
    RUN_DIR must be new or empty."""
    return run_recipe(_recipe(recipe), Path(run_dir), resume=resume, overwrite=overwrite, say=say)


@_own_progress_only
def dry_run(recipe: Recipe | str | Path | dict, run_dir: str | Path | None = None, *, resume: bool = False,
            overwrite: bool = False, say: Say = print) -> list[dict]:
    """Make every check `run` makes before it trains (recipe, data, tokenizer, teacher, each
    student's shape, losses, layer maps; with `run_dir`, RUN_DIR as `run` would with these flags)
    and return the plan: one dict per model in training order (name, role, learns_from, kind,
    shape, layers, params_total, params_embedding, epochs, losses). Writes nothing in RUN_DIR or
    beside the recipe (hub data and models are fetched into the Hugging Face cache, as a run
    would); raises the UserError a run would raise."""
    return _dry_run(_recipe(recipe), None if run_dir is None else Path(run_dir), resume=resume, overwrite=overwrite,
                    say=say)


@_own_progress_only
def evaluate(run_dir: str | Path, *, recipe: Recipe | str | Path | dict | None = None, split: str = "test",
             out: str | Path | None = None, parallel: str | Path | None = None, parallel_languages: str | None = None,
             parallel_limit: int | None = None, say: Say = print) -> dict:
    """Re-score every saved model of a finished run on `split` of the data `recipe` names (default:
    the run's own recipe.yaml), without training; results go to `out` (default RUN_DIR/eval-SPLIT).
    With `parallel` (a folder of Tatoeba-style parallel text), also measure cross-lingual sentence
    retrieval and each model's retention of it. Returns the metrics written."""
    run_dir = Path(run_dir)
    if parallel_limit is not None and parallel_limit < 1:
        raise UserError(f"--parallel-limit {parallel_limit} is not a positive number of pairs")
    if parallel_languages is not None and not parallel_languages.strip(" ,"):
        raise UserError("--parallel-languages is empty", hint="give codes such as deu,fra, or leave the flag out for all")
    if parallel is None and (parallel_languages or parallel_limit):
        raise UserError("--parallel-languages and --parallel-limit need --parallel (the folder of parallel text)")
    pairs = tatoeba_pairs(parallel, parallel_languages, limit=parallel_limit) if parallel is not None else None
    recipe = _recipe(recipe if recipe is not None else run_dir / "recipe.yaml")
    return evaluate_run(recipe, run_dir, split=split, out=out, say=say, parallel=pairs)


@_own_progress_only
def bench(run_dir: str | Path, *, batch_sizes=(1, 32), seq_lens=(32, 128), repeats: int = 10, backends=BACKENDS,
          models: list[str] | None = None, say: Say = print) -> dict:
    """Latency, throughput, memory and size of every model of a finished run (or of `models`, by
    name) against its teacher (CPU: PyTorch fp32 and bf16, onnxruntime fp32 and int8). metrics.json
    and report.md of the run gain the table; returns it."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file() or not is_run(run_dir):  # bench adds its table to the run's own report
        raise not_finished(run_dir)
    read_metrics(path)  # a damaged metrics.json: one line, before any timing
    if isinstance(models, str):
        raise UserError(f"bench models={models!r}: a list of model names is expected", hint=f"models=[{models!r}]")
    with locked_run_dir(run_dir):  # a run resumed there meanwhile would rewrite the same files
        result = bench_run(run_dir, batch_sizes=batch_sizes, seq_lens=seq_lens, repeats=repeats, backends=backends,
                           models=models, say=say)
        metrics = read_metrics(path)
        metrics["latency"] = result
        write_outputs(run_dir, metrics)  # metrics.json and report.md gain the latency table
        publish_run(run_dir, say=say)  # and report.html and the model cards
    return result


@_own_progress_only
def export_onnx(model_dir: str | Path, out: str | Path | None = None, *, int8: bool = False, overwrite: bool = False,
                check_data: str | Path | None = None, check_examples: int = 256,
                int8_min_agreement: float = INT8_MIN_AGREEMENT, score: Recipe | str | Path | dict | bool | None = None,
                say: Say = print) -> dict:
    """Export a saved model (RUN_DIR/teacher or RUN_DIR/stages/NAME) to ONNX, and with `int8` also an
    onnxruntime dynamic-int8 copy, each checked against PyTorch on real or generated inputs; written
    to `out` (default MODEL_DIR/onnx) atomically. With `score` (a recipe, or True: the run's own),
    PyTorch and each exported file are also scored per language on the recipe's held-out split
    (info["scores"]). Returns the export info (also in OUT/export.json)."""
    if not 0 <= int8_min_agreement <= 1:
        raise UserError(f"--int8-min-agreement {int8_min_agreement} is not a fraction between 0 and 1")
    info = export_model(Path(model_dir), Path(out) if out is not None else None, int8=int8, overwrite=overwrite,
                        check_data=Path(check_data) if check_data is not None else None, check_examples=check_examples,
                        int8_min_agreement=int8_min_agreement,
                        score=Path(score) if isinstance(score, (str, Path)) else
                        (_recipe(score) if isinstance(score, dict) else score), say=say)
    run_dir = find_run_dir(Path(model_dir))
    if out is None and run_dir is not None and (run_dir / "metrics.json").is_file():
        with locked_run_dir(run_dir):  # as bench and report: never beside a run resumed there
            publish_run(run_dir, say=say)  # the model card now says how to load the ONNX files
    return info


@_own_progress_only
def trim(model_dir: str | Path, out: str | Path | None = None, *, recipe: Recipe | str | Path | dict | None = None,
         languages: list[str] | None = None, min_count: int = 1, max_unk_increase: float = DEFAULT_MAX_UNK_INCREASE,
         score: bool = True, strict: bool = False, overwrite: bool = False, with_transfer: bool = True,
         say: Say = print) -> dict:
    """Keep only the word pieces the chosen languages' training text uses: a standalone smaller model
    and tokenizer in `out` (default MODEL_DIR/trimmed), with per-language coverage and scores before
    and after. Returns that report (also in OUT/trim.json)."""
    return trim_model_dir(Path(model_dir), Path(out) if out is not None else None,
                          recipe_path=None if recipe is None else Path(recipe) if isinstance(recipe, (str, Path))
                          else _recipe(recipe), languages=languages,
                          min_count=min_count, max_unk_increase=max_unk_increase, score=score, strict=strict,
                          overwrite=overwrite, with_transfer=with_transfer, say=say)


@_own_progress_only
def load_model(model_dir: str | Path):
    """A saved model of a run (teacher, assistant, student or direct baseline), in eval mode, with
    its tokenizer: (model, tokenizer). Plain transformers classes; recursive and BiLSTM students are
    registered with the Auto classes by this package."""
    model_dir = Path(model_dir)
    return load_checkpoint(model_dir, model_task(model_dir)), AutoTokenizer.from_pretrained(model_dir)


@_own_progress_only
def run_seeds(recipe: Recipe | str | Path | dict, out: str | Path, seeds: list[int], *, resume: bool = False,
              overwrite: bool = False, say: Say = print) -> dict:
    """Run a recipe once per seed, each in OUT/seed<S> (resumable), then compare them: mean ± sd per
    model and language, cascade against direct with the per-seed differences and the seeds each
    won (OUT/aggregate.json, report.md, report.html). Returns the aggregate."""
    return _run_seeds(_recipe(recipe), Path(out), list(seeds), resume=resume, overwrite=overwrite, say=say)


def compare(run_dirs, out: str | Path | None = None, *, pairs=None) -> dict:
    """Compare finished runs: seeds of one recipe (mean ± sd), or recipes that differ in one choice
    (differences matched by seed, seeds won). `run_dirs`: run directories, grouped into variants by
    recipe, or {label: [run directories]}. With `out`, writes aggregate.json, report.md and
    report.html there (never into a run's own directory). Returns the aggregate."""
    if out is not None:
        check_output_dir(Path(out))
    return compare_runs(run_dirs, out, pairs=pairs)


@_own_progress_only
def report(run_dir: str | Path) -> list[Path]:
    """Rebuild what a finished run shows: RUN_DIR/report.html and a model card (README.md) in each
    saved model's directory; or, for a folder of `run_seeds` / `compare`, the comparison. Returns
    the files written."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").is_file() or not (run_dir / "aggregate.json").is_file():
        read_run(run_dir)  # a missing or broken run: one UserError, before a lock file is made there
        with locked_run_dir(run_dir):  # a run resumed there meanwhile would rewrite the same files
            cards = write_model_cards(run_dir)
            return [write_html_report(run_dir), *cards]
    rebuild_comparison(run_dir)
    return [run_dir / name for name in COMPARISON_FILES]
