"""Full training state of one stage, so an interrupted stage resumes to the same result.

Saved at the configured step interval and after every evaluation, atomically, into
RUN_DIR/state/<stage>/: the trainable module's tensors (student and projections), optimiser,
scheduler, torch RNG states, the best dev weights so far, and the loop's position (epoch, batch
within the epoch, step) and bookkeeping. The batch order of an epoch is a pure function of (seed,
epoch), so resuming skips exactly the batches already done. Nothing is unpickled: tensors are
safetensors, optimiser and scheduler states are read with `torch.load(weights_only=True)`.

What a checkpoint writes is kept to what training can have changed, since a distilled student is
mostly frozen weight (mBERT's 92M-value embedding table against 42M in six layers):
- parameters frozen since the stage began (`Progress.static`) are written once, to
  frozen.safetensors, and hard-linked into every later checkpoint; a parameter leaves that set
  for good when it is unfrozen (the engine calls `update_static` after gradual unfreezing, the one
  place where requires_grad changes), and is written every time from then on;
- the best weights hold the changing tensors only, and are not written at all when they are the
  current weights (the checkpoint right after an improving evaluation: `Progress.best_step`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cascade_kd.errors import UserError
from cascade_kd.fileio import atomic_directory, recover_directory

PROGRESS = "progress.json"
MODULE = "module.safetensors"
FROZEN = "frozen.safetensors"
BEST = "best.safetensors"


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
    best_step: int | None = None  # the step at which the best weights were taken
    stale: int = 0
    stopped: bool = False  # early stopping fired
    history: list = field(default_factory=list)
    curve: list = field(default_factory=list)  # loss parts against the step (training/progress.py)
    processes: int = 1  # how many processes wrote this state (a resume may use another number)
    static: list = field(default_factory=list)  # parameters frozen, hence unchanged, since the stage began
    # the stage's random stream (batch order, masks, dropped guides; cascade/stages.py), so that a
    # resume draws what the stage drew before; None: a state written before streams were recorded
    stream: int | None = None
    precision: str | None = None  # what the stage trained in (`precision: auto` resolves per machine)
    scaler: dict | None = None  # fp16's loss scale and its growth counter (GradScaler.state_dict), else None


def named_tensors(module) -> dict[str, torch.Tensor]:
    """Every tensor training can change, by name: the parameters (a tied one once) and the
    persistent buffers. Non-persistent buffers are rebuilt by the module itself."""
    tensors = dict(module.named_parameters())
    for prefix, sub in module.named_modules():
        for name, buffer in sub.named_buffers(recurse=False):
            if buffer is not None and name not in sub._non_persistent_buffers_set:
                tensors[f"{prefix}.{name}" if prefix else name] = buffer
    return tensors


def frozen_parameters(module) -> list[str]:
    """The parameters that no optimiser step can change now (requires_grad False)."""
    return sorted(n for n, p in module.named_parameters() if not p.requires_grad)


def update_static(progress: Progress, module, best: dict | None) -> None:
    """Drop from `progress.static` the parameters that are trainable now. Call before they train:
    a best copy taken while they were frozen gets their (still unchanged) value, so restoring it
    also undoes what they learn later."""
    tensors = named_tensors(module)
    leaving = {k for k in progress.static if tensors[k].requires_grad}
    if leaving:
        progress.static = [k for k in progress.static if k not in leaving]
        if best is not None:
            best.update({k: tensors[k].detach().to("cpu", copy=True) for k in leaving if k not in best})


def changing_tensors(module, progress: Progress) -> dict[str, torch.Tensor]:
    """Copies (on the CPU) of the tensors outside `progress.static`: what a best-weights copy needs."""
    static = set(progress.static)
    return {k: v.detach().to("cpu", copy=True) for k, v in named_tensors(module).items() if k not in static}


@torch.no_grad()
def restore(module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy `tensors` (a subset of named_tensors, by name) into the module's own tensors."""
    own = named_tensors(module)
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise KeyError(f"not tensors of this module: {', '.join(unknown[:3])}")
    for k, v in tensors.items():
        own[k].copy_(v)


def _keys(path: Path) -> set[str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return set(handle.keys())
    except Exception:  # noqa: BLE001 - a damaged file is not linked into the next checkpoint
        return set()


def rng_state() -> dict[str, torch.Tensor]:
    """This process's random state: CPU, and the GPU it uses (dropout draws from both)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_state(directory: Path, module, optimizer, scheduler, progress: Progress, best: dict | None,
               ranks: list[dict] | None = None) -> None:
    """Everything a stage needs to go on exactly where it stopped. `ranks`: every process's
    `rng_state()`, in rank order, when several train (each draws its own dropout); else this one's."""
    directory = Path(directory)
    tensors = named_tensors(module)
    static = set(progress.static)
    with atomic_directory(directory) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items() if k not in static}, str(tmp / MODULE))
        if static:
            # the set only shrinks and its members do not change: the file written first still holds them
            if (directory / FROZEN).is_file() and static <= _keys(directory / FROZEN):
                os.link(directory / FROZEN, tmp / FROZEN)
            else:
                save_file({k: tensors[k].contiguous() for k in sorted(static)}, str(tmp / FROZEN))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        for rank, state in enumerate(ranks or []):  # the main process's is the one above
            if rank > 0:
                rng.update({f"{kind}.rank{rank}": tensor.cpu() for kind, tensor in state.items()})
        save_file(rng, str(tmp / "rng.safetensors"))
        if best is not None and progress.best_step != progress.step:  # else the best weights are the module's
            save_file({k: v.contiguous() for k, v in best.items()}, str(tmp / BEST))
        (tmp / PROGRESS).write_text(json.dumps(asdict(progress)))


