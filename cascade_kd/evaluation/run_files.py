"""A finished run read back from RUN_DIR: metrics.json (the scores), manifest.json (recipe, data
sizes, versions) and each saved model's stage.json marker (how it was trained, its curves).

Reports, model cards and comparisons are all built from these files, so each can be rebuilt from
a finished run at any time (`cascade-kd report RUN_DIR`, `cascade-kd compare RUN_DIR...`)."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from cascade_kd.errors import UserError

# A run's layout, torch-free (the reports read it; cascade/rundir.py writes it): the teacher in
# RUN_DIR/teacher, every stage and the direct baseline in RUN_DIR/stages/NAME, each folder with the
# marker written last and, once the run is scored, its model card.
MARKER = "stage.json"
MODEL_CARD = "README.md"


# under each model card cascade-kd writes: the hash of the text above it, so that a card a user has
# edited since (a licence, an intended use, before pushing it to the Hub) is told from ours
CARD_SIGNATURE = re.compile(r"\n<!-- cascade-kd model card, sha256 ([0-9a-f]{64}) -->")
CARD_COPY = "README.cascade-kd.md"  # where the new card goes when README.md was edited by hand


def sign_card(text: str) -> str:
    return f"{text}\n<!-- cascade-kd model card, sha256 {hashlib.sha256(text.encode()).hexdigest()} -->\n"


def card_edited(path: Path) -> bool:
    """Whether README.md is not, as it stands, a card cascade-kd wrote: changed anywhere since
    (above its hash line, below it, or the line itself), or never signed (a user's own README, or a
    card from before cards were signed: kept too, as either may hold the user's words). A missing
    card is not edited."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:  # not a card cascade-kd writes: the user's
        return True
    except OSError:
        return False
    signatures = list(CARD_SIGNATURE.finditer(text))
    if not signatures:
        return True
    body = text[: signatures[-1].start()]
    return text.rstrip("\n") != sign_card(body).rstrip("\n")  # an editor's dropped final newline is no edit


def model_folder(name: str) -> str:
    """A model's folder inside RUN_DIR: teacher, or stages/NAME."""
    return "teacher" if name == "teacher" else f"stages/{name}"


def model_name(folder: str) -> str:
    """The model a folder of RUN_DIR holds (model_folder's inverse)."""
    return folder.removeprefix("stages/")


def model_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / model_folder(name)


def model_config(directory: Path) -> dict:
    """A saved model's config.json as a dict ({} when it cannot be read): for the few facts the
    reports take from it (vocabulary size, model type) without loading the model."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def not_finished(run_dir: Path) -> UserError:
    """No metrics.json in RUN_DIR: a run that has not finished (its manifest is there) is told how
    to go on."""
    run_dir = Path(run_dir)
    hint = None
    if (run_dir / "manifest.json").is_file():
        hint = (f"the run there has not finished: continue it with `cascade-kd run {run_dir / 'recipe.yaml'} --out "
                f"{run_dir} --resume` (in Python: ckd.run(..., resume=True))")
    return UserError("no metrics.json: not a finished cascade-kd run", where=str(run_dir), hint=hint)


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`; a clear UserError when it is missing or broken."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        if Path(path).name == "metrics.json" and (Path(path).parent / "manifest.json").is_file():
            raise not_finished(Path(path).parent) from None
        raise UserError(f"no {Path(path).name}: {what}", where=str(path)) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read {Path(path).name} ({type(exc).__name__}: {str(exc).splitlines()[0]})",
                        where=str(path), hint="the file is damaged: rerun the run (or `cascade-kd eval`)") from None
    if not isinstance(data, dict):
        raise UserError(f"{Path(path).name} does not hold a JSON object", where=str(path))
    return data


@dataclass
class RunFiles:
    """What a finished RUN_DIR holds, read once."""

    directory: Path
    metrics: dict
    manifest: dict = field(default_factory=dict)
    markers: dict = field(default_factory=dict)  # model name -> its stage.json (when readable)

    @property
    def models(self) -> list[dict]:
        return self.metrics["models"]

    @property
    def languages(self) -> list[str]:
        return self.metrics["languages"]

    @property
    def recipe(self) -> dict:
        return self.manifest.get("recipe") or {}

    def model(self, name: str) -> dict | None:
        return next((m for m in self.models if m["name"] == name), None)

    def model_dir(self, row: dict) -> Path:
        return self.directory / row["path"]


SEEDS_FILE = "seeds.json"  # in the OUT of `run --seeds`: its seeds and their run folders (cascade/seeds.py)
REQUIRED = ("name", "task", "metric", "split", "languages", "models")
ROW_REQUIRED = ("name", "role", "path", "per_language", "average", "params_total")


def read_run(run_dir: str | Path) -> RunFiles:
    """Read a finished run; UserError (one line) for a missing directory, a missing or broken
    metrics.json or one without the keys a report needs."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError("no such run directory" if not run_dir.exists() else "not a directory", where=str(run_dir),
                        hint="give the --out directory of a finished `cascade-kd run`")
    if not (run_dir / "metrics.json").exists() and (run_dir / SEEDS_FILE).is_file():  # `run --seeds` OUT
        try:
            folders = " ".join(shlex.quote(str(run_dir / f)) for f in
                               json.loads((run_dir / SEEDS_FILE).read_text(encoding="utf-8"))["runs"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            folders = str(run_dir / "seed<S>")
        raise UserError("this is the OUT of `run --seeds`, whose runs are its seed folders", where=str(run_dir),
                        hint=f"give those: {folders}")
    metrics = read_json(run_dir / "metrics.json", "not a finished cascade-kd run")
    missing = [k for k in REQUIRED if k not in metrics]
    rows = metrics.get("models")
    if not missing and (not isinstance(rows, list) or not rows
                        or any(not isinstance(r, dict) or any(k not in r for k in ROW_REQUIRED) for r in rows)):
        missing = ["models"]
    if missing:
        raise UserError(f"metrics.json lacks {', '.join(missing)}: not the metrics of a cascade-kd run",
                        where=str(run_dir / "metrics.json"))
    manifest = read_json(run_dir / "manifest.json", "no run manifest") if (run_dir / "manifest.json").exists() else {}
    evaluated = metrics.get("evaluated_run")  # `cascade-kd eval` output: the models, seed and recipe are that run's
    if not manifest and isinstance(evaluated, str):
        scored = run_dir / evaluated  # relative to the eval folder (an absolute path stays as it is)
        if (scored / "manifest.json").is_file():
            manifest = read_json(scored / "manifest.json", "no run manifest")
    markers = {}
    for row in rows:
        path = run_dir / row["path"] / MARKER
        if path.is_file():
            try:
                markers[row["name"]] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                pass  # a damaged marker costs only that model's curves and training details
    return RunFiles(run_dir, metrics, manifest, markers)
