"""Where `cascade-kd export` and `cascade-kd trim` put their output by default, and its file names:
one place for the commands, the CLI's messages, `bench` (which times a trimmed copy beside its
model) and the reports and model cards (which mention them). No torch here: the reports read it."""

from __future__ import annotations

from pathlib import Path

from cascade_kd.fileio import weight_files

EXPORT_DIR, TRIM_DIR = "onnx", "trimmed"  # inside the model's folder
ONNX_NAME, INT8_NAME, EXPORT_INFO = "model.onnx", "model.int8.onnx", "export.json"
TRIM_INFO = "trim.json"


def export_dir(model_dir: Path, out: Path | None = None) -> Path:
    """`out`, or the default place of a model's ONNX export (MODEL_DIR/onnx)."""
    return Path(out) if out is not None else Path(model_dir) / EXPORT_DIR


def trim_dir(model_dir: Path, out: Path | None = None) -> Path:
    """`out`, or the default place of a model's trimmed copy (MODEL_DIR/trimmed)."""
    return Path(out) if out is not None else Path(model_dir) / TRIM_DIR


def trimmed_copy(model_dir: Path) -> Path | None:
    """The trimmed copy `cascade-kd trim` wrote in its default place (its trim.json and weights
    there), or None."""
    trimmed = trim_dir(model_dir)
    return trimmed if (trimmed / TRIM_INFO).is_file() and weight_files(trimmed) else None
