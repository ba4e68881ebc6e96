"""What a stage trains with: the Accelerator (devices, processes, precision), the optimiser, the
learning-rate schedule over its steps, and gradual unfreezing (XtremeDistil), the one schedule that
changes which parameters train from epoch to epoch."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from cascade_kd.config.schema import TrainConfig
from cascade_kd.errors import UserError
from cascade_kd.training.distributed import process_state


def resolve_precision(precision: str) -> str:
    """'auto' picks bf16 where the hardware runs it natively (AMX/AVX-512 bf16 CPUs, recent GPUs)."""
    if precision != "auto":
        return {"fp32": "no"}.get(precision, precision)
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if _cpu_has_native_bf16() else "no"


def _cpu_has_native_bf16() -> bool:
    """AMX or AVX-512 BF16: oneDNN also 'supports' bf16 by emulation on older AVX-512 CPUs, slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def make_accelerator(cfg: TrainConfig, find_unused: bool = False):
    """A fresh Accelerator per stage: stages may differ in precision, and accelerate keeps its
    state per process, so that state is reset first (the process group, if any, is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    process = process_state()  # joins the launcher's process group, if any, the same way everywhere
    from accelerate.utils import DistributedDataParallelKwargs

    # parameters that get no gradient in a step (gradual unfreezing, a stage whose losses never
    # reach the head): DDP must look for them, at the cost of a graph traversal per step
    ddp = DistributedDataParallelKwargs(find_unused_parameters=find_unused)
    # gradient accumulation is the loop's (Schedule): a run's last optimiser step may gather fewer micro-batches
    accelerator = Accelerator(mixed_precision=resolve_precision(cfg.precision),
                              cpu=process.device.type == "cpu", kwargs_handlers=[ddp])
    kind = accelerator.distributed_type.value
    if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        # sharded students need sharded checkpoints and state dicts, which this engine does not write;
        # a frozen teacher is sharded by the recipe instead (train.teacher_sharding), under DDP launchers
        raise UserError(f"accelerate is configured for {kind}, which cascade-kd does not support for the student",
                        where="accelerate config", hint="launch with data parallelism (DDP): accelerate launch "
                        "--multi_gpu --num_processes N, or torchrun --nproc_per_node N; for a teacher too large for "
                        "one device, add train.teacher_sharding: fsdp to the recipe")
    return accelerator


_NUMBERED_LAYER = re.compile(r"\.(?:layer|layers)\.(\d+)\.")


def unfreeze_groups(module: nn.Module) -> list[list[nn.Parameter]]:
    """The trainable parameters in top-down order, for gradual unfreezing (XtremeDistil): [task head,
    pooler and loss projections], [layer L], ..., [layer 1], [embeddings]. Models without numbered
    layers (BiLSTM, recursive) keep their body in the first group."""
    top, layers, embeddings = [], {}, []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue  # frozen for the whole stage (e.g. freeze_embeddings)
        match = _NUMBERED_LAYER.search(name)
        if match:
            layers.setdefault(int(match.group(1)), []).append(p)
        elif "embeddings" in name:
            embeddings.append(p)
        else:
            top.append(p)
    return [g for g in [top, *(layers[k] for k in sorted(layers, reverse=True)), embeddings] if g]


def apply_unfreezing(groups: list[list[nn.Parameter]], epoch: int) -> int:
    """Epoch e (from 0) trains the top e+1 groups; returns how many are trainable."""
    for k, group in enumerate(groups):
        for p in group:
            p.requires_grad_(k <= epoch)
    return min(len(groups), epoch + 1)


def make_optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over trainable parameters only (frozen ones cost nothing); no decay on biases/norms."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(p)
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    # fused AdamW is several times faster than the per-tensor default on CPU as well as GPU
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


@dataclass
class Schedule:
    """The steps of a stage. `batch_size` is the global batch: the same batches, in the same order,
    on any number of processes, so the schedule does not depend on the process count. A step is one
    micro-batch; every `grad_accum` of them make an optimiser step, and the last optimiser step
    takes the micro-batches left (fewer when `grad_accum` does not divide them): a stage trains the
    epochs asked for, never more."""

    per_epoch: int  # batches per epoch
    total_steps: int  # micro-batches in all
    grad_accum: int
    unfreezing: GradualUnfreezing | None = None

    @classmethod
    def of(cls, cfg: TrainConfig, examples: int, module: nn.Module) -> Schedule:
        per_epoch = math.ceil(examples / cfg.batch_size)
        total_steps = max(1, math.ceil(cfg.epochs * per_epoch))
        unfreezing = GradualUnfreezing(module) if cfg.unfreeze == "gradual" else None
        return cls(per_epoch, total_steps, cfg.grad_accum, unfreezing)

    def lr_scheduler(self, optimizer, cfg: TrainConfig):
        """Linear warm-up and decay over the optimiser steps. It is not given to accelerate, which
        would step it once per process per step; it steps once per optimiser step, on every process."""
        from transformers import get_linear_schedule_with_warmup

        return get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * self.total_steps / self.grad_accum),
                                               math.ceil(self.total_steps / self.grad_accum))

    def begin_epoch(self, epoch: int) -> str | None:
        """Set which parameters train in `epoch` (gradual unfreezing); says so, if anything is scheduled."""
        if self.unfreezing is None:
            return None
        return f"epoch {epoch + 1} trains the top {self.unfreezing.at_epoch(epoch)} of {len(self.unfreezing.groups)} parameter groups"

    def is_optimiser_step(self, step: int) -> bool:
        """Whether `step` micro-batches end an optimiser step (checkpoints are written only there)."""
        return step % self.grad_accum == 0 or step == self.total_steps

    def accumulated(self, step: int) -> int:
        """How many micro-batches the optimiser step of micro-batch `step` (from 0) gathers: its
        gradient is their mean."""
        return min(self.grad_accum, self.total_steps - (step - step % self.grad_accum))


class GradualUnfreezing:
    """XtremeDistil's top-down schedule: epoch e (from 0) trains the top e+1 groups of
    `unfreeze_groups`; parameters frozen when it is built stay frozen."""

    def __init__(self, module: nn.Module):
        self.groups = unfreeze_groups(module)

    def drop_frozen(self) -> None:
        """Leave out parameters frozen since (e.g. those no loss reaches under DDP)."""
        self.groups = [g for g in ([p for p in group if p.requires_grad] for group in self.groups) if g]

    def at_epoch(self, epoch: int) -> int:
        return apply_unfreezing(self.groups, epoch)
