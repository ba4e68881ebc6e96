"""The training engine: one loop for every stage of every method.

A stage is (student, optional frozen teacher, weighted loss terms, train settings). Fine-tuning
the teacher is a stage with only the hard-label loss and no teacher; a CAMeMBERT/LightMBERT
distillation stage is the same loop with hidden/attention/logit terms. The loop runs on
accelerate's `Accelerator` (device placement, mixed precision, gradient accumulation). Only the
`DistillationModule` (student + the projections its losses own) is prepared, so under DDP the
frozen teacher is never wrapped and never synchronised: it is moved to the device and run under
`no_grad`.

Dense guidance (DGKD): with `guides` (the teacher and every earlier student of the chain, the
immediate teacher last), the logit terms are computed against each guide kept in the batch and
reduced by sum or mean; `kept_guides` says which are kept, a pure function of (seed, step), so a
resumed stage makes the same choices. Guides are frozen and run under `no_grad` like the teacher.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cascade_kd.data.encode import IGNORE, UNLABELLED, Encoded, bucketed_batches, collate
from cascade_kd.training.distributed import is_main, process_state
from cascade_kd.students.embedding_rows import merge_seen_rows, restrict_to_seen_rows
from cascade_kd.errors import UserError
from cascade_kd.losses.layer_maps import layer_pairs
from cascade_kd.students.features import Features, extract_features
from cascade_kd.losses.functions import LOSSES
from cascade_kd.config.schema import LossConfig, TrainConfig
from cascade_kd.training.sharding import local_parameter_count, shard_frozen
from cascade_kd.training.state import (
    Progress,
    changing_tensors,
    frozen_parameters,
    DamagedState,
    has_state,
    load_state,
    restore,
    save_state,
    update_static,
)

LOGIT_LOSSES = ("kl", "logit_mse")
HIDDEN_LOSSES = ("hidden_mse", "hidden_cos")
ATTENTION_LOSSES = ("attention_mse", "attention_kl")
RELATION_LOSSES = ("relation_kl",)  # query/key/value states, captured by hooks (no eager attention needed)


class TrainingError(UserError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclass
class LossTerm:
    """One weighted loss of a stage, with the layer pairs it compares (teacher, student)."""

    name: str
    weight: float
    module: nn.Module
    pairs: list[tuple[int, int]] = field(default_factory=list)
    positions: str = "labelled"


def build_loss_terms(
    losses: dict[str, LossConfig], teacher_config, student_config, *, where: str
) -> tuple[list[LossTerm], nn.ModuleDict]:
    """Instantiate the stage's losses and the projections they need (owned by the student side).

    A hidden-state loss between a student of width d_S and a teacher of width d_T goes through a
    trainable Linear(d_S, d_T), one per student layer of the map.
    """
    terms, projections = [], nn.ModuleDict()
    for name, cfg in losses.items():
        if cfg.weight == 0:
            continue
        if name == "kl":
            module = LOSSES[name](temperature=cfg.temperature)
        elif name in ATTENTION_LOSSES:
            module = LOSSES[name](head_reduction=cfg.head_reduction)
            t_heads, s_heads = teacher_config.num_attention_heads, student_config.num_attention_heads
            if cfg.head_reduction == "none" and t_heads != s_heads:
                raise UserError(
                    f"{name} compares attention maps head by head, but the teacher has {t_heads} heads "
                    f"and the student {s_heads}",
                    where=f"{where}.losses.{name}",
                    hint="set head_reduction: mean to compare head-averaged maps",
                )
        elif name in RELATION_LOSSES:
            heads = cfg.relation_heads or teacher_config.num_attention_heads
            for who, config in (("teacher", teacher_config), ("student", student_config)):
                if config.hidden_size % heads:
                    raise UserError(
                        f"relation_kl splits each width into {heads} relation heads, but the {who}'s width "
                        f"{config.hidden_size} is not a multiple of {heads}", where=f"{where}.losses.{name}.relation_heads",
                        hint="set relation_heads to a common divisor of the teacher's and the student's widths")
            module = LOSSES[name](relation_heads=heads, relations=tuple(cfg.relations))
        else:
            module = LOSSES[name]()
        pairs = []
        if name in HIDDEN_LOSSES or name in ATTENTION_LOSSES or name in RELATION_LOSSES:
            feature = "hidden" if name in HIDDEN_LOSSES else "attention"  # relations: layers 1..L, as attention
            pairs = layer_pairs(
                cfg.layer_map,
                teacher_config.num_hidden_layers,
                student_config.num_hidden_layers,
                feature=feature,
                where=f"{where}.losses.{name}.layer_map",
            )
        if name in HIDDEN_LOSSES and teacher_config.hidden_size != student_config.hidden_size:
            for _, s in pairs:
                key = f"{name}_{s}"
                projections[key] = nn.Linear(student_config.hidden_size, teacher_config.hidden_size)
        terms.append(LossTerm(name, cfg.weight, module, pairs, cfg.positions))
    return terms, projections


class DistillationModule(nn.Module):
    """The trainable side of a stage: the student plus the projections its losses own.

    Keeping projections here (not in the loss, not in the teacher) means the optimiser, DDP and
    the stage checkpoint all cover them with no special case.
    """

    def __init__(self, student: nn.Module, projections: nn.ModuleDict):
        super().__init__()
        self.student = student
        self.projections = projections

    def forward(self, batch: dict, hidden: bool, attentions: bool, logits=True, qkv_layers=()) -> tuple[Features, dict]:
        """The student's features, and each projection applied to the hidden state it projects
        (keyed like the projections): inside forward, so DDP sees every trainable use. `logits` and
        `qkv_layers` as in `extract_features`."""
        feats = extract_features(self.student, batch, hidden=hidden, attentions=attentions, logits=logits,
                                 qkv_layers=qkv_layers)
        projected = {key: proj(feats.hidden(int(key.rsplit("_", 1)[1]))) for key, proj in self.projections.items()}
        return feats, projected


def kept_guides(n: int, drop: int, seed: int, step: int) -> list[int]:
    """The indices (ascending) of the guides kept at `step`: exactly `drop` of the `n` are dropped,
    uniformly at random, by a private generator seeded from (seed, step), never the global RNGs,
    so the choice is reproducible and a resumed run makes the same ones."""
    if not 0 <= drop < n:
        raise ValueError(f"cannot drop {drop} of {n} guides: at least one must be kept")
    if drop == 0:
        return list(range(n))
    rng = random.Random(f"dgkd:{seed}:{step}")  # str seeds hash with sha512: stable across processes
    return sorted(rng.sample(range(n), n - drop))


def relation_layers(terms: list[LossTerm]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The (teacher, student) layers whose query/key/value states the relation terms read."""
    pairs = [p for t in terms if t.name in RELATION_LOSSES for p in t.pairs]
    return tuple(sorted({t for t, _ in pairs})), tuple(sorted({s for _, s in pairs}))


