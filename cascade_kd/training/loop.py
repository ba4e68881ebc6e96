"""The training loop: one loop for every stage of every method.

A stage is a task (training/task.py: the student, the losses and the frozen side that feeds them),
its data (training/data.py: epochs, batches, dynamic masking, language sampling) and its train
settings (training/setup.py: accelerator, optimiser, schedule, gradual unfreezing). The loop runs
on accelerate's `Accelerator` (device placement, mixed precision, data parallelism); only the
task is prepared, so under DDP the frozen side is never wrapped and never synchronised. It
checkpoints and resumes exactly (training/state.py), selects the best dev weights and stops early.
Nothing in it depends on which losses, students or teachers a method uses.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import gather_object

from cascade_kd.config.schema import TrainConfig
from cascade_kd.errors import UserError
from cascade_kd.students.embedding_rows import merge_seen_rows, restrict_to_seen_rows
from cascade_kd.training.data import StageData
from cascade_kd.training.distributed import barrier, is_main
from cascade_kd.training.progress import StageMonitor, lines_taken, log_line, precision_name
from cascade_kd.training.setup import Schedule, make_accelerator, make_optimizer
from cascade_kd.training.state import (
    DamagedState,
    Progress,
    changing_tensors,
    frozen_parameters,
    has_state,
    load_state,
    restore,
    rng_state,
    save_state,
    update_static,
)
from cascade_kd.training.task import DistillationTask, share_scales, unreached_parameters
from cascade_kd.training.teacher import place_frozen


class TrainingError(UserError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclass
class TrainResult:
    best_score: float | None
    best_epoch: float | None
    history: list[dict]
    steps: int
    wall_time_s: float  # training time, evaluations excluded, summed over resumed segments
    tokens_per_s: float
    curve: list[dict] = field(default_factory=list)  # loss parts and lr against the step (progress.py)


def train(task: DistillationTask, data: StageData, cfg: TrainConfig, *, evaluate=None, desc: str = "train",
          state_dir: Path | None = None, monitor: StageMonitor | None = None) -> TrainResult:
    """Train `task.student` (and the projections its losses own) in place on `data`.

    If `evaluate` is given (a callable model -> dev score), the weights of the best evaluation are
    kept (selection on dev, never on test) and training stops early on `cfg.patience`. With
    `state_dir`, the full training state is checkpointed there (every `checkpoint_every` steps and
    after each evaluation) and an existing state is resumed from. With `cfg.embedding_rows: seen`,
    trainable word embeddings are trained only on the rows the training data uses
    (students/embedding_rows.py): the swap is undone when training ends, however it ends, so the
    student stays a plain model. `monitor` (progress.py) records the loss curve, prints the run's
    progress and feeds the trackers."""
    student = task.student
    restricted = restrict_to_seen_rows(student, [x.input_ids for x in data.examples]) if cfg.embedding_rows == "seen" else None
    if isinstance(restricted, tuple) and is_main():
        log_line(f"  {desc}: word embeddings: the {restricted[0]:,} rows the training data uses "
                 f"are trained, the other {restricted[1] - restricted[0]:,} keep their values (train.embedding_rows)")
    elif isinstance(restricted, str) and is_main():
        log_line(f"  {desc}: word embeddings: every row is trained: {restricted}")
    try:
        return _train(task, data, cfg, evaluate, desc, state_dir, monitor or StageMonitor(desc))
    finally:
        merge_seen_rows(student)


def _train(task: DistillationTask, data: StageData, cfg: TrainConfig, evaluate, desc: str, state_dir,
           monitor: StageMonitor) -> TrainResult:
    # parameters that get no gradient in some step (gradual unfreezing; a stage whose losses never
    # reach the head, as the logits depend on everything): DDP must look for them
    accelerator = make_accelerator(cfg, find_unused=cfg.unfreeze == "gradual" or not task.student_reads.logits)
    n_proc, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    say = (lambda message, bar=None: log_line(f"  {desc}: {message}", bar)) if main else (lambda message, bar=None: None)
    if cfg.batch_size < n_proc:
        raise UserError(f"batch_size {cfg.batch_size} is smaller than the {n_proc} processes: some would have no data",
                        where=desc, hint=f"use batch_size >= {n_proc} (it is the global batch, split between processes)")
    optimizer = make_optimizer(task, cfg)  # over every parameter the stage will train
    schedule = Schedule.of(cfg, len(data), task)
    scheduler = schedule.lr_scheduler(optimizer, cfg)
    device = accelerator.device
    if task.teacher is not None:
        _place_teacher(task, cfg, device, n_proc, say)
    if n_proc > 1:
        _freeze_unreached(task.to(device), data, cfg, schedule, device, say)
    task, optimizer = accelerator.prepare(task, optimizer)
    unwrapped = accelerator.unwrap_model(task)
    say(f"{n_proc} process(es), global batch {cfg.batch_size}"
        + (f" (about {cfg.batch_size // n_proc} per process)" if n_proc > 1 else "")
        + f" x {cfg.grad_accum} accumulated = {cfg.batch_size * cfg.grad_accum} examples per optimiser step, "
        f"precision {precision_name(accelerator.mixed_precision)}" + (" (auto)" if cfg.precision == "auto" else "")
        + f", {schedule.total_steps} steps")
    progress, best = _start(state_dir, unwrapped, optimizer, scheduler, schedule, accelerator, say)
    progress.stream = data.seed  # recorded with every checkpoint (cascade/stages.py reads it back)

    def checkpoint():  # called on every process
        # only at optimiser-step boundaries: gradients accumulated so far are not part of the state
        if state_dir is None or not schedule.is_optimiser_step(progress.step):
            return
        # each process draws its own dropout: every one's random state goes into the main one's checkpoint
        ranks = gather_object([rng_state()]) if n_proc > 1 else None
        if main:
            progress.scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
            save_state(state_dir, unwrapped, optimizer, scheduler, progress, best, ranks)

    saved_at = progress.step  # the step of the last checkpoint (or of the start)
    bar = _progress(schedule.total_steps, desc, disable=not main)
    bar.update(progress.step)
    monitor.start(progress, total_steps=schedule.total_steps, examples_per_step=cfg.batch_size,
                  steps_per_epoch=schedule.per_epoch, precision=precision_name(accelerator.mixed_precision),
                  live=not bar.disable, active=main, bar=bar)
    # an epoch whose last step is checkpointed before its evaluation (batch > 0) still needs that evaluation
    while (progress.step < schedule.total_steps or progress.batch > 0) and not progress.stopped:
        batches = data.epoch(progress.epoch, cfg.batch_size)
        unfrozen = schedule.begin_epoch(progress.epoch)  # gradual unfreezing: the parameters this epoch trains
        if unfrozen:
            update_static(progress, unwrapped, best)
            say(unfrozen, bar)
        task.train()
        segment_started = time.perf_counter()
        for position in range(progress.batch, len(batches)):
            if progress.step >= schedule.total_steps:
                break
            batch, members, real = data.batch(batches[position], position, progress.epoch, rank, n_proc, device)
            scales = share_scales(accelerator, unwrapped, batch, real) if n_proc > 1 else None
            optimiser_step = schedule.is_optimiser_step(progress.step + 1)  # this micro-batch completes one
            # gradients of the micro-batches before an optimiser step are only accumulated, not exchanged
            with contextlib.nullcontext() if optimiser_step else accelerator.no_sync(task):
                with accelerator.autocast():
                    losses = task(batch, members, progress.step, scales)
                value, tokens = _global_loss_and_tokens(accelerator, losses["loss"], batch, real)
                if not math.isfinite(value):  # every process sees the reduced value: all stop together
                    raise _non_finite(losses, progress, desc)
                accelerator.backward(losses["loss"] / schedule.accumulated(progress.step))
            if optimiser_step:
                accelerator.clip_grad_norm_(task.parameters(), cfg.max_grad_norm)
                optimizer.step()
                if not optimizer.step_was_skipped:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress.batch = position + 1
            progress.tokens += int(tokens)
            progress.running = 0.9 * progress.running + 0.1 * value if progress.step > 1 else value
            bar.update(1)
            bar.set_postfix(epoch=f"{progress.epoch + 1}/{math.ceil(cfg.epochs)}", loss=f"{progress.running:.4f}")
            monitor.step(progress, value, {k: v for k, v in losses.items() if k != "loss"}, scheduler.get_last_lr()[0])
            # the first optimiser-step boundary checkpoint_every micro-batches after the last save (with
            # grad_accum, a multiple of checkpoint_every alone may never be one: 200 with 3 gave 600)
            if (cfg.checkpoint_every and progress.step - saved_at >= cfg.checkpoint_every
                    and schedule.is_optimiser_step(progress.step)):
                progress.train_seconds += time.perf_counter() - segment_started
                segment_started = time.perf_counter()
                checkpoint()
                saved_at = progress.step
        progress.train_seconds += time.perf_counter() - segment_started
        progress.epoch += 1
        progress.batch = 0
        if evaluate is not None and (cfg.eval_every_epoch or progress.step >= schedule.total_steps):
            best = _evaluate(evaluate, unwrapped, progress, best, schedule, cfg, accelerator, say, bar)
            monitor.evaluated(progress, progress.history[-1]["dev"])
        checkpoint()
    bar.close()
    if best is not None:
        restore(unwrapped, best)
    accelerator.free_memory()
    seconds = progress.train_seconds
    return TrainResult(progress.best_score, progress.best_epoch, progress.history, progress.step, seconds,
                       progress.tokens / seconds if seconds > 0 else 0.0, progress.curve)


def _place_teacher(task: DistillationTask, cfg: TrainConfig, device, n_proc: int, say) -> None:
    """The frozen side on the device, or sharded between the processes (`train.teacher_sharding`)."""
    sharded = place_frozen(task.teacher, device, shard=cfg.teacher_sharding == "fsdp" and n_proc > 1)
    if sharded is not None:
        models, held, total = sharded
        say(f"teacher{'s' if models > 1 else ''} sharded between {n_proc} processes (FSDP): "
            f"{held:,} of {total:,} parameters held by each")
    elif cfg.teacher_sharding == "fsdp":
        say("teacher_sharding: fsdp has nothing to split on one process: the teacher is whole")


def _freeze_unreached(task: DistillationTask, data: StageData, cfg: TrainConfig, schedule: Schedule, device, say) -> None:
    """DDP waits for a gradient of every trainable parameter: those the stage's loss never reaches
    (the head of a representation-only stage, layers above the mapped ones) are frozen for the stage."""
    members = data.epoch(0, cfg.batch_size)[0]
    batch, _, _ = data.batch(members, 0, 0, device=device)
    unreached = unreached_parameters(task, batch, members)
    for name, p in task.named_parameters():
        if name in unreached:
            p.requires_grad_(False)
    if schedule.unfreezing is not None:
        schedule.unfreezing.drop_frozen()
    if unreached:
        say(f"{len(unreached)} parameter tensor(s) get no gradient from this stage's losses "
            f"and stay frozen (e.g. {unreached[0]})")


def _start(state_dir, module, optimizer, scheduler, schedule: Schedule, accelerator, say) -> tuple[Progress, dict | None]:
    """A fresh stage, or an interrupted one restored to exactly where it stopped."""
    n_proc, precision = accelerator.num_processes, precision_name(accelerator.mixed_precision)
    progress, best, resumed = Progress(), None, False
    if has_state(state_dir):
        try:
            progress, best = load_state(state_dir, module, optimizer, scheduler, rank=accelerator.process_index)
            resumed = True
        except DamagedState as err:  # nothing was restored: the stage starts afresh
            barrier()  # every process has read it before it goes
            say(f"WARNING: the training state is damaged ({err}): the stage starts again")
            if is_main():
                shutil.rmtree(state_dir, ignore_errors=True)  # RUN_DIR/state/<stage>: the run's own working files
    if resumed:
        epochs = math.ceil(schedule.total_steps / schedule.per_epoch)  # epochs begun; cfg.epochs may be a fraction
        epoch = min(progress.epoch + 1, epochs)  # a finished stage's counter is past its last epoch
        say(f"resuming at step {progress.step}/{schedule.total_steps} (epoch {epoch} of {epochs})")
        if progress.processes != n_proc:
            # batches are global, so the data order and every optimiser step carry over; each
            # process's random stream (dropout) was saved for the processes that wrote the state
            say(f"this state was written by {progress.processes} process(es), resumed on {n_proc}: "
                "same batches and steps; dropout draws differ from an uninterrupted run")
        if progress.precision is not None and progress.precision != precision:
            say(f"WARNING: this state was trained in {progress.precision} and goes on in {precision} (`precision: "
                "auto` chooses by machine): the steps from here differ from an uninterrupted run")
        if progress.scaler and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(progress.scaler)  # fp16's loss scale goes on where it was
    else:
        progress.static = frozen_parameters(module)  # written once per stage, see training/state.py
    progress.processes, progress.precision = n_proc, precision
    return progress, best


def _global_loss_and_tokens(accelerator, loss: torch.Tensor, batch: dict, real: bool) -> tuple[float, float]:
    """The global batch's loss and token count (what one process would see), on every process."""
    stats = torch.stack([loss.detach().float(), batch["attention_mask"].sum().float() * real])
    if accelerator.num_processes > 1:
        stats = accelerator.reduce(stats, reduction="sum") / torch.tensor([accelerator.num_processes, 1.0],
                                                                         device=stats.device)
    value, tokens = stats.tolist()
    return value, tokens


