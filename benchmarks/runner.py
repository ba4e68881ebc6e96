"""One runner for the benchmark grids: a benchmark is a list of `Job`s (a recipe each, plus what it
needs) and the tables it builds from their metrics.json files.

    jobs = [Job("panx/seed0/cascade", recipe, seed=0),
            Job("panx/seed0/direct-2L", recipe_2l, seed=0, depends_on=["panx/seed0/cascade"])]
    grid = run_grid(jobs, Path("runs/x"), parallel=1)

`run_grid` runs every job's recipe with the Python API (`cascade_kd.run`) into OUT/<job name>:
- jobs run after the jobs they depend on (a job whose dependency failed is not started, and says why),
  or, in parallel, as soon as the one model they read from it is finished (`Job.needs_model`);
- a job whose RUN_DIR holds a finished run of the very same recipe (metrics.json, and the manifest's
  fingerprint equal to the recipe's) is skipped; an interrupted one resumes from its checkpoints;
- before anything trains, every recipe is validated and every RUN_DIR checked: one that holds another
  recipe's run (or files that are no run) stops the grid with a UserError naming the changed keys;
- with `parallel` > 1, jobs whose dependencies are done train at once in spawned processes;
- `after` steps (bench, export, trim, eval on the finished run) run once the training is over, in
  this process, one at a time (so a latency figure does not share the CPU with the grid's own
  training), and again only when their job was retrained or the step changed;
- OUT/grid.json (written atomically after every job) keeps each job's status, fingerprint and wall
  time, and survives reruns, with the load average while the grid trained (the machine may be
  shared); OUT/grid.log has every line the runs said;
- with an `archive` (a JSON file kept apart from OUT, such as in the repository), every finished
  job's metrics.json and grid record are copied there, and a grid whose OUT was lost (another
  machine, a wiped disk) restores them instead of training again: a restored job has its scores
  but no model, so a job that must train retrains what it depends on first, or, where it reads
  one model of it only (`needs_model`: a shared teacher), just that model (a run of the
  dependency's recipe stopped after it, in OUT/.models/<name>, linked from RUN_DIR/<model>);
- `only` (job names) trains those jobs and what they need; the others are left as they are.

The rest are the small helpers the tables share: metrics.json read back, mean ± sample sd over seeds,
per-language tables and number formats.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import platform
import shutil
import statistics
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

from cascade_kd.errors import UserError
from cascade_kd.evaluation.run_files import MARKER, model_name
from cascade_kd.fileio import atomic_write

Say = Callable[[str], None]
POLL_S = 20.0  # how often a parallel grid looks whether a model that jobs wait on is finished


class GridBusy(UserError):
    """Another grid holds OUT's lock."""


@dataclass
class Job:
    """One run of a grid: `recipe` (a dict, paths relative to `base_dir`, or a Recipe) trained into
    OUT/`name`. `seed` (when given) replaces the recipe's seed; `config` names what the job measures
    whatever its seed (default: the name), so tables can average a config over seeds. `depends_on`:
    names of jobs whose output this one reads (a teacher, a stage's model); `needs_model` ({job:
    model directory}) says that one model of that job is all this one reads, so that it may start
    as soon as that model is finished (its stage.json written), before the rest of the job.
    `after(run_dir)`: a post
    step on the finished run (a dict it returns is kept in grid.json); `after_tag` names its settings
    (default: the callable and its arguments), so that a changed step runs again."""

    name: str
    recipe: dict | object
    base_dir: Path | str = "."
    seed: int | None = None
    depends_on: list[str] | tuple[str, ...] = ()
    needs_model: dict[str, str] = field(default_factory=dict)
    after: Callable[[Path], object] | None = None
    after_tag: str | None = None
    config: str | None = None
    what: str = ""
    validated: object = field(default=None, repr=False, compare=False)  # the Recipe, once checked

    def build(self):
        """The validated Recipe (the seed applied); raises RecipeError naming the key."""
        if self.validated is None:
            from cascade_kd.config import Recipe

            if isinstance(self.recipe, Recipe):
                recipe = self.recipe if self.seed is None else self.recipe.model_copy(update={"seed": self.seed})
            else:
                data = dict(self.recipe) if self.seed is None else {**self.recipe, "seed": self.seed}
                recipe = Recipe.from_dict(data, base_dir=self.base_dir, source=f"job {self.name}")
            self.validated = recipe
        return self.validated


