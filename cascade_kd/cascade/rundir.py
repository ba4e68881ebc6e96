"""RUN_DIR: what a run writes (manifest, recipe as run, a marker per finished model) and the
rules for starting, resuming and replacing a run there."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cascade_kd import __version__
from cascade_kd.config.schema import Recipe
from cascade_kd.errors import UserError
from cascade_kd.fileio import atomic_write
from cascade_kd.training.distributed import barrier, is_main

if TYPE_CHECKING:  # a type only: job.py imports this module's neighbours, not the reverse
    from cascade_kd.cascade.job import Job


MARKER = "stage.json"


def finished_model(directory: Path, fingerprint: str) -> dict | None:
    marker = directory / MARKER
    if not marker.is_file():
        return None
    info = json.loads(marker.read_text())
    return info if info.get("recipe") == fingerprint else None


def changed_keys(old, new, prefix: str = "") -> list[str]:
    """Dotted key paths whose values differ between two recipe dumps."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + [k for k in new if k not in old]
        return [c for k in keys for c in changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in changed_keys(a, b, f"{prefix}{i}.")]
    return [] if old == new else [prefix.rstrip(".")]


def check_resume(recipe: Recipe, out: Path) -> None:
    """A run is resumed with the recipe it started with: name the keys that changed otherwise."""
    if not (out / "manifest.json").is_file():
        return
    manifest = json.loads((out / "manifest.json").read_text())
    if manifest.get("recipe_fingerprint") != recipe.fingerprint():
        changed = changed_keys(manifest.get("recipe", {}), recipe.dump())
        raise UserError(
            "the recipe changed since this run started"
            + (f": {', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''} differ" if changed else ""),
            where=str(out / "manifest.json"), hint="resume with the original recipe, or start a new --out",
        )


def prepare_run_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Check RUN_DIR on every process, then let the main one change it: every process checks the
    directory as the user left it (so all fail alike), none sees it half-changed."""
    if out.exists() and not out.is_dir():
        raise UserError("RUN_DIR exists and is not a directory", where=str(out))
    if out.is_dir() and any(out.iterdir()) and not (resume or overwrite):
        raise UserError(
            "RUN_DIR is not empty", where=str(out),
            hint="pass --resume to continue that run, --overwrite to replace it, or choose another --out",
        )
    if overwrite and out.is_dir() and any(out.iterdir()) and not resume:
        if not (out / "manifest.json").is_file():  # never delete a directory that is not a run
            raise UserError(
                "--overwrite replaces an earlier cascade-kd run, but this directory holds no manifest.json",
                where=str(out), hint="choose an empty or new --out",
            )
    barrier()
    if is_main():
        if overwrite and out.is_dir() and not resume:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)


def write_manifest(job: Job) -> None:
    import transformers

    manifest = {
        "recipe_fingerprint": job.recipe.fingerprint(), "cascade_kd": __version__, "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "seed": job.recipe.seed, "data_sizes": job.data.sizes(), "labels": job.data.labels,
        "recipe": job.recipe.dump(),
    }
    atomic_write(job.out / "manifest.json", json.dumps(manifest, indent=2))
    atomic_write(job.out / "recipe.yaml", recipe_text(job.recipe))


def recipe_text(recipe: Recipe) -> str:
    """The recipe as run, with relative paths made absolute so it works from RUN_DIR too."""
    import yaml

    data = recipe.dump()

    def absolute(p):
        return p if p is None or Path(p).is_absolute() else str((recipe.base_dir / p).resolve())

    for split in ("train", "dev", "test"):
        spec = data["data"][split]
        data["data"][split] = {k: absolute(v) for k, v in spec.items()} if isinstance(spec, dict) else absolute(spec)
    data["task"]["labels_file"] = absolute(data["task"]["labels_file"])
    for key in ("model", "tokenizer"):
        data["teacher"][key] = recipe.model_path(data["teacher"][key])
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
