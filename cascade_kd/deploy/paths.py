"""Where `cascade-kd export` and `cascade-kd trim` put their output by default, and its file names:
one place for the commands, the CLI's messages, `bench` (which times a trimmed copy beside its
model) and the reports and model cards (which mention them). No torch here: the reports read it."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from cascade_kd.fileio import files_digest, weight_files

EXPORT_DIR, TRIM_DIR = "onnx", "trimmed"  # inside the model's folder
ONNX_NAME, INT8_NAME, EXPORT_INFO = "model.onnx", "model.int8.onnx", "export.json"
TRIM_INFO = "trim.json"
SOURCE_KEY = "source_weights_sha256"  # in export.json and trim.json: the weights the copy was made from


def export_dir(model_dir: Path, out: Path | None = None) -> Path:
    """`out`, or the default place of a model's ONNX export (MODEL_DIR/onnx)."""
    return Path(out) if out is not None else Path(model_dir) / EXPORT_DIR


def trim_dir(model_dir: Path, out: Path | None = None) -> Path:
    """`out`, or the default place of a model's trimmed copy (MODEL_DIR/trimmed)."""
    return Path(out) if out is not None else Path(model_dir) / TRIM_DIR


def weights_digest(model_dir: Path) -> str:
    """The sha256 of a saved model's weight files (names and bytes, in order); remembered for files
    of the same size and time of change, as a report asks it for every model card and table."""
    files = weight_files(model_dir)
    return _digest(Path(model_dir), tuple((p.name, *_size_and_time(p)) for p in files))


def _size_and_time(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _digest(model_dir: Path, files: tuple) -> str:
    return files_digest(model_dir / name for name, *_ in files)


def made_from(info_file: Path, model_dir: Path) -> bool:
    """Whether the export or trimmed copy described by `info_file` was made from the weights now in
    `model_dir`: not when the model was trained again since (`run --overwrite` keeps the folders a
    user made). One from before the digest was recorded is taken as it is."""
    try:
        recorded = json.loads(Path(info_file).read_text(encoding="utf-8")).get(SOURCE_KEY)
    except (OSError, ValueError, AttributeError):
        return False
    return recorded is None or recorded == weights_digest(model_dir)


def trimmed_copy(model_dir: Path) -> Path | None:
    """The trimmed copy `cascade-kd trim` wrote in its default place (its trim.json and weights
    there) from the model's present weights, or None."""
    trimmed = trim_dir(model_dir)
    if not ((trimmed / TRIM_INFO).is_file() and weight_files(trimmed)):
        return None
    return trimmed if made_from(trimmed / TRIM_INFO, model_dir) else None


def current_export(model_dir: Path) -> Path | None:
    """The ONNX export `cascade-kd export` wrote in its default place from the model's present
    weights, or None."""
    onnx = export_dir(model_dir)
    return onnx if (onnx / ONNX_NAME).is_file() and made_from(onnx / EXPORT_INFO, model_dir) else None
