"""One recipe, several seeds: `cascade-kd run RECIPE --seeds 0 1 2 --out OUT`.

Each seed runs the whole recipe (teacher, stages, direct baseline) with `seed` set, in OUT/seed<S>/,
a RUN_DIR like any other (resumable, with its own report). A seed whose run finished with this
recipe is not run again; an interrupted one is resumed with --resume. OUT/seeds.json says what the
directory is; the aggregate (evaluation/compare.py) is written to OUT: aggregate.json, report.md and
report.html, with mean ± sd per model and language, and the cascade against the direct baseline seed
by seed. --overwrite replaces those four files and, through each seed's own run (`run --overwrite`),
the files that run wrote in OUT/seed<S>; anything else in OUT (a user's file, the folder of a seed
not listed now) is kept, as for a single run.
"""

from __future__ import annotations

import json
from pathlib import Path

from cascade_kd.cascade.run import run_recipe
from cascade_kd.cascade.rundir import check_resume_or_overwrite, check_run_dir, finished_run
from cascade_kd.config.schema import Recipe
from cascade_kd.errors import UserError
from cascade_kd.evaluation.compare import COMPARISON_FILES, compare_runs
from cascade_kd.evaluation.run_files import SEEDS_FILE
from cascade_kd.fileio import atomic_write
from cascade_kd.outdir import info_file_with, inspect, output_path, write_marker
from cascade_kd.training.progress import RunSet
from cascade_kd.training.distributed import barrier, is_main


# what a multi-seed run writes at the top of OUT (and lists in OUT/.cascade-kd.json, with the seed
# folders); each OUT/seed<S> is a RUN_DIR with its run's own rules
COMMAND = "run --seeds"
TOP_FILES = (SEEDS_FILE, *COMPARISON_FILES)


def seed_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"seed{seed}"


def recipe_with_seed(recipe: Recipe, seed: int) -> Recipe:
    """A copy of `recipe` with `seed` (validated as the recipe key is); file and line info kept."""
    copy = recipe.model_copy(deep=True)
    try:
        copy.seed = seed
    except ValueError as exc:
        raise UserError(f"--seeds {seed}: not a valid seed ({str(exc).splitlines()[-1].strip()})",
                        hint="seeds are whole numbers from 0 to 2**32 - 1") from None
    return copy


def _started(directory: Path) -> bool:
    return directory.is_dir() and any(directory.iterdir())


def _legacy(out: Path) -> bool:
    """A multi-seed OUT written before markers: its seeds.json names its runs."""
    return info_file_with(out / SEEDS_FILE, "runs")


def _check_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError("the --out path exists and is not a directory", where=str(out))
    found = inspect(output_path(out), COMMAND, legacy=_legacy)
    if found.state in ("new", "empty"):
        return
    if not found.ours:  # a file merely named seeds.json proves nothing: the marker (or a seeds.json naming runs) does
        raise UserError("--out is not empty and is not a multi-seed run (no cascade-kd marker of one, no seeds.json "
                        "naming its runs): nothing there is replaced",
                        where=str(out), hint="choose an empty or new --out")
    if not (resume or overwrite):
        raise UserError("--out holds a multi-seed run", where=str(out),
                        hint="pass --resume to continue it, --overwrite to replace it, or choose another --out "
                        "(in Python: resume=True, overwrite=True, or another out)")


def _prepare(out: Path, recipe: Recipe, seeds: list[int], *, overwrite: bool) -> None:
    if overwrite:  # the seed folders are replaced by their runs (run_recipe's --overwrite), not here
        for name in TOP_FILES:
            if (out / name).is_file() or (out / name).is_symlink():
                (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / SEEDS_FILE, json.dumps({"recipe": recipe.name, "seeds": seeds,
                                               "runs": {str(s): seed_dir(out, s).name for s in seeds}}, indent=2))
    write_marker(out, COMMAND, [*TOP_FILES, *(seed_dir(out, s).name for s in seeds)])


def run_seeds(recipe: Recipe, out: str | Path, seeds: list[int], *, resume: bool = False, overwrite: bool = False,
              say=print) -> dict:
    """Run `recipe` once per seed, each in OUT/seed<S>, then compare them (OUT/aggregate.json,
    report.md, report.html); returns the aggregate."""
    out = Path(out)
    check_resume_or_overwrite(out, resume=resume, overwrite=overwrite)
    if not seeds:
        raise UserError("--seeds needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds lists a seed twice: {' '.join(map(str, seeds))}")
    recipes = [recipe_with_seed(recipe, seed) for seed in seeds]  # every seed checked before anything runs
    _check_out(out, resume=resume, overwrite=overwrite)
    done = [not overwrite and finished_run(seed_dir(out, seed), seeded.fingerprint()) for seed, seeded in zip(seeds, recipes)]
    for seed, seeded, finished in zip(seeds, recipes, done):  # every seed folder checked before anything changes
        output_path(seed_dir(out, seed))  # a file, a dangling link, a name too long: one line, nothing changed
        if not finished and _started(seed_dir(out, seed)):
            check_run_dir(seeded, seed_dir(out, seed), resume=not overwrite, overwrite=overwrite)
    if is_main():
        _prepare(out, recipe, list(seeds), overwrite=overwrite)
    barrier()
    run_set = RunSet()  # the time left covers the seeds still to run, at the speed measured over the set
    for k, (seed, seeded) in enumerate(zip(seeds, recipes), 1):
        directory = seed_dir(out, seed)
        if done[k - 1]:
            say(f"seed {seed} ({k} of {len(seeds)}): already finished in {directory}")
            continue
        run_set.later_runs = done[k:].count(False)
        say(f"seed {seed} ({k} of {len(seeds)}): {directory}")
        started = _started(directory)  # with --overwrite, the run replaces only the files it wrote there
        run_recipe(seeded, directory, resume=started and not overwrite, overwrite=started and overwrite, say=say,
                   run_set=run_set)
    aggregate = compare_runs([seed_dir(out, s) for s in seeds], out if is_main() else None)
    barrier()
    return aggregate