# ---------------------------------------------------------------------------------------------
# JSON files


def read_json(path: Path):
    """A JSON file's content, or None when it is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data) -> None:
    """Write JSON atomically (a killed process never leaves a truncated file)."""
    atomic_write(Path(path), json.dumps(data, indent=2, ensure_ascii=False))


def drop_none(d):
    """A recipe dict without its None values (absent keys take the recipe's defaults)."""
    if isinstance(d, dict):
        return {k: drop_none(v) for k, v in d.items() if v is not None}
    if isinstance(d, list):
        return [drop_none(v) for v in d]
    return d


# LightMBERT's distillation losses: soft logits plus top-layer hidden states and attentions
LIGHTMBERT = {"kl": {"weight": 1.0, "temperature": 2.0},
              "hidden_mse": {"weight": 1.0, "layer_map": "top_only"},
              "attention_mse": {"weight": 1.0, "layer_map": "top_only"}}


# ---------------------------------------------------------------------------------------------
# Running a grid


def ordered(jobs: list[Job]) -> list[Job]:
    """The jobs with every one after those it depends on (otherwise in the order given)."""
    by_name = {}
    for job in jobs:
        if job.name in by_name:
            raise UserError(f"two jobs are named {job.name!r}", hint="job names are RUN_DIR paths: make them unique")
        by_name[job.name] = job
    for job in jobs:
        for dep in job.depends_on:
            if dep not in by_name:
                raise UserError(f"job {job.name!r} depends on {dep!r}, which is not in the grid")
    done, out, visiting = set(), [], []

    def visit(job: Job) -> None:
        if job.name in done:
            return
        if job.name in visiting:
            raise UserError("jobs depend on each other in a cycle: " + " -> ".join(visiting + [job.name]))
        visiting.append(job.name)
        for dep in job.depends_on:
            visit(by_name[dep])
        visiting.pop()
        done.add(job.name)
        out.append(job)

    for job in jobs:
        visit(job)
    return out


def finished(job: Job, run_dir: Path) -> bool:
    """RUN_DIR holds a finished run of this very recipe."""
    from cascade_kd.cascade.rundir import finished_run

    return finished_run(run_dir, job.build().fingerprint())


# ---------------------------------------------------------------------------------------------
# The archive: finished jobs' scores kept outside OUT


ARCHIVE_FORMAT = 1
RESTORED = "restored.json"  # in a restored RUN_DIR: where its files came from (its model is not there)


def read_archive(path: Path | None) -> dict:
    """{job name: {"fingerprint", "record", "metrics"}} of an archive file ({} when absent); a file
    that does not parse or is of another format is refused, never overwritten."""
    if path is None or not Path(path).is_file():
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as err:  # a merge conflict in a committed archive, most likely
        raise UserError(f"the grid archive does not parse as JSON: {err}", where=str(path),
                        hint="if git left conflict markers in it, keep both sides' entries under \"jobs\" "
                             "(or one side's file); moving it away loses every archived run") from None
    if not isinstance(data, dict) or data.get("format") != ARCHIVE_FORMAT or not isinstance(data.get("jobs"), dict):
        raise UserError("not a grid archive of this runner (an object with \"format\": 1 and \"jobs\")",
                        where=str(path), hint="give another --archive, or 'none' for no archive")
    return data["jobs"]


def archive_put(path: Path, name: str, entry: dict) -> None:
    """Add or replace one job's entry under a lock, re-reading the file first: grids in other
    folders (or a checkout of the file) may have written entries since this one read it."""
    from filelock import FileLock

    with FileLock(str(path) + ".lock"):
        jobs = read_archive(path)
        jobs[name] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"format": ARCHIVE_FORMAT, "jobs": jobs})


def restored(run_dir: Path) -> bool:
    """RUN_DIR holds a job's scores restored from an archive, not a model trained here."""
    return (run_dir / RESTORED).is_file()


