"""Full training state of one stage, so an interrupted stage resumes to the same result.

Saved at the configured step interval and after every evaluation, atomically, into
RUN_DIR/state/<stage>/: the trainable module (student and projections), optimiser, scheduler,
torch RNG states, the best dev weights so far, and the loop's position (epoch, batch within the
epoch, step) and bookkeeping. The batch order of an epoch is a pure function of (seed, epoch), so
resuming skips exactly the batches already done. Nothing is unpickled: tensors are safetensors,
optimiser and scheduler states are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from cascade_kd.fileio import atomic_directory

PROGRESS = "progress.json"


@dataclass
class Progress:
    """Where the loop is, and what it has learnt so far."""

    step: int = 0  # micro-batches done
    epoch: int = 0  # epochs begun and finished
    batch: int = 0  # batches done within the current epoch
    tokens: int = 0
    running: float = 0.0
    train_seconds: float = 0.0
    best_score: float | None = None
    best_epoch: float | None = None
    stale: int = 0
    stopped: bool = False  # early stopping fired
    history: list = field(default_factory=list)
    processes: int = 1  # how many processes wrote this state (a resume may use another number)


def save_state(directory: Path, module, optimizer, scheduler, progress: Progress, best: dict | None) -> None:
    with atomic_directory(directory) as tmp:
        save_model(module, str(tmp / "module.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, str(tmp / "rng.safetensors"))
        if best is not None:
            save_file({k: v.contiguous() for k, v in best.items()}, str(tmp / "best.safetensors"))
        (tmp / PROGRESS).write_text(json.dumps(asdict(progress)))


def load_state(directory: Path, module, optimizer, scheduler) -> tuple[Progress, dict | None]:
    """Restore everything save_state wrote; returns the progress and the best weights."""
    directory = Path(directory)
    load_model(module, str(directory / "module.safetensors"))
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    rng = load_file(str(directory / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available() and "cuda0" in rng:
        torch.cuda.set_rng_state_all([rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng])
    best = load_file(str(directory / "best.safetensors")) if (directory / "best.safetensors").is_file() else None
    return Progress(**json.loads((directory / PROGRESS).read_text())), best


def has_state(directory: Path | None) -> bool:
    return directory is not None and (Path(directory) / PROGRESS).is_file()