def logit_positions(terms: list[LossTerm], batch: dict, masked_lm: bool):
    """What `extract_features` computes logits for: everything, nothing (no term reads them), or,
    for masked-LM models, only the masked positions (labels != IGNORE), as [masked, vocab]."""
    if not any(t.name == "ce" or t.name in LOGIT_LOSSES for t in terms):
        return False
    return batch["labels"] != IGNORE if masked_lm else True


def _stage_loss(terms: list[LossTerm], projected: dict, s: Features, t: Features | None, batch,
                guides: list[Features] | None = None, guide_reduction: str = "sum", scales=None,
                masked_lm: bool = False):
    """Weighted sum of the terms; returns (total, {name: value}) for logging and finiteness checks.

    Logit terms compare with each of `guides` (default: the teacher `t` alone) and are reduced by
    `guide_reduction` ("sum" as in DGKD, or "mean"); ce and the hidden/attention terms are unchanged.
    `projected` holds the student's projected hidden states (DistillationModule.forward), used by
    hidden-state terms where a projection exists. `scales` (one per term, multi-process only) turns
    this process's means into its share of the global batch's means, see `share_scales`.
    With `masked_lm`, logits are [masked positions, vocab] (see `logit_positions`) and compared
    with the labels of those positions.
    """
    projected = projected or {}
    labels = batch["labels"]
    if masked_lm:
        labels = labels[labels != IGNORE]
    token_task = s.logits is not None and s.logits.dim() == 3
    parts = {}
    total = torch.zeros((), dtype=torch.float32, device=labels.device)
    for i, term in enumerate(terms):
        if term.name == "ce":  # unlabelled (transfer) positions have no gold label
            value = term.module(s.logits, labels.masked_fill(labels == UNLABELLED, IGNORE))
        elif term.name in LOGIT_LOSSES:
            mask = None
            if token_task:
                mask = labels != IGNORE if term.positions == "labelled" else s.attention_mask
            values = torch.stack([term.module(s.logits, g.logits, mask) for g in (guides or [t])])
            value = values.sum() if guide_reduction == "sum" else values.mean()
        else:
            values = []
            for t_layer, s_layer in term.pairs:
                if term.name in HIDDEN_LOSSES:
                    key = f"{term.name}_{s_layer}"
                    student_h = projected[key] if key in projected else s.hidden(s_layer)
                    values.append(term.module(student_h, t.hidden(t_layer), s.attention_mask))
                elif term.name in RELATION_LOSSES:
                    values.append(term.module(s.relation_states(s_layer), t.relation_states(t_layer), s.attention_mask))
                else:
                    values.append(term.module(s.attention(s_layer), t.attention(t_layer), s.attention_mask))
            value = torch.stack(values).mean()  # mean over the map's pairs
        parts[term.name] = value
        total = total + term.weight * value * (1.0 if scales is None else scales[i])
    return total, parts