def restore(job: Job, run_dir: Path, entry: dict, archive: Path) -> None:
    """Write an archived job's metrics.json into RUN_DIR, with a manifest of its recipe (so that
    `finished`, the tables and `ckd.compare` read it as the finished run it was). RESTORED is
    written first and metrics.json last: a restore cut short is known as one, and undone."""
    recipe = job.build()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / RESTORED, {"archive": str(archive), "finished": entry["record"].get("finished"),
                                    "restored": time.strftime("%Y-%m-%d %H:%M:%S")})
    write_json(run_dir / "manifest.json", {"recipe_fingerprint": recipe.fingerprint(), "seed": recipe.seed,
                                           "recipe": recipe.dump(), "restored_from": str(archive)})
    write_json(run_dir / "metrics.json", entry["metrics"])


def unrestore(run_dir: Path) -> None:
    """Remove what `restore` wrote (only that; RESTORED last), so that the job trains into RUN_DIR
    afresh, and the links to a model trained for other runs (`_train_model`): its partial run stays."""
    for name in ("metrics.json", "manifest.json", RESTORED):
        (run_dir / name).unlink(missing_ok=True)
    if not run_dir.is_dir():
        return
    for link in [p for p in run_dir.rglob("*") if p.is_symlink()]:
        link.unlink()
    for folder in sorted(run_dir.rglob("*"), reverse=True):  # deepest first
        if folder.is_dir() and not any(folder.iterdir()):  # stages/, left empty by a link to stages/NAME
            folder.rmdir()


def undo_stale_restores(jobs: list[Job], out_dir: Path) -> None:
    """Undo a restore cut short, or one of a recipe that has changed since: those files are copies
    (the archive keeps them), so the job is restored again or trains."""
    for job in jobs:
        run_dir = out_dir / job.name
        if restored(run_dir) and not finished(job, run_dir):
            unrestore(run_dir)


def check_run_dirs(jobs: list[Job], out_dir: Path) -> None:
    """Refuse, before anything trains, a RUN_DIR that holds another recipe's run or files that are
    no cascade-kd run: a grid never resumes or overwrites what it did not write with this recipe."""
    from cascade_kd.cascade.rundir import changed_keys

    problems = []
    for job in jobs:
        run_dir = out_dir / job.name
        if not run_dir.is_dir() or not any(run_dir.iterdir()):
            continue
        manifest = read_json(run_dir / "manifest.json")
        if manifest is None:
            problems.append(f"{run_dir}: holds files but no manifest.json (not a cascade-kd run)")
        elif manifest.get("recipe_fingerprint") != job.build().fingerprint():
            changed = changed_keys(manifest.get("recipe", {}), job.build().dump())
            problems.append(f"{run_dir}: holds a run of another recipe"
                            + (f" ({', '.join(changed[:6])}{' ...' if len(changed) > 6 else ''} differ)" if changed else ""))
    if problems:
        more = f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
        raise UserError(f"{len(problems)} job(s) would resume another recipe's run: " + "; ".join(problems[:4]) + more,
                        hint="give another --out, or move those directories away to rerun them with the new recipe")


def _say_to(log_path: Path, name: str, say: Say | None) -> Say:
    """A `say` that prefixes the job's name and appends every line to OUT/grid.log too."""
    def line(message: str) -> None:
        text = f"{time.strftime('%H:%M:%S')} [{name}] {message}"
        (say or functools.partial(print, flush=True))(text)
        with open(log_path, "a", encoding="utf-8") as handle:  # O_APPEND: lines of parallel jobs do not mix
            handle.write(text + "\n")
    return line


def _train(job: Job, run_dir: Path, log_path: Path, threads: int | None, say: Say | None = None) -> dict:
    """Run one job's recipe (resuming whatever it finished before); the job's record, never an exception."""
    from transformers.utils import logging as hf_logging

    import cascade_kd as ckd

    hf_logging.disable_progress_bar()  # in a worker process too
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    log = _say_to(log_path, job.name, say)
    started = time.perf_counter()
    try:
        metrics = ckd.run(job.build(), run_dir, resume=True, say=log)
    except UserError as err:
        log(f"FAILED: {err}")
        return {"status": "failed", "error": str(err), "wall_s": time.perf_counter() - started}
    except Exception as exc:  # noqa: BLE001 - one job's crash is reported; the others go on
        log(f"FAILED:\n{traceback.format_exc()}")
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "wall_s": time.perf_counter() - started}
    wall = time.perf_counter() - started
    log(f"finished in {wall:.0f} s")
    return {"status": "done", "wall_s": wall, "run_wall_s": metrics.get("wall_time_s"),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_name()}


