"""What every benchmark script here needs: JSON results read back (None when absent or half-written)
and written atomically (a killed run never leaves a truncated file), through the package's writer."""

from __future__ import annotations

import json
from pathlib import Path

from cascade_kd.fileio import atomic_write


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
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