def term_units(term: LossTerm, batch: dict, token_task: bool) -> torch.Tensor:
    """How many items the term's loss module averages over in `batch` (its denominator, see losses.py)."""
    mask, labels = batch["attention_mask"], batch["labels"]
    if not token_task and term.name in LOGIT_LOSSES:
        return torch.tensor(labels.shape[0], device=mask.device)  # one item per sequence
    if term.name == "ce":  # gold labels only (not unlabelled transfer examples or positions)
        return ((labels != IGNORE) & (labels != UNLABELLED)).sum()
    if term.name in LOGIT_LOSSES and term.positions == "labelled":
        return (labels != IGNORE).sum()
    if term.name == "attention_mse":
        return mask.sum(dim=1).pow(2).sum()  # (query, key) pairs of real tokens
    return mask.sum()  # real tokens: logit terms on all positions, hidden states, attention rows


def batch_share(members: list[int], index: int, count: int) -> tuple[list[int], bool]:
    """This process's part of a global batch (every count-th member), and whether it is real.

    A batch smaller than the number of processes leaves some with nothing; they run the batch's
    first member with weight 0 instead, as every process must take part in the gradient exchange.
    """
    share = members[index::count]
    return (share, True) if share else (members[:1], False)


def share_scales(accelerator, terms: list[LossTerm], batch: dict, token_task: bool, real: bool) -> list[torch.Tensor]:
    """Per-term factors that make data-parallel training compute the one-process loss exactly.

    Each term is a mean over items (tokens, sequences, attention pairs). DDP averages the N
    processes' gradients, so process r scales its mean by N * units_r / units_global: the
    average over processes is then the mean over the whole global batch, as on one process,
    whatever the split of tokens between processes.
    """
    local = torch.stack([term_units(t, batch, token_task) for t in terms]).float()
    if not real:
        local = torch.zeros_like(local)
    total = accelerator.reduce(local.clone(), reduction="sum")
    return list(accelerator.num_processes * local / total.clamp(min=1))