def partial_dir(out_dir: Path, name: str) -> Path:
    """Where a restored job's one model is trained (a run of its recipe stopped after that model)."""
    return out_dir / ".models" / name


def _train_model(job: Job, run_dir: Path, partial: Path, model: str, log_path: Path, threads: int | None,
                 say: Say | None = None) -> dict:
    """Train `model` of a restored job (its scores archived, its models not here) as a run of its
    recipe into `partial`, stopped once that model is saved, and link RUN_DIR/`model` to it; a
    record ({"status", "wall_s", ...}), never an exception."""
    from cascade_kd.cascade import run_recipe
    from cascade_kd.cascade.rundir import read_manifest

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    log = _say_to(log_path, job.name, say)
    started = time.perf_counter()
    link = run_dir / model  # `model` is a folder of a run: teacher, stages/NAME
    recipe = job.build()
    try:
        manifest, _ = read_manifest(partial)
        if manifest is not None and manifest["recipe_fingerprint"] != recipe.fingerprint():
            shutil.rmtree(partial)  # a partial run of the job's recipe before it changed
        run_recipe(recipe, partial, resume=True, say=log, until=model_name(model))
        if link.is_symlink() or link.is_file():  # a link of an earlier call
            link.unlink()
        elif link.exists():  # a half-made copy: not a finished model
            shutil.rmtree(link)
        link.parent.mkdir(parents=True, exist_ok=True)
        # relative (OUT may move), from where the link really lies (a folder of OUT may be a link itself)
        link.symlink_to(os.path.relpath((partial / model).resolve(), link.parent.resolve()))
    except Exception as exc:  # noqa: BLE001 - reported; the jobs that read the model are not started
        log(f"FAILED training its {model}: {type(exc).__name__}: {exc}")
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "wall_s": time.perf_counter() - started}
    wall = time.perf_counter() - started
    log(f"{model} finished in {wall:.0f} s (in {partial}, linked from {link})")
    return {"status": "done", "wall_s": wall, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_name()}


def reclaim_partial(run_dir: Path, partial: Path) -> None:
    """A job that was restored, one of its models trained for others in `partial`, now trains in
    full (its links went with `unrestore`): the partial run takes RUN_DIR's place, so that it
    resumes from there."""
    if partial.is_dir() and run_dir.is_dir() and not any(run_dir.iterdir()):
        if run_dir.is_symlink():  # RUN_DIR links elsewhere (a bigger disk): the partial run goes where it points
            for entry in partial.iterdir():
                shutil.move(str(entry), str(run_dir / entry.name))
            partial.rmdir()
        else:
            run_dir.rmdir()
            os.replace(partial, run_dir)


def cpu_name() -> str:
    """This machine's CPU model (it changes between sittings: timings say where they were taken)."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def _sample_load(every_s: float = 60.0):
    """Sample the 1-minute load average now and every minute until stopped: on a shared machine it
    says how contended the grid's timings are. Returns (samples, stop)."""
    samples, done = [os.getloadavg()[0]], threading.Event()

    def sample():
        while not done.wait(every_s):
            samples.append(os.getloadavg()[0])

    threading.Thread(target=sample, daemon=True).start()
    return samples, done.set


def describe(step: Callable) -> str:
    """A stable name for a post step and its arguments (functools.partial shows them)."""
    if isinstance(step, functools.partial):
        args = [repr(a) for a in step.args] + [f"{k}={v!r}" for k, v in sorted(step.keywords.items())]
        return f"{describe(step.func)}({', '.join(args)})"
    return getattr(step, "__qualname__", repr(step))  # not the module: a script may run as __main__ or be imported