class DamagedState(UserError):
    """A stage's training state that cannot be read (truncated, not what save_state writes): the
    stage starts again from its beginning rather than fail (the next checkpoint replaces it)."""


def _read_state(directory: Path) -> dict:
    """Everything save_state wrote, read into memory before anything is restored, so that a damaged
    file leaves the module, optimiser and scheduler untouched. Nothing is unpickled: a file that
    torch.load(weights_only=True) refuses is a UserError (cascade-kd writes only tensors there)."""
    import pickle

    current = directory / PROGRESS
    try:
        state = {"progress": Progress(**json.loads((directory / PROGRESS).read_text(encoding="utf-8")))}
        current = directory / MODULE
        state["saved"] = load_file(str(current))
        if state["progress"].static:
            current = directory / FROZEN
            state["frozen"] = load_file(str(current))
        for key, name in (("optimizer", "optimizer.pt"), ("scheduler", "scheduler.pt")):
            current = directory / name
            state[key] = torch.load(current, weights_only=True)
        current = directory / "rng.safetensors"
        state["rng"] = load_file(str(current))
        if "cpu" not in state["rng"]:
            raise ValueError("no CPU random state")
        current = directory / BEST
        state["best"] = load_file(str(current)) if current.is_file() else None
    except pickle.UnpicklingError as exc:
        raise UserError(f"{current.name} holds pickled objects beyond tensors, which cascade-kd never writes and "
                        f"does not unpickle (torch.load(weights_only=True) refused it: {str(exc).splitlines()[0][:120]})",
                        where=str(current), hint=f"the file was replaced: delete {directory} to restart this stage") from None
    except Exception as exc:  # noqa: BLE001 - truncated, not JSON, not safetensors, a zip torch cannot read
        lines = str(exc).strip().splitlines()
        raise DamagedState(f"{current.name} is damaged ({type(exc).__name__}: {(lines[0] if lines else '')[:120]})",
                           where=str(current)) from None
    return state


def load_state(directory: Path, module, optimizer, scheduler, rank: int = 0) -> tuple[Progress, dict | None]:
    """Restore everything save_state wrote; returns the progress and the best weights. A damaged
    state is a DamagedState (nothing restored); one written for another model a UserError. `rank`:
    this process's; it takes its own random state where the state holds one, else the main one's."""
    directory = Path(directory)
    state = _read_state(directory)
    progress, saved = state["progress"], state["saved"]
    if progress.static:
        frozen = state["frozen"]
        missing = [k for k in progress.static if k not in frozen]
        if missing:
            raise DamagedState(f"{FROZEN} lacks {len(missing)} frozen tensor(s), e.g. {missing[0]}", where=str(directory / FROZEN))
        saved.update({k: frozen[k] for k in progress.static})
    own = named_tensors(module)
    if set(saved) != set(own):
        differ = sorted(set(saved) ^ set(own))
        raise UserError(f"the training state in {directory} does not match this stage's model "
                        f"({len(differ)} tensor(s) differ, e.g. {differ[0]})", where=str(directory),
                        hint="it was written for another model or by another version: delete the directory to restart the stage")
    reshaped = sorted(k for k in own if saved[k].shape != own[k].shape)
    if reshaped:  # checked before anything is restored: a half-restored module would train on
        k = reshaped[0]
        raise UserError(f"the training state in {directory} does not match this stage's model ({len(reshaped)} "
                        f"tensor(s) of another shape, e.g. {k}: {tuple(saved[k].shape)} saved, {tuple(own[k].shape)} now)",
                        where=str(directory), hint="the model or the data it is built from changed since it was "
                        "written: delete the directory to restart the stage")
    restore(module, saved)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng.get(f"cpu.rank{rank}", rng["cpu"]) if rank else rng["cpu"])
    if torch.cuda.is_available() and rank and f"cuda.rank{rank}" in rng:
        torch.cuda.set_rng_state(rng[f"cuda.rank{rank}"])
    elif torch.cuda.is_available() and "cuda0" in rng:
        torch.cuda.set_rng_state_all([rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng])
    best = state["best"]
    if best is None and progress.best_step is not None and progress.best_step == progress.step:
        best = changing_tensors(module, progress)
    return progress, best


def saved_stream(directory: Path | None) -> tuple[bool, int | None]:
    """Whether DIRECTORY holds a readable stage state, and the random stream it recorded (None for
    a state written before streams were recorded)."""
    if not has_state(directory):
        return False, None
    try:
        stream = json.loads((Path(directory) / PROGRESS).read_text(encoding="utf-8")).get("stream")
    except (OSError, ValueError, AttributeError):  # damaged: the stage starts again (loop._start says so)
        return False, None
    return True, stream if isinstance(stream, int) else None


def has_state(directory: Path | None) -> bool:
    if directory is None:
        return False
    recover_directory(Path(directory))  # a state a killed save left under a temporary name is put back
    return (Path(directory) / PROGRESS).is_file()
