"""RUN_DIR: what a run writes (marker, manifest, recipe as run, a stage.json per finished model),
and the rules for starting, resuming and replacing a run there (the output rule of
cascade_kd/outdir.py, applied to runs).

- A run starts in a new or empty directory; `--resume` continues, and `--overwrite` replaces, a
  directory that holds a cascade-kd run: one with the run's `.cascade-kd.json` marker, or, for runs
  written before markers, a `manifest.json` that parses as a run's manifest (or, when that file is
  damaged, a finished model whose stage.json names this very recipe).
- `--overwrite` deletes only what the run wrote: the entries its marker lists, and inside a model
  directory only the files its stage.json lists. What else is there (a user's file, an export or an
  eval output with its own marker) is kept and named. An old run without a marker is replaced only
  when it holds nothing but what runs write.
- While a run works in RUN_DIR it holds an advisory lock on RUN_DIR/.cascade-kd.lock: a second
  `run` (or `--resume`) on the same directory is refused at once.
- On `--resume`, a damaged manifest.json is written again; a finished model whose stage.json or
  weights are damaged is named and made again, the others are kept.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cascade_kd import __version__, plugins
from cascade_kd.cascade.plan import model_keys
from cascade_kd.config.schema import Recipe, where
from cascade_kd.errors import DataError, OutputError, UserError
from cascade_kd.evaluation.run_files import CARD_COPY, MARKER, MODEL_CARD, card_edited, model_dir
from cascade_kd.fileio import atomic_write, files_digest, read_json_record, recover_directory, weight_files
from cascade_kd.outdir import (
    LOCK,
    Found,
    inspect,
    make_directory,
    output_path,
    remove_written,
    write_marker,
)
from cascade_kd.outdir import (
    MARKER as DIR_MARKER,
)
from cascade_kd.students.hub import CHECKPOINT_FILE, SHARD_INDEX, checkpoint_problem
from cascade_kd.training.distributed import barrier, on_main

if TYPE_CHECKING:  # a type only: job.py imports this module's neighbours, not the reverse
    from cascade_kd.cascade.job import Job


COMMAND = "run"  # the marker's command for `run` and `pretrain` (the same RUN_DIR layout)
RUN_ENTRIES = ("manifest.json", "recipe.yaml", "teacher", "stages", "state", "cache", "metrics.json", "report.md",
               "report.html", "logs", LOCK, DIR_MARKER)
# what an interrupted atomic write of a run leaves next to its target (fileio.py)
_RUN_LEFTOVER = re.compile(r"^\.(manifest\.json|recipe\.yaml|metrics\.json|report\.md|report\.html|teacher|stages|state)\..+$")


# ---------------------------------------------------------------------------------------------
# Finished models


def read_stage_info(directory: Path) -> tuple[dict | None, str | None]:
    """(stage.json's content, None); (None, None) when there is none; (None, why) when damaged."""
    path = Path(directory) / MARKER
    if not path.is_file():
        return None, None
    info, why = read_json_record(path, limit=64 << 20, what="stage.json")
    if why:
        return None, why
    return (info, None) if isinstance(info, dict) else (None, "not a JSON object")


def finished_model(directory: Path, fingerprint: str, say=None, key: str | None = None) -> dict | None:
    """stage.json of a model this recipe finished (or, with `key`, a recipe whose part this model
    reads is the same: plan.model_keys), when the model can be loaded as saved; None when it must
    be made (again). A damaged stage.json or weights file is named (`say`)."""
    recover_directory(Path(directory))  # a finished model a killed re-save left aside is the model
    info, damaged = read_stage_info(directory)
    name = Path(directory).name
    if damaged:
        if say:
            say(f"WARNING: {Path(directory) / MARKER} is damaged ({damaged}): {name} is made again")
        return None
    if info is None or (info.get("recipe") != fingerprint and (key is None or info.get("model_key") != key)):
        return None
    problem = checkpoint_problem(directory)
    if problem is not None:
        path, what = problem
        if say:
            say(f"WARNING: {path} of the finished model {name} is damaged ({what}): {name} is made again")
        return None
    return info


def model_files(directory: Path):
    """Which names in a model directory the run wrote: those its stage.json lists; for a model saved
    before stage.json listed them, the names save_pretrained gives a model and its tokenizer."""
    info, _ = read_stage_info(directory)
    files = info.get("files") if info else None
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        # the model card is written after the marker, from metrics.json; one edited by hand is the user's
        listed = set(files) | ({CARD_COPY} | (set() if card_edited(directory / MODEL_CARD) else {MODEL_CARD}))
        return lambda name: name in listed
    return lambda name: bool(CHECKPOINT_FILE.match(name))


def foreign_in_model_dir(directory: Path) -> list[str]:
    """Entries of an existing model directory that are not the model's: kept when it is saved again."""
    directory = Path(directory)
    recover_directory(directory)  # a model folder a killed save left aside holds the user's entries too
    if not directory.is_dir():
        return []
    ours = model_files(directory)
    return [p.name for p in directory.iterdir() if not ours(p.name)]


def _owner(run_dir: Path):
    """For remove_written: which names inside a RUN_DIR entry the run wrote. Read before anything
    is deleted: the run's models are the folders its recipe names (manifest.json) or that hold a
    model's marker; another folder in stages/ (a user's own model, say) is not the run's."""
    run_dir = Path(run_dir)
    manifest, _ = read_manifest(run_dir)
    cascade = ((manifest or {}).get("recipe") or {}).get("cascade") or {}
    named = {s.get("name") for s in cascade.get("stages") or [] if isinstance(s, dict)} | {"direct"}

    def owns(directory: Path):
        if directory == model_dir(run_dir, "teacher") or directory.parent == run_dir / "stages":
            return model_files(directory)
        if directory == run_dir / "stages":  # the run's model folders, and leftovers of interrupted saves
            return lambda name: name.startswith(".") or (directory / name).is_dir() and (
                name in named or (directory / name / MARKER).is_file())
        return None  # state/ and cache/: the run's working files, written and replaced whole

    return owns


# ---------------------------------------------------------------------------------------------
# Is it a run, and this recipe's?


def read_manifest(out: Path) -> tuple[dict | None, str | None]:
    """(manifest, None) when RUN_DIR/manifest.json is a run's manifest; (None, None) when absent;
    (None, why) when it is there but is not one (damaged, or some other file of that name)."""
    path = Path(out) / "manifest.json"
    if not path.exists():
        return None, None
    data, why = read_json_record(path, limit=64 << 20, what="manifest.json")
    if why:
        return None, why
    if not isinstance(data, dict) or not isinstance(data.get("recipe_fingerprint"), str):
        return None, "not a cascade-kd manifest (no recipe_fingerprint)"
    return data, None


def eval_dir(run_dir: Path, split: str, out: Path | None = None) -> Path:
    """`out`, or where `cascade-kd eval` writes a run's scores by default: RUN_DIR/eval-SPLIT."""
    return Path(out) if out is not None else Path(run_dir) / f"eval-{split}"


def finished_run(out: Path, fingerprint: str) -> bool:
    """RUN_DIR holds a finished run (metrics.json) of the recipe with this fingerprint (the one its
    metrics.json names, where it names one: a run resumed with an edited recipe keeps the earlier
    recipe's metrics.json until it finishes)."""
    manifest, _ = read_manifest(out)
    if manifest is None or manifest["recipe_fingerprint"] != fingerprint or not (Path(out) / "metrics.json").is_file():
        return False
    metrics, _ = read_json_record(Path(out) / "metrics.json", limit=256 << 20, what="metrics.json")
    return isinstance(metrics, dict) and metrics.get("recipe_fingerprint", fingerprint) == fingerprint


def model_dirs(out: Path) -> list[Path]:
    """RUN_DIR's model directories that exist: the teacher's and each stage's (not a temporary one)."""
    stages = out / "stages"
    dirs = [model_dir(out, "teacher")] + (sorted(p for p in stages.iterdir() if not p.name.startswith(".")) if stages.is_dir() else [])
    return [d for d in dirs if d.is_dir()]


def _models_of(out: Path, fingerprint: str) -> bool:
    """Whether a finished model in RUN_DIR names this recipe (proof of a run whose manifest is damaged)."""
    return any((read_stage_info(d)[0] or {}).get("recipe") == fingerprint for d in model_dirs(out))


def changed_keys(old, new, prefix: str = "") -> list[str]:
    """Dotted key paths whose values differ between two recipe dumps."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + [k for k in new if k not in old]
        return [c for k in keys for c in changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in changed_keys(a, b, f"{prefix}{i}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _recipe_changed(out: Path, recipe: Recipe, manifest: dict | None, change: RecipeChange | None = None) -> UserError:
    changed = changed_keys(manifest.get("recipe", {}), recipe.dump()) if manifest else []
    hint = f"resume with the recipe the run last ran with ({out / 'recipe.yaml'}), or start a new --out"
    if change is not None and "teacher" in change.kept:  # the expensive part can still be had
        hint += (f"; a new run whose teacher section is {{model: {model_dir(out, 'teacher')}}} (in place of its "
                 "config or model) starts from this run's teacher")
    problems = []
    if change is not None and change.affected:
        problems.append(f"that changes the finished model{'s' if len(change.affected) > 1 else ''} "
                        f"{', '.join(change.affected)}, which a resume would replace")
    if change is not None and change.dropped:
        problems.append(f"the finished model{'s' if len(change.dropped) > 1 else ''} {', '.join(change.dropped)} "
                        "would be left beside a run that no longer has them: move "
                        + ", ".join(str(model_dir(out, n)) for n in change.dropped) + " away first, or keep them in the recipe")
    return UserError(
        "the recipe changed since this run started"
        + (f": {', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''} differ{'s' if len(changed) == 1 else ''}"
           if changed else "")
        + "".join(f"; {p}" for p in problems),
        where=str(out / "manifest.json"), hint=hint,
    )


@dataclass
class RecipeChange:
    """What an edited recipe means for a run's models (recipe_change)."""

    kept: list[str] = field(default_factory=list)  # finished, and their part of the recipe is unchanged
    retrained: list[str] = field(default_factory=list)  # not finished, and their part changed: a state of theirs goes
    affected: list[str] = field(default_factory=list)  # finished, and their part changed
    dropped: list[str] = field(default_factory=list)  # finished, and the edited recipe has no such model
    unkeyed: list[str] = field(default_factory=list)  # kept models whose stage.json predates model keys
    keys: dict[str, str] = field(default_factory=dict)  # the edited recipe's model keys


def _old_keys(recipe: Recipe, manifest: dict) -> dict[str, str]:
    """The model keys of the recipe the run last ran with: those its manifest.json records; for a
    run written before keys were recorded, those of the manifest's recipe with its relative paths
    read against the edited recipe's folder (as when a recipe file is edited in place); {} when
    they cannot be known (then nothing unkeyed is kept, and every state of an unfinished model goes)."""
    keys = manifest.get("model_keys")
    if isinstance(keys, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items()):
        return keys
    try:
        return recipe_model_keys(Recipe.from_dict(manifest["recipe"], base_dir=recipe.base_dir))
    except (UserError, AttributeError, KeyError, TypeError, ValueError):  # another version's recipe: not known
        return {}


def recipe_change(out: Path, recipe: Recipe, manifest: dict | None) -> RecipeChange:
    """A resume with an edited recipe: allowed when no finished model reads what changed (its
    stage.json's model key, plan.model_keys, is the new recipe's; for a model saved before keys
    were recorded, the key of the recipe that made it, _old_keys) and every finished model is
    still in the recipe. Otherwise a UserError naming the models in the way."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("recipe"), dict):
        raise _recipe_changed(out, recipe, manifest)
    new, old = recipe_model_keys(recipe), _old_keys(recipe, manifest)
    change = RecipeChange(keys=new)
    for directory in model_dirs(out):
        info, _ = read_stage_info(directory)
        if info is None:
            continue  # no finished model there (a damaged one is made again anyway)
        name = directory.name
        key = info.get("model_key") or (old.get(name) if info.get("recipe") == manifest.get("recipe_fingerprint") else None)
        if name not in new:
            change.dropped.append(name)
        elif key is not None and key == new[name]:
            change.kept.append(name)
            if not info.get("model_key"):
                change.unkeyed.append(name)
        else:
            change.affected.append(name)
    order = [*new, *old]  # training order, for messages
    for names in (change.kept, change.affected, change.dropped):
        names.sort(key=lambda name: order.index(name) if name in order else len(order))
    if change.affected or change.dropped:
        raise _recipe_changed(out, recipe, manifest, change)
    change.retrained = [name for name in new if name not in change.kept and old.get(name) != new[name]]
    return change


def prepare_edited_resume(out: Path, recipe: Recipe) -> RecipeChange:
    """Before a resume with an edited recipe (recipe_change allowed it), on the main process: the
    training states of the models whose part changed are removed (they train from the start under
    the new recipe); a kept model saved before model keys were recorded gets its key; and when a
    model will train, metrics.json and the reports of the earlier recipe go (the run writes them
    again when it finishes), so that nothing reads the folder as a finished run of the new one."""
    manifest, _ = read_manifest(out)
    change = recipe_change(out, recipe, manifest)
    for name in change.retrained:
        state = out / "state" / name
        if state.is_dir() and not state.is_symlink():
            shutil.rmtree(state)
    for name in change.unkeyed:
        info, _ = read_stage_info(model_dir(out, name))
        atomic_write(model_dir(out, name) / MARKER, json.dumps({**info, "model_key": change.keys[name]}, indent=2))
    if change.retrained:
        for name in ("metrics.json", "report.md", "report.html"):
            path = out / name
            if path.is_file() and not path.is_symlink():
                path.unlink()
    return change


def check_resume_or_overwrite(out: Path, *, resume: bool, overwrite: bool) -> None:
    """At most one of the two: one continues what OUT holds, the other throws it away."""
    if resume and overwrite:
        raise OutputError("--resume and --overwrite together: choose one", where=str(out),
                          hint="--resume continues the run in OUT, --overwrite replaces it")


def check_run_dir(recipe: Recipe, out: Path, *, resume: bool, overwrite: bool, say=None) -> Found:
    """Decide, without changing anything, whether this run may use RUN_DIR; an OutputError (or a
    UserError for a changed recipe) says why not. Returns what was found."""
    fingerprint = recipe.fingerprint()
    manifest, manifest_damage = read_manifest(out)

    def legacy(path: Path) -> bool:  # a run written before markers
        return manifest is not None or (resume and manifest_damage is not None and _models_of(path, fingerprint))

    found = inspect(out, COMMAND, legacy=legacy)
    where = str(out)
    if found.state in ("new", "empty"):
        return found
    if found.state == "other":
        raise OutputError(f"RUN_DIR holds the output of `cascade-kd {found.marker['command']}`, not a run: nothing "
                          "there is replaced", where=where, hint="choose a new or empty --out")
    if not found.ours:
        what = (f"its {DIR_MARKER} cannot be trusted ({found.why})" if found.state == "damaged"
                else f"its manifest.json is damaged ({manifest_damage})" if manifest_damage
                else f"no {DIR_MARKER} or manifest.json")
        if resume or overwrite:
            flag = "--resume" if resume else "--overwrite"
            raise OutputError(f"{flag} needs a cascade-kd run in RUN_DIR, and this is not one ({what}): nothing "
                              "there is replaced", where=where, hint="choose a new or empty --out")
        raise OutputError(f"RUN_DIR is not empty and holds no cascade-kd run ({what})", where=where,
                          hint="choose a new or empty --out (--resume and --overwrite apply to a cascade-kd run only)")
    if found.state == "own":  # a run's marker lists all it writes: anything else of those names is not its own
        unlisted = [e for e in RUN_ENTRIES if e not in found.marker["entries"] and e in found.entries]
        if unlisted:
            raise OutputError(f"RUN_DIR holds {', '.join(unlisted[:3])}, which its {DIR_MARKER} does not list as the "
                              "run's: a run would replace it", where=where, hint="move it away, or choose another --out")
    if not (resume or overwrite):
        raise OutputError("RUN_DIR is not empty", where=where,
                          hint="pass --resume to continue that run, --overwrite to replace it, or choose another --out "
                               "(in Python: resume=True, overwrite=True, or another run_dir)")
    if resume:
        if _started_with(found, recipe, manifest) != fingerprint:
            change = recipe_change(out, recipe, manifest)
            kept, retrained = change.kept, change.retrained
            if say:
                changed = changed_keys(manifest.get("recipe", {}), recipe.dump())
                say("the recipe changed since this run started"
                    + (f" ({', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''})" if changed else "")
                    + "; no finished model reads what changed"
                    + (f": kept {', '.join(kept)}" if kept else "")
                    + (f"; {', '.join(retrained)} train{'s' if len(retrained) == 1 else ''} from the start with it "
                       "(metrics.json and the reports are written again at the end)" if retrained else ""))
        if manifest_damage and say:
            say(f"WARNING: {out / 'manifest.json'} is damaged ({manifest_damage}): it is written again")
        return found
    if found.state == "legacy":  # --overwrite of a run without a marker: only if nothing else is there
        unknown = [e for e in found.entries if e not in RUN_ENTRIES and not _RUN_LEFTOVER.match(e)]
        if unknown:
            shown = ", ".join(unknown[:4]) + (", ..." if len(unknown) > 4 else "")
            raise OutputError(
                f"RUN_DIR holds a run written before {DIR_MARKER} markers, and also {shown}, which a run does not "
                "write: --overwrite deletes nothing it cannot prove it wrote", where=where,
                hint="move those out of RUN_DIR, or choose another --out")
    return found


def _started_with(found: Found, recipe: Recipe, manifest: dict | None = None) -> str:
    """The fingerprint of the recipe a run in RUN_DIR was started (or last resumed) with."""
    if found.state == "own":
        return found.marker.get("recipe_fingerprint")
    manifest = manifest if manifest is not None else read_manifest(found.path)[0]
    return manifest["recipe_fingerprint"] if manifest else recipe.fingerprint()  # else proven by a finished model


def _lock(out: Path):
    from filelock import FileLock, Timeout

    lock = FileLock(str(out / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputError("another cascade-kd process is working in RUN_DIR (it holds RUN_DIR/.cascade-kd.lock)",
                          where=str(out), hint="wait for it to finish, or choose another --out") from None
    except OSError as exc:
        raise OutputError(f"cannot lock RUN_DIR: {exc.strerror or exc}", where=str(out)) from None
    return lock


@contextmanager
def locked_run_dir(run_dir: Path):
    """Hold RUN_DIR's lock while a command rewrites a finished run's files (bench, report), so that
    it never interleaves its writes with a `run --resume` or another such command there."""
    lock = _lock(output_path(run_dir))
    try:
        yield
    finally:
        lock.release()


@contextmanager
def open_run_dir(recipe: Recipe, out: Path, *, resume: bool, overwrite: bool, say=print):
    """Check RUN_DIR on every process, then let the main one lock it, replace an earlier run's files
    (--overwrite) and mark it; the lock is held until the block ends. Every process checks the
    directory as the user left it (so all fail alike), none sees it half-changed."""
    out = output_path(out)  # a symbolic link stands for its target (idempotent: run_recipe checked it already)
    check_run_dir(recipe, out, resume=resume, overwrite=overwrite, say=say)
    barrier()  # every process has checked RUN_DIR as the user left it before the main one changes it
    lock = None

    def claim():
        nonlocal lock
        make_directory(out)
        lock = _lock(out)
        try:  # again, under the lock: another process may have started a run here since
            found = check_run_dir(recipe, out, resume=resume, overwrite=overwrite)
            if overwrite and not resume and found.ours:
                entries = found.marker["entries"] if found.state == "own" else [
                    e for e in found.entries if e in RUN_ENTRIES or _RUN_LEFTOVER.match(e)]
                kept = remove_written(out, entries, _owner(out))
                if kept:
                    shown = ", ".join(str(p.relative_to(out)) for p in kept[:4]) + (", ..." if len(kept) > 4 else "")
                    say(f"--overwrite: the earlier run's files are deleted; kept {len(kept)} entr"
                        f"{'y' if len(kept) == 1 else 'ies'} it did not write ({shown})")
            if resume and _started_with(found, recipe) != recipe.fingerprint():
                prepare_edited_resume(out, recipe)  # before the marker names the new recipe: a kill here retries it
            if not (found.state == "own" and found.marker.get("recipe_fingerprint") == recipe.fingerprint()):
                write_marker(out, COMMAND, RUN_ENTRIES, recipe_fingerprint=recipe.fingerprint())
        except BaseException:
            lock.release()
            raise

    on_main(claim)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


# the files a teacher and a tokenizer are loaded from (weights from safetensors only): what else a
# folder holds (other frameworks' weights, a model card, an export) changes nothing a run reads
_TOKENIZER_FILES = ("tokenizer", "vocab", "merges", "special_tokens_map", "added_tokens", "sentencepiece", "spiece")


def _read_files(directory: Path, key: str) -> list[Path]:
    if key == "model":
        return [*weight_files(directory), *(p for p in (directory / "config.json", directory / SHARD_INDEX) if p.is_file())]
    return [p for p in directory.iterdir() if p.is_file() and (p.name.startswith(_TOKENIZER_FILES) or p.suffix == ".model")]


def input_digests(job: Job) -> dict[str, dict[str, str]]:
    """Hashes of what a run reads besides its recipe: the examples, per split and language, and the
    local files its teacher and tokenizer load from (a hub name is not hashed). Computed on the main
    process and shared (several processes would read the same gigabytes at once)."""
    def compute():
        models = {}
        for key in ("model", "tokenizer"):
            reference = job.recipe.model_path(getattr(job.recipe.teacher, key))
            if reference is not None and Path(reference).is_dir():
                try:
                    models[f"teacher.{key}"] = files_digest(_read_files(Path(reference), key))
                except OSError as exc:
                    raise UserError(f"cannot read the teacher's files: {exc.strerror or exc}",
                                    where=str(getattr(exc, "filename", None) or reference)) from None
        return {"data_digests": job.data.digests(), "model_digests": models}

    return on_main(compute)


def check_same_inputs(job: Job, digests: dict) -> None:
    """A resumed run reads the data and teacher its manifest was written from (a run from before
    digests is not checked): inputs edited in place since would mix models of old and new inputs in
    one run, finished models coming from the old ones."""
    manifest, _ = read_manifest(job.out)
    if (isinstance(manifest, dict) and manifest.get("recipe_fingerprint") != job.recipe.fingerprint()
            and _old_keys(job.recipe, manifest).get("teacher") != job.model_keys["teacher"]):
        return  # a resume with an edited data or teacher section (recipe_change): no model of the old inputs is kept
    hint = "put them back as they were to resume, or start again on the new ones with --overwrite or another --out"
    old = (manifest or {}).get("data_digests")
    if isinstance(old, dict):
        new = digests["data_digests"]
        changed = [(split, lang) for split in sorted(set(old) | set(new))
                   for lang in sorted(set(old.get(split) or {}) | set(new.get(split) or {}))
                   if (old.get(split) or {}).get(lang) != (new.get(split) or {}).get(lang)]
        if changed:
            shown = ", ".join(f"{split} {lang}" for split, lang in changed[:4]) + (", ..." if len(changed) > 4 else "")
            split, lang = changed[0]
            raise DataError(f"the data changed since this run started ({shown}): a resume would mix models trained "
                            "on the old data with models trained on the new",
                            where=job.data.source_file(split, lang) or str(job.out), hint=hint)
    old = (manifest or {}).get("model_digests")
    if isinstance(old, dict):
        changed = [key for key in sorted(set(old) | set(digests["model_digests"]))
                   if old.get(key) != digests["model_digests"].get(key)]
        if changed:
            raise UserError(f"the files of {' and '.join(changed)} changed since this run started: a resume would mix "
                            "models distilled from the old teacher with models distilled from the new",
                            where=where(job.recipe, *changed[0].split(".")), hint=hint)


def write_manifest(job: Job, digests: dict) -> None:
    import transformers

    manifest = {
        "recipe_fingerprint": job.recipe.fingerprint(), "cascade_kd": __version__, "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        # the installed plugins this process imported: name, module, distribution and version
        "plugins": [{"name": n, "module": m, "distribution": d} for n, m, d in plugins.LOADED or []],
        "seed": job.recipe.seed, "data_sizes": job.data.sizes(), **digests, "labels": job.data.labels,
        "recipe": job.recipe.dump(),
        "model_keys": job.model_keys,  # what an edited resume compares (recipe_change)
    }
    atomic_write(job.out / "manifest.json", json.dumps(manifest, indent=2))
    atomic_write(job.out / "recipe.yaml", recipe_text(job.recipe))


def recipe_model_keys(recipe: Recipe) -> dict[str, str]:
    """plan.model_keys of the recipe with its paths resolved (what stage.json and manifest.json keep)."""
    return model_keys(resolved_dump(recipe))


def resolved_dump(recipe: Recipe) -> dict:
    """The recipe as plain data with its relative paths made absolute (data files, transfer text,
    labels file, a local teacher or tokenizer): what RUN_DIR/recipe.yaml holds, and what model keys
    hash, so that the recipe read back from RUN_DIR is the same recipe to them."""
    data = recipe.dump()

    def absolute(p):
        if p is None:
            return p
        path = Path(p).expanduser()  # as the readers take it
        return str(path) if path.is_absolute() else str((recipe.base_dir / path).resolve())

    for split in ("train", "dev", "test", "transfer"):
        spec = data["data"].get(split)
        if spec is not None:
            data["data"][split] = {k: absolute(v) for k, v in spec.items()} if isinstance(spec, dict) else absolute(spec)
    data["task"]["labels_file"] = absolute(data["task"]["labels_file"])
    for key in ("model", "tokenizer"):
        reference = recipe.model_path(data["teacher"][key])  # a hub name stays one (model_path never makes it a path)
        data["teacher"][key] = str(Path(reference).resolve()) if reference and Path(reference).is_absolute() else reference
    return data


def recipe_text(recipe: Recipe) -> str:
    """The recipe as run, with relative paths made absolute so it works from RUN_DIR too."""
    import yaml

    return yaml.safe_dump(resolved_dump(recipe), sort_keys=False, allow_unicode=True)


def is_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds a cascade-kd run (its marker, or an earlier version's manifest)."""
    found = inspect(Path(run_dir), COMMAND, legacy=lambda p: read_manifest(p)[0] is not None)
    return found.ours