def run_grid(jobs: list[Job], out_dir: Path, *, parallel: int = 1, quick: bool = False, threads: int | None = None,
             rerun_after: bool = False, train: bool = True, post_steps: bool = True, archive: Path | None = None,
             only: list[str] | None = None, restore_only: bool = False, say: Say | None = None) -> dict:
    """Run the grid's jobs into OUT/<name> (see the module's docstring); returns OUT/grid.json's content:
    {"jobs": {name: {"status": done | failed | blocked, "wall_s", "fingerprint", "seed", "config", ...}}}
    (while it runs, grid.json also shows jobs `pending` and `running`).
    `threads`: torch threads per training process (default: torch's); `rerun_after`: run every post
    step again, done before or not; `train=False`: train nothing, run the post steps of the jobs that
    are done (a long grid's latency and deploy figures before its last jobs); `quick` is recorded in
    grid.json; `post_steps=False` runs none; `archive`, `only`: see the module's docstring."""
    from filelock import FileLock, Timeout
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the grid's output is a log: no live bars from saving models
    out_dir = Path(out_dir).resolve()
    jobs = ordered(list(jobs))
    for job in jobs:  # every recipe checked before anything trains
        job.build()
    unknown = sorted(set(only or ()) - {j.name for j in jobs})
    if unknown:
        raise UserError(f"no job named {', '.join(map(repr, unknown))} in the grid",
                        hint="the names are RUN_DIR paths, such as " + ", ".join(repr(j.name) for j in jobs[:2]))
    archived = read_archive(archive)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out_dir / ".grid.lock"))
    try:  # first: another grid's RUN_DIRs may be half made
        lock.acquire(timeout=0)
    except Timeout:
        raise GridBusy("another grid is running in this folder", where=str(out_dir),
                       hint="wait for it, or give another --out") from None
    try:
        undo_stale_restores(jobs, out_dir)
        check_run_dirs(jobs, out_dir)
        return _run_locked(jobs, out_dir, parallel=parallel, quick=quick, threads=threads, rerun_after=rerun_after,
                           train=train, post_steps=post_steps, archive=archive, archived=archived, only=only,
                           restore_only=restore_only, say=say)
    finally:
        lock.release()


def restore_archived(jobs: list[Job], out_dir: Path, archive: Path, *, quick: bool = False) -> dict:
    """Train nothing and run no post step: restore the archived jobs whose RUN_DIR is absent or
    empty (for tables: `--collect-only`), leaving every other job and its record as it is; returns
    grid.json's content. GridBusy while another grid runs in OUT (it restored them itself)."""
    return run_grid(jobs, out_dir, quick=quick, train=False, post_steps=False, archive=archive, restore_only=True)