def unreached_parameters(module: DistillationModule, terms: list[LossTerm], teacher, batch: dict,
                         need_hidden: bool, need_attn: bool, masked_lm: bool = False) -> list[str]:
    """Names of trainable parameters that get no gradient from the stage's loss (probed on one
    batch, in eval mode so no random numbers are drawn)."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    was_training = module.training
    module.eval()
    try:
        logits = logit_positions(terms, batch, masked_lm)
        t_qkv, s_qkv = relation_layers(terms)
        s_feats, projected = module(batch, need_hidden, need_attn, logits, s_qkv)
        t_feats = None
        if any(t.name != "ce" for t in terms):
            with torch.no_grad():
                t_feats = extract_features(teacher, batch, hidden=need_hidden, attentions=need_attn, logits=logits,
                                           qkv_layers=t_qkv)
        loss, _ = _stage_loss(terms, projected, s_feats, t_feats, batch, masked_lm=masked_lm)
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    finally:
        module.train(was_training)
    return [n for (n, _), g in zip(named, grads) if g is None]


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
    accelerator = Accelerator(mixed_precision=resolve_precision(cfg.precision), gradient_accumulation_steps=cfg.grad_accum,
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
class TrainResult:
    best_score: float | None
    best_epoch: float | None
    history: list[dict]
    steps: int
    wall_time_s: float  # training time, evaluations excluded, summed over resumed segments
    tokens_per_s: float


def _progress(total: int, desc: str, disable: bool = False):
    from tqdm.auto import tqdm

    # a live bar on a terminal; in logs (CI, nohup) only the per-evaluation lines are printed
    quiet = disable or os.environ.get("CASCADE_KD_QUIET") == "1" or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="step", disable=quiet, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)


def _log(bar, message: str) -> None:
    if os.environ.get("CASCADE_KD_QUIET") != "1":
        from tqdm.auto import tqdm

        (bar.write if bar is not None else tqdm.write)(message, file=sys.stdout)


def train(student: nn.Module, train_data: list[Encoded], cfg: TrainConfig, **kwargs) -> TrainResult:
    """Train `student` in place (see `_train`). With `cfg.embedding_rows: seen`, trainable word
    embeddings are trained only on the rows the training data uses (cascade_kd/embedding_rows.py):
    the swap is undone when training ends, however it ends, so the student stays a plain model."""
    restricted = restrict_to_seen_rows(student, [x.input_ids for x in train_data]) if cfg.embedding_rows == "seen" else None
    if isinstance(restricted, tuple) and is_main():
        _log(None, f"  {kwargs.get('desc', 'train')}: word embeddings: the {restricted[0]:,} rows the training data uses "
                   f"are trained, the other {restricted[1] - restricted[0]:,} keep their values (train.embedding_rows)")
    elif isinstance(restricted, str) and is_main():
        _log(None, f"  {kwargs.get('desc', 'train')}: word embeddings: every row is trained: {restricted}")
    try:
        return _train(student, train_data, cfg, **kwargs)
    finally:
        merge_seen_rows(student)


def _train(
    student: nn.Module,
    train_data: list[Encoded],
    cfg: TrainConfig,
    *,
    terms: list[LossTerm],
    projections: nn.ModuleDict | None = None,
    teacher: nn.Module | None = None,
    guides: list[nn.Module] | None = None,
    drop_guides: int = 0,
    guide_reduction: str = "sum",
    evaluate=None,
    pad_id: int = 0,
    seed: int = 0,
    desc: str = "train",
    state_dir: Path | None = None,
    teacher_cache=None,
    masked_lm: bool = False,
    batch_transform=None,
    epoch_draw=None,
) -> TrainResult:
    """Train `student` in place; if `evaluate` is given (a callable model -> dev score), keep the
    weights of the best evaluation (selection on dev, never on test) and stop early on `patience`.
    With `state_dir`, the full training state is checkpointed there (every `checkpoint_every`
    steps and after each evaluation) and an existing state is resumed from.
    With `guides` (dense guidance, DGKD: the chain's larger models, `teacher` among them, by default
    the last), the logit terms use every guide kept in the batch (`drop_guides` dropped per batch,
    see `kept_guides`), combined by `guide_reduction`; hidden/attention terms use `teacher` only.
    With `teacher_cache` (a TeacherCache of `teacher` on `train_data`), the teacher's features are
    read from disk instead of computed; other guides still run.
    With `masked_lm`, logits (and ce, kl, logit_mse) are computed at the masked positions only.
    `batch_transform(batch, members, epoch, slots)` changes a collated batch (dynamic masking);
    `slots` name each member's place in the epoch, the same on any number of processes;
    `epoch_draw(epoch)` gives the example indices of an epoch (language sampling; default: each once).
    Both must be pure functions of their arguments, so that resumed and multi-process runs match."""
    if guides:
        teacher = guides[-1] if teacher is None else teacher
        if not any(g is teacher for g in guides):
            raise ValueError("the teacher must be one of the guides")
        kept_guides(len(guides), drop_guides, seed, 0)  # validates drop_guides
    reaches_all = any(t.name == "ce" or t.name in LOGIT_LOSSES for t in terms)  # the logits depend on everything
    accelerator = make_accelerator(cfg, find_unused=cfg.unfreeze == "gradual" or not reaches_all)
    n_proc, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if cfg.batch_size < n_proc:
        raise UserError(f"batch_size {cfg.batch_size} is smaller than the {n_proc} processes: some would have no data",
                        where=desc, hint=f"use batch_size >= {n_proc} (it is the global batch, split between processes)")
    module = DistillationModule(student, projections or nn.ModuleDict())
    optimizer = make_optimizer(module, cfg)  # over every parameter the stage will train
    groups = unfreeze_groups(module) if cfg.unfreeze == "gradual" else None
    lengths = [len(x) for x in train_data]
    # batch_size is the global batch: the same batches, in the same order, on any number of processes,
    # each split between the processes (see batch_share), so steps, schedule and checkpoints match
    per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    # whole optimiser steps: a trailing partial accumulation would never reach the optimiser
    total_steps = max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum)) * cfg.grad_accum
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * total_steps / cfg.grad_accum), math.ceil(total_steps / cfg.grad_accum)
    )
    device = accelerator.device
    needs_teacher = any(t.name != "ce" for t in terms)
    need_hidden = any(t.name in HIDDEN_LOSSES for t in terms)
    need_attn = any(t.name in ATTENTION_LOSSES for t in terms)
    t_qkv, s_qkv = relation_layers(terms)
    if needs_teacher:
        if teacher is None:
            raise ValueError("distillation losses need a teacher")
        frozen = guides or [teacher]
        if cfg.teacher_sharding == "fsdp" and n_proc > 1:
            if teacher_cache is not None:
                raise ValueError("a sharded teacher runs on every process at once; the cache runs it per process")
            # a sharded copy per frozen model (cascade_kd/sharding.py); the originals stay where they are
            sharded = {id(m): shard_frozen(m.eval().requires_grad_(False), device) for m in frozen}
            teacher = sharded[id(teacher)]
            guides = [sharded[id(g)] for g in guides] if guides else guides
            if main:
                held = sum(local_parameter_count(m) for m in sharded.values())
                total = sum(sum(p.numel() for p in m.parameters()) for m in frozen)
                _log(None, f"  {desc}: teacher{'s' if len(frozen) > 1 else ''} sharded between {n_proc} processes "
                           f"(FSDP): {held:,} of {total:,} parameters held by each")
        else:
            if cfg.teacher_sharding == "fsdp" and main:
                _log(None, f"  {desc}: teacher_sharding: fsdp has nothing to split on one process: the teacher is whole")
            for model in frozen:
                model.to(device).eval().requires_grad_(False)  # frozen, outside DDP
    if n_proc > 1:
        # DDP waits for a gradient of every trainable parameter: those the stage's loss never reaches
        # (the head of a representation-only stage, layers above the mapped ones) are frozen for the stage
        members = bucketed_batches(lengths, cfg.batch_size, seed=seed, epoch=0)[0]
        probe = collate([train_data[i] for i in members], pad_id)
        probe = batch_transform(probe, members, 0, [f"0:{j}" for j in range(len(members))]) if batch_transform else probe
        unreached = unreached_parameters(module.to(device), terms, teacher, {k: v.to(device) for k, v in probe.items()},
                                         need_hidden, need_attn, masked_lm)
        for name, p in module.named_parameters():
            if name in unreached:
                p.requires_grad_(False)
        if groups is not None:
            groups = [g for g in ([p for p in group if p.requires_grad] for group in groups) if g]
        if main and unreached:
            _log(None, f"  {desc}: {len(unreached)} parameter tensor(s) get no gradient from this stage's losses "
                       f"and stay frozen (e.g. {unreached[0]})")
    # the scheduler is not prepared: accelerate would step it once per process per step, for
    # per-process batches; ours are global, so it steps once per optimiser step, on every process
    module, optimizer = accelerator.prepare(module, optimizer)

    unwrapped = accelerator.unwrap_model(module)
    progress, best_state = Progress(), None
    if main:
        _log(None, f"  {desc}: {n_proc} process(es), global batch {cfg.batch_size}"
                   + (f" (about {cfg.batch_size // n_proc} per process)" if n_proc > 1 else "")
                   + f" x {cfg.grad_accum} accumulated = {cfg.batch_size * cfg.grad_accum} examples per optimiser step, "
                   f"precision {cfg.precision if cfg.precision != 'auto' else accelerator.mixed_precision}, {total_steps} steps")
    resumed = False
    if has_state(state_dir):  # an interrupted stage: continue exactly where it stopped
        try:
            progress, best_state = load_state(state_dir, unwrapped, optimizer, scheduler)
            resumed = True
        except DamagedState as err:  # nothing was restored: the stage starts afresh
            accelerator.wait_for_everyone()  # every process has read it before it goes
            if main:
                _log(None, f"  {desc}: WARNING: the training state is damaged ({err}): the stage starts again")
                shutil.rmtree(state_dir, ignore_errors=True)  # RUN_DIR/state/<stage>: the run's own working files
    if resumed:
        if main:
            _log(None, f"  {desc}: resuming at step {progress.step}/{total_steps} (epoch {progress.epoch + 1})")
            if progress.processes != n_proc:
                # batches are global, so the data order and every optimiser step carry over; the
                # random streams of processes other than the main one (dropout) were not saved
                _log(None, f"  {desc}: this state was written by {progress.processes} process(es), resumed on {n_proc}: "
                           "same batches and steps; dropout draws differ from an uninterrupted run")
    else:
        progress.static = frozen_parameters(unwrapped)  # written once per stage, see training_state.py
    progress.processes = n_proc

    def checkpoint():
        # only at optimiser-step boundaries: gradients accumulated so far are not part of the state
        if state_dir is not None and main and progress.step % cfg.grad_accum == 0:
            save_state(state_dir, unwrapped, optimizer, scheduler, progress, best_state)

    token_task = None
    bar = _progress(total_steps, desc, disable=not main)
    bar.update(progress.step)
    while progress.step < total_steps and not progress.stopped:
        batches = bucketed_batches(lengths, cfg.batch_size, seed=seed, epoch=progress.epoch,
                                   indices=epoch_draw(progress.epoch) if epoch_draw is not None else None)
        if groups is not None:
            trainable = apply_unfreezing(groups, progress.epoch)
            update_static(progress, unwrapped, best_state)
            if main:
                _log(bar, f"  {desc}: epoch {progress.epoch + 1} trains the top {trainable} of {len(groups)} parameter groups")
        module.train()
        segment_started = time.perf_counter()
        for position in range(progress.batch, len(batches)):
            if progress.step >= total_steps:
                break
            members, real = batch_share(batches[position], rank, n_proc)
            batch = collate([train_data[i] for i in members], pad_id)
            if batch_transform is not None:  # slots: (batch, place in the global batch), split like the members
                slots = [f"{position}:{j}" for j in batch_share(list(range(len(batches[position]))), rank, n_proc)[0]]
                batch = batch_transform(batch, members, progress.epoch, slots)
            batch = {k: v.to(device) for k, v in batch.items()}
            token_task = batch["labels"].dim() == 2  # masked-LM labels too: their units are masked positions
            logits = logit_positions(terms, batch, masked_lm)
            scales = share_scales(accelerator, terms, batch, token_task, real) if n_proc > 1 else None
            with accelerator.accumulate(module):
                with accelerator.autocast():
                    s_feats, projected = module(batch, need_hidden, need_attn, logits, s_qkv)
                    t_feats, g_feats = None, None
                    kept = [guides[k] for k in kept_guides(len(guides), drop_guides, seed, progress.step)] if guides else None
                    with torch.no_grad():
                        # the teacher runs unless dense guidance dropped it and no hidden/attention term needs it
                        if needs_teacher and (need_hidden or need_attn or t_qkv or kept is None or any(g is teacher for g in kept)):
                            t_feats = (teacher_cache.features(members, batch["attention_mask"]) if teacher_cache is not None
                                       else extract_features(teacher, batch, hidden=need_hidden, attentions=need_attn,
                                                             logits=logits, qkv_layers=t_qkv))
                        if kept is not None:  # the other guides: logits only
                            g_feats = [t_feats if g is teacher else extract_features(g, batch, hidden=False, attentions=False,
                                                                                     logits=logits)
                                       for g in kept]
                    loss, parts = _stage_loss(terms, projected, s_feats, t_feats, batch, g_feats, guide_reduction, scales,
                                              masked_lm)
                # the global batch's loss and token count (what one process would see), on every process
                stats = torch.stack([loss.detach().float(), batch["attention_mask"].sum().float() * real])
                if n_proc > 1:
                    stats = accelerator.reduce(stats, reduction="sum") / torch.tensor([n_proc, 1.0], device=device)
                value, tokens = stats.tolist()
                if not math.isfinite(value):  # every process sees the reduced value: all stop together
                    bad = [n for n, v in parts.items() if not torch.isfinite(v)]
                    raise TrainingError(
                        f"non-finite loss at step {progress.step + 1} (epoch {progress.epoch + 1}) "
                        f"in term(s) {', '.join(bad) or 'total'}; the last checkpoint is kept",
                        where=desc,
                        hint="lower lr, use precision: fp32, or check the data",
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients and not optimizer.step_was_skipped:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress.batch = position + 1
            progress.tokens += int(tokens)
            progress.running = 0.9 * progress.running + 0.1 * value if progress.step > 1 else value
            bar.update(1)
            bar.set_postfix(epoch=f"{progress.epoch + 1}/{math.ceil(cfg.epochs)}", loss=f"{progress.running:.4f}")
            if cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0 and progress.step % cfg.grad_accum == 0:
                progress.train_seconds += time.perf_counter() - segment_started
                segment_started = time.perf_counter()
                checkpoint()
        progress.train_seconds += time.perf_counter() - segment_started
        progress.epoch += 1
        progress.batch = 0
        if evaluate is not None and (cfg.eval_every_epoch or progress.step >= total_steps):
            score = evaluate(unwrapped.student) if main else None
            if n_proc > 1:  # the main process's score decides for all: the same checkpoint, the same stop
                from accelerate.utils import broadcast_object_list

                score = broadcast_object_list([score])[0]
            frac_epoch = round(progress.step / per_epoch, 3)
            progress.history.append({"epoch": frac_epoch, "step": progress.step, "loss": progress.running, "dev": score})
            eta = progress.train_seconds / progress.step * (total_steps - progress.step)
            if main:
                _log(bar, f"  {desc}: epoch {frac_epoch:g}/{cfg.epochs:g} step {progress.step}/{total_steps} "
                          f"loss {progress.running:.4f} dev {score:.4f} ({progress.train_seconds:.0f}s training, ETA {eta:.0f}s)")
            if progress.best_score is None or score > progress.best_score:
                # the student and its projections together: a stage's saved projections match its student
                best_state = changing_tensors(unwrapped, progress)
                progress.best_score, progress.best_epoch, progress.best_step, progress.stale = score, frac_epoch, progress.step, 0
            else:
                progress.stale += 1
                progress.stopped = bool(cfg.patience and progress.stale >= cfg.patience)
        checkpoint()
    bar.close()
    if best_state is not None:
        restore(unwrapped, best_state)
    accelerator.free_memory()
    seconds = progress.train_seconds
    return TrainResult(progress.best_score, progress.best_epoch, progress.history, progress.step, seconds,
                       progress.tokens / seconds if seconds > 0 else 0.0)