def _non_finite(losses: dict, progress: Progress, desc: str) -> TrainingError:
    bad = [name for name, value in losses.items() if name != "loss" and not torch.isfinite(value)]
    return TrainingError(f"non-finite loss at step {progress.step + 1} (epoch {progress.epoch + 1}) "
                         f"in term(s) {', '.join(bad) or 'total'}; the last checkpoint is kept",
                         where=desc, hint="lower lr, use precision: fp32, or check the data")


def _evaluate(evaluate, module, progress: Progress, best, schedule: Schedule, cfg: TrainConfig, accelerator, say, bar):
    """Score the student on dev after an epoch; keep its weights if they are the best so far, and
    count towards early stopping otherwise. Returns the best weights."""
    score = evaluate(module.student) if accelerator.is_main_process else None
    if accelerator.num_processes > 1:  # the main process's score decides for all: the same checkpoint, the same stop
        from accelerate.utils import broadcast_object_list

        score = broadcast_object_list([score])[0]
    frac_epoch = round(progress.step / schedule.per_epoch, 3)
    progress.history.append({"epoch": frac_epoch, "step": progress.step, "loss": progress.running, "dev": score})
    eta = progress.train_seconds / progress.step * (schedule.total_steps - progress.step)
    say(f"epoch {frac_epoch:g}/{cfg.epochs:g} step {progress.step}/{schedule.total_steps} loss {progress.running:.4f} "
        f"dev {score:.4f} ({progress.train_seconds:.0f}s training, ETA {eta:.0f}s)", bar)
    if progress.best_score is None or score > progress.best_score:
        # the student and its projections together: a stage's saved projections match its student
        best = changing_tensors(module, progress)
        progress.best_score, progress.best_epoch, progress.best_step, progress.stale = score, frac_epoch, progress.step, 0
    else:
        progress.stale += 1
        progress.stopped = bool(cfg.patience and progress.stale >= cfg.patience)
    return best


def _progress(total: int, desc: str, disable: bool = False):
    from tqdm.auto import tqdm

    # a live bar on a terminal; in logs (CI, nohup) only the per-evaluation lines are printed
    quiet = disable or os.environ.get("CASCADE_KD_QUIET") == "1" or not sys.stderr.isatty() or lines_taken()
    return tqdm(total=total, desc=desc, unit="step", disable=quiet, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)