def _run_locked(jobs, out_dir: Path, *, parallel, quick, threads, rerun_after, train, post_steps, archive, archived,
                only, restore_only, say) -> dict:
    grid_path, log_path = out_dir / "grid.json", out_dir / "grid.log"
    grid = read_json(grid_path) or {}
    grid["mode"] = "quick" if quick else "full"
    records = grid.setdefault("jobs", {})
    # a job an earlier call queued but never ran, and which this grid no longer has (a renamed or
    # dropped job), says nothing: forgotten. Jobs of other calls (other --settings) are kept.
    names = {j.name for j in jobs}
    for name in [n for n, r in records.items() if n not in names and r.get("status") == "pending"]:
        del records[name]
    log = _say_to(log_path, "grid", say)

    def save():
        grid["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json(grid_path, grid)

    def record(job: Job, **values) -> None:
        entry = records.get(job.name) or {}
        if entry.get("fingerprint") != job.build().fingerprint():
            entry = {}  # a record of another recipe's run says nothing about this one
        if "status" in values and "error" not in values:
            entry.pop("error", None)  # an earlier failure, now done
        entry.update(fingerprint=job.build().fingerprint(), seed=job.build().seed, config=job.config or job.name,
                     what=job.what, **values)
        records[job.name] = entry
        save()

    def keep(job: Job) -> None:  # the finished job's scores and record into the archive
        if archive is None or restored(out_dir / job.name):
            return
        fingerprint, prior = job.build().fingerprint(), archived.get(job.name) or {}
        if (job.after is not None and (records[job.name].get("after") or {}).get("status") != "done"
                and prior.get("fingerprint") == fingerprint
                and (prior["record"].get("after") or {}).get("status") == "done"):
            return  # until this run's post step is done, the archive keeps the earlier run whole: its
            # scores and its post step's figures (trimmed, exported, timed) come from one training
        entry = {"fingerprint": fingerprint, "record": copy.deepcopy(records[job.name]),
                 "metrics": read_json(out_dir / job.name / "metrics.json")}
        if archived.get(job.name) != entry:
            archived[job.name] = entry
            archive_put(archive, job.name, entry)

    by_name = {j.name: j for j in jobs}
    trained_now: set[str] = set()
    def empty(run_dir: Path) -> bool:  # a RUN_DIR with files (an interrupted run) resumes, never restored over
        return not run_dir.is_dir() or not any(run_dir.iterdir())

    # what must train: the jobs not finished here nor archived (those of `only`), and, since a
    # restored job has no model, whatever they depend on that has none here
    done_here = {j.name for j in jobs if finished(j, out_dir / j.name)}  # read once: manifests and fingerprints
    in_archive = [j for j in jobs if j.name in archived and empty(out_dir / j.name)]
    restorable = {j.name for j in in_archive if archived[j.name].get("fingerprint") == j.build().fingerprint()}
    wanted = [j for j in jobs if train and j.name not in done_here and j.name not in restorable
              and (only is None or j.name in only)]
    # a dependency whose scores are archived, and of which the jobs that must train read one model
    # only (a shared teacher): that model trains here, the rest of it is restored, not retrained
    need: set[str] = set()
    model_of: dict[str, set[str]] = {}

    def require(job: Job) -> None:  # the job trains, and what it reads that has no model here
        need.add(job.name)
        for dep in job.depends_on:
            if dep in need:
                continue
            if (job.needs_model.get(dep) and not by_name[dep].depends_on
                    and (dep in restorable or (dep in done_here and restored(out_dir / dep)))):
                model_of.setdefault(dep, set()).add(job.needs_model[dep])  # (one that reads others trains whole)
            elif dep not in done_here or restored(out_dir / dep):
                require(by_name[dep])

    for job in wanted:
        require(job)
    for dep in [d for d, models in model_of.items() if len(models) > 1 and d not in need]:
        require(by_name[dep])  # more than one of its models is read: it trains whole
    models_only = {dep: next(iter(models)) for dep, models in model_of.items() if dep not in need}
    mismatched = [j.name for j in in_archive if j.name not in restorable]
    if mismatched:  # the fingerprint holds absolute paths: --out, --teacher and the checkout must be the same
        log(f"{len(mismatched)} archived run(s) not restored, their recipe differs from this grid's (first: "
            f"{mismatched[0]}): same --out, --teacher and checkout folder as when they ran?")
    pending = []
    for job in jobs:
        run_dir = out_dir / job.name
        if job.name in need:
            if restored(run_dir):
                unrestore(run_dir)
                reclaim_partial(run_dir, partial_dir(out_dir, job.name))
                log(f"{job.name}: restored before, trains again (a job that must train needs its model)")
            if (records.get(job.name) or {}).get("restored"):  # the archived record is not this run's
                records[job.name] = {}
            pending.append(job)
            record(job, status="pending")
        elif job.name in restorable:
            restore(job, run_dir, archived[job.name], archive)
            records[job.name] = {**copy.deepcopy(archived[job.name]["record"]), "restored": True}
            save()
            log(f"{job.name}: restored from {archive} (its scores; no model)")
        elif job.name in done_here:
            previous = records.get(job.name) or {}
            if previous.get("fingerprint") == job.build().fingerprint() and previous.get("wall_s") is not None:
                record(job, status="done")
            else:  # finished by an earlier tool: its own training time is what is known
                record(job, status="done", wall_s=(read_json(run_dir / "metrics.json") or {}).get("wall_time_s"),
                       wall_s_from="metrics.json")
            keep(job)
            log(f"{job.name}: done before, " + ("restored from an archive" if restored(run_dir) else "skipped"))
        elif not restore_only:  # what an earlier call recorded (failed, blocked) is no longer this job's state
            record(job, status="pending")
    if restore_only:
        return grid
    left = sum(1 for j in jobs if records[j.name]["status"] == "pending" and j.name not in need)
    if left:
        log(f"{left} job(s) left as they are (" + ("post steps only)" if not train else "not among the jobs asked for)"))
    started = time.perf_counter()
    loads, stop = _sample_load()

    def has_model(dep: str, model: str) -> bool:
        return (out_dir / dep / model / MARKER).is_file()

    def model_ready(job: Job, dep: str) -> bool:  # the one model of `dep` this job reads is finished
        model = job.needs_model.get(dep)
        return model is not None and has_model(dep, model) and (not restored(out_dir / dep) or dep in models_only)

    def blocked(job: Job) -> str | None:
        bad = [d for d in job.depends_on if (records.get(d, {}).get("status") in ("failed", "blocked")
               or (records.get(d) or {}).get("model_status") == "failed") and not model_ready(job, d)]
        if not bad:
            return None
        why = f" (its {job.needs_model[bad[0]]}, trained for the runs that read it)" if bad[0] in models_only else ""
        return f"not started: {', '.join(bad)} did not finish{why}"

    def ready(job: Job) -> bool:
        return all((records.get(d, {}).get("status") == "done" and d not in models_only) or model_ready(job, d)
                   for d in job.depends_on)

    # the models restored jobs lack and others read: trained first, one at a time, on every thread
    for dep, model in sorted(models_only.items()):
        if has_model(dep, model):
            continue
        log(f"{dep}: restored from the archive; training its {model} only (the runs to train read it)")
        result = _train_model(by_name[dep], out_dir / dep, partial_dir(out_dir, dep), model, log_path,
                              None if threads is None else threads * max(parallel, 1), say)
        records[dep]["model_status"] = result.pop("status")
        records[dep].setdefault("models_trained_here", {})[model] = result
        save()

    def settle(job: Job, result: dict) -> None:
        record(job, **result)
        if result["status"] == "done":
            trained_now.add(job.name)
            if records[job.name].pop("after", None) is not None:  # the post step of the model it replaced
                save()
            keep(job)
        else:
            log(f"{job.name}: {result['status'].upper()}: {result['error']}")

    if parallel <= 1:
        for job in pending:  # ordered: dependencies first
            reason = blocked(job)
            if reason:
                settle(job, {"status": "blocked", "error": reason})
                continue
            log(f"{job.name}: starting" + (f" ({job.what})" if job.what else ""))
            record(job, status="running")
            settle(job, _train(job, out_dir / job.name, log_path, threads, say))
    else:
        with ProcessPoolExecutor(max_workers=parallel, mp_context=get_context("spawn")) as pool:
            running = {}
            while pending or running:
                for job in list(pending):
                    if len(running) >= parallel:
                        break
                    reason = blocked(job)
                    if reason:
                        pending.remove(job)
                        settle(job, {"status": "blocked", "error": reason})
                    elif ready(job):
                        pending.remove(job)
                        log(f"{job.name}: starting in a worker process" + (f" ({job.what})" if job.what else ""))
                        record(job, status="running")
                        # the post step stays here (it runs in this process, and need not pickle)
                        task = replace(job, after=None)
                        running[pool.submit(_train, task, out_dir / job.name, log_path, threads)] = job
                if not running:
                    if pending:  # cannot happen for an ordered grid; never wait forever
                        raise RuntimeError(f"no job can start: {[j.name for j in pending]}")
                    break
                # a job waiting on one model of a running job is looked at again every POLL_S
                early = any(j.needs_model for j in pending)
                done, _ = wait(running, timeout=POLL_S if early else None, return_when=FIRST_COMPLETED)
                for future in done:
                    settle(running.pop(future), future.result())
    stop()
    if train:  # this call's training: its wall time and the load while it ran
        grid["wall_time_s"] = time.perf_counter() - started
        grid["load_average"] = {"mean": statistics.fmean(loads), "max": max(loads), "samples": len(loads)}
    save()
    for job in jobs:  # post steps: once training is over, one at a time
        if not post_steps or job.after is None or records[job.name]["status"] != "done":
            continue
        if restored(out_dir / job.name):  # its model is not here: its archived step's figures stand
            if (records[job.name].get("after") or {}).get("status") != "done":
                log(f"{job.name}: post step not run: the run was restored from the archive, without its model")
            continue
        tag = job.after_tag or describe(job.after)
        previous = records[job.name].get("after") or {}
        if not rerun_after and job.name not in trained_now and previous == {**previous, "tag": tag, "status": "done"}:
            continue
        t0 = time.perf_counter()
        try:
            result = job.after(out_dir / job.name)
            step = {"tag": tag, "status": "done", "wall_s": time.perf_counter() - t0,
                    **({"result": result} if isinstance(result, dict) else {})}
        except Exception as exc:  # noqa: BLE001 - the run is kept; the step is reported as failed
            log(f"{job.name}: post step FAILED:\n{traceback.format_exc()}")
            step = {"tag": tag, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        record(job, after=step)
        keep(job)
    return grid


def failures(grid: dict) -> dict[str, str]:
    """{job name: why} for every job (or post step) that did not finish."""
    out = {name: r.get("error", r["status"]) for name, r in grid.get("jobs", {}).items()
           if r.get("status") in ("failed", "blocked")}
    out.update({f"{name} (post step)": r["after"].get("error") for name, r in grid.get("jobs", {}).items()
                if (r.get("after") or {}).get("status") == "failed"})
    out.update({f"{name} ({model}, for the runs that read it)": m.get("error")
                for name, r in grid.get("jobs", {}).items() if r.get("model_status") == "failed"
                for model, m in (r.get("models_trained_here") or {}).items() if "error" in m})
    return out


# ---------------------------------------------------------------------------------------------
# Tables: metrics.json read back, means over seeds, formats


def model_row(metrics: dict | None, model: str) -> dict | None:
    """The row of `model` (a stage name, `teacher` or `direct`) in a run's metrics.json."""
    return next((r for r in (metrics or {}).get("models", []) if r["name"] == model), None)


def mean_sd(values) -> dict:
    """Mean and sample standard deviation (n - 1; None with fewer than 2 values) of the values
    given, None and NaN left out: {"mean", "sd", "n"}."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return {"mean": statistics.fmean(values) if values else None,
            "sd": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def over_seeds(rows: dict) -> dict:
    """One model over seeds: {seed: its metrics.json row} -> mean ± sd of the average, the worst
    language and each language's score ({"average": {...}, "worst": {...}, "per_language": {lang: {...}}})."""
    rows = [r for r in rows.values() if r]
    languages = list(rows[0]["per_language"]) if rows else []
    return {"average": mean_sd(r["average"] for r in rows), "worst": mean_sd(r["worst"] for r in rows),
            "per_language": {lang: mean_sd(r["per_language"].get(lang) for r in rows) for lang in languages}}


def pct(x, digits: int = 1) -> str:
    """A fraction in percent, or — for none."""
    return "—" if x is None else f"{100 * x:.{digits}f}"


def pm(summary: dict | None, scale: float = 100.0, digits: int = 1) -> str:
    """`mean ± sd` of a mean_sd summary (the sd only with 2+ values)."""
    if not summary or summary.get("mean") is None:
        return "—"
    text = f"{scale * summary['mean']:.{digits}f}"
    return text + (f" ± {scale * summary['sd']:.{digits}f}" if summary.get("sd") is not None else "")


def count(n, millions_from: float = 1e5) -> str:
    """A parameter count: 15.63M, 120.4k (in millions from `millions_from` on)."""
    return "—" if n is None else f"{n / 1e6:.2f}M" if n >= millions_from else f"{n / 1e3:.1f}k"


def md_table(head: list[str], rows: list[list[str]], left: int = 2) -> list[str]:
    """Markdown table lines; the first `left` columns left-aligned, the others right-aligned."""
    return (["| " + " | ".join(head) + " |", "|" + "---|" * left + "---:|" * (len(head) - left)]
            + ["| " + " | ".join(cells) + " |" for cells in rows])


def language_table(columns: dict[str, dict], languages: list[str], digits: int = 1) -> list[str]:
    """Languages as rows, one column per model: {label: over_seeds(...)["per_language"]} -> Markdown
    (score in percent, mean ± sd over seeds)."""
    return md_table(["language", *columns],
                    [[lang, *(pm(col.get(lang), digits=digits) for col in columns.values())] for lang in languages],
                    left=1)
