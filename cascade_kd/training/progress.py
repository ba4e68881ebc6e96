"""Progress of one trained model and of the whole run, the training curves, and the trackers.

The training loop calls a `StageMonitor` at three points: `start` (before the first step),
`step` (after each step) and `evaluated` (after each dev evaluation). The monitor
- records the curve: every loss part, the total and the learning rate, averaged over windows of
  steps (about `CURVE_POINTS` points per model), into `Progress.curve` (saved with the training
  state, so a resumed model keeps the points it had; the window a resume cuts short is averaged over
  the steps it had after the resume), plus the dev scores the loop keeps in `Progress.history`;
- sends the same values to the trackers of `train.report_to` (trackers.py);
- prints the run's position ("model 2 of 4") and an estimate of the time left for the whole run
  when a model starts, and, when the output is not a terminal (a log file, a pipe, CI) and the live
  bar is therefore off, a progress line every `CASCADE_KD_PROGRESS_SECONDS` seconds (default 60).

The run's estimate: the work left is, per model, its examples times its epochs (`RunProgress.plan`),
less what is done; the current model's remainder goes at its own measured speed, the later models'
work at the speed measured over the run so far (training and evaluation time together). It is an
estimate: later models may be faster or slower per example than those measured, and early stopping
(`patience`) ends a model sooner. A run that is one of a set (the seeds of `run --seeds`) shares a
`RunSet` with the others: the estimate then covers the runs of the set still to come (each as much
work as this one: the same recipe with another seed) at the speed measured over the whole set.

Multi-process runs: only the main process prints and logs; a loss part is the main process's value
on its share of the batch (the total is the global batch's).
"""

from __future__ import annotations

import contextvars
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

CURVE_POINTS = 200
HEARTBEAT_SECONDS = 60.0


def print_line(message: str) -> None:
    """The command line's `say`: a line on stdout, flushed (a log read through a pipe stays current)."""
    print(message, flush=True)


# Where the training loop's own lines go (epochs, progress, embedding rows): None prints them above
# the live bar; a run given another `say` (a logger, a no-op) gets them there instead, and no bar.
_LINES = contextvars.ContextVar("cascade_kd_training_lines", default=None)


@contextmanager
def training_lines_to(say):
    """Inside, the training lines go to `say`, unless it prints to the terminal (print, print_line):
    then they are printed above the live bar, as the command line shows them."""
    token = _LINES.set(None if say in (print, print_line) else say)
    try:
        yield
    finally:
        _LINES.reset(token)


def lines_taken() -> bool:
    """A `say` other than the terminal's takes the training lines: no live bar is drawn."""
    return _LINES.get() is not None


def log_line(message: str, bar=None) -> None:
    """Give a training line to the run's `say` (training_lines_to), else print it above the live bar
    (if any); nothing with CASCADE_KD_QUIET=1."""
    if os.environ.get("CASCADE_KD_QUIET") == "1":
        return
    if _LINES.get() is not None:
        _LINES.get()(message)
        return
    from tqdm.auto import tqdm

    (bar.write if bar is not None else tqdm.write)(message, file=sys.stdout)


def heartbeat_seconds() -> float:
    value = os.environ.get("CASCADE_KD_PROGRESS_SECONDS")
    try:
        return max(0.0, float(value)) if value else HEARTBEAT_SECONDS
    except ValueError:
        return HEARTBEAT_SECONDS


def duration(seconds: float) -> str:
    """'2h05m', '6m10s', '42s'."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def precision_name(mixed_precision: str) -> str:
    """accelerate's mixed_precision ('no', 'bf16', 'fp16') as the precision trained in."""
    return {"no": "fp32"}.get(mixed_precision, mixed_precision)


@dataclass
class RunSet:
    """Runs trained one after another as a set (the seeds of `run --seeds`): how many runs of the
    set come after the current one, and the speed measured over the set so far (examples and
    seconds of the models finished in this session), which every run of the set adds to."""

    later_runs: int = 0
    examples: float = 0.0
    seconds: float = 0.0


class RunProgress:
    """Where a whole run stands: the models to train in order, each with its work (examples x
    epochs), and the speed measured so far. A model counts as finished once a later one starts
    (models loaded on a resume, or a teacher that needs no training, never start). `run_set`: the
    set this run belongs to (its later runs count in the time left), or None for a run of its own."""

    def __init__(self, plan: list[tuple[str, float]], run_set: RunSet | None = None):
        self.plan = [(name, float(work)) for name, work in plan]
        self.finished: set[str] = set()
        self.run_set = run_set or RunSet()

    @property
    def examples(self) -> float:
        """Examples trained over the finished models of this session (of the whole set)."""
        return self.run_set.examples

    @property
    def seconds(self) -> float:
        return self.run_set.seconds

    def scope(self) -> str:
        """What the time left covers: 'the run', or the run and the set's later runs."""
        later = self.run_set.later_runs
        return "the run" if not later else f"this run and the {later} after it"

    def names(self) -> list[str]:
        return [name for name, _ in self.plan]

    def begin(self, name: str) -> tuple[int, int]:
        """Model `name` starts: every model before it is finished. Returns (k, n), k from 1."""
        names = self.names()
        k = names.index(name) if name in names else len(names) - 1
        self.finished.update(names[:k])
        return k + 1, len(names)

    def end(self, name: str, examples: float, seconds: float) -> None:
        self.finished.add(name)
        self.run_set.examples += examples
        self.run_set.seconds += seconds

    def work_after(self, name: str) -> float:
        """Examples x epochs of the models after `name` that are not finished, plus the whole work
        of each later run of the set."""
        names = self.names()
        start = names.index(name) + 1 if name in names else len(names)
        later_runs = self.run_set.later_runs * sum(work for _, work in self.plan)
        return sum(work for n, work in self.plan[start:] if n not in self.finished) + later_runs


class StageMonitor:
    """Progress, curve and trackers of one trained model (see the module docstring). Use it as a
    context manager around `train(..., monitor=...)`: leaving it closes the trackers."""

    def __init__(self, name: str, *, run: RunProgress | None = None, trackers=None, clock=time.monotonic,
                 curve_points: int = CURVE_POINTS):
        self.name = name
        self.run = run
        self.trackers = trackers
        self.clock = clock
        self.curve_points = curve_points
        self.active = False

    # --- the loop's three calls ---------------------------------------------------------------

    def start(self, progress, *, total_steps: int, examples_per_step: int, steps_per_epoch: int, precision: str,
              live: bool, active: bool = True, bar=None) -> None:
        """Before the first step (or the first after a resume). `live`: a progress bar is shown, so
        no periodic lines are needed; `active`: this process prints and logs (the main one)."""
        self.active = active
        if not active:
            return
        self.total_steps, self.examples_per_step, self.steps_per_epoch = total_steps, examples_per_step, steps_per_epoch
        self.bar = bar
        self.started, self.first_step, self.step_now = self.clock(), progress.step, progress.step
        self.every = max(1, math.ceil(total_steps / self.curve_points))
        self.sums, self.count = {}, 0
        interval = heartbeat_seconds()
        self.heartbeat = None if live or interval <= 0 else interval
        self.next_beat = self.started + (self.heartbeat or 0)
        if self.trackers is not None:
            self.trackers.start()
        line = f"  {self.name}: {total_steps} steps of {examples_per_step} examples, precision {precision}"
        if self.run is not None:
            k, n = self.run.begin(self.name)
            line = f"[model {k} of {n}] {line.strip()}"
            left = self._run_left()
            line += f"; about {duration(left)} left for {self.run.scope()}" if left is not None else ""
        log_line(line, bar)

    def step(self, progress, loss: float, parts: dict, lr: float) -> None:
        """After each step: accumulate the window, record a curve point at its end, print a line
        when one is due."""
        if not self.active:
            return
        self.step_now = progress.step
        for key, value in parts.items():
            self.sums[key] = self.sums.get(key, 0.0) + value.detach().float()
        self.sums["loss"] = self.sums.get("loss", 0.0) + loss
        self.count += 1
        if progress.step % self.every == 0 or progress.step >= self.total_steps:
            point = {key: float(value) / self.count for key, value in self.sums.items()}
            record = {"step": progress.step, "epoch": round(progress.step / self.steps_per_epoch, 3),
                      "loss": point.pop("loss"), "parts": point, "lr": float(lr)}
            progress.curve.append(record)
            self.sums, self.count = {}, 0
            if self.trackers is not None:
                values = {"train/loss": record["loss"], "train/lr": record["lr"], "train/epoch": record["epoch"]}
                values.update({f"train/{key}": value for key, value in record["parts"].items()})
                self.trackers.log(values, step=progress.step)
        if self.heartbeat is not None and self.clock() >= self.next_beat:
            self.next_beat = self.clock() + self.heartbeat
            log_line(self.status(progress), self.bar)

    def evaluated(self, progress, score: float) -> None:
        if self.active and self.trackers is not None:
            self.trackers.log({"dev/score": float(score)}, step=progress.step)

    # --- what is printed ----------------------------------------------------------------------

    def _steps_per_second(self) -> float | None:
        seconds, done = self.clock() - self.started, self.step_now - self.first_step
        return done / seconds if done > 0 and seconds > 0 else None

    def _model_left(self) -> float | None:
        speed = self._steps_per_second()
        return (self.total_steps - self.step_now) / speed if speed else None

    def _run_left(self) -> float | None:
        """Seconds left for the run: this model's remainder at its own speed (at the run's before it
        has one), plus the later models' work at the run's speed; None while nothing is measured."""
        model_left = self._model_left()
        if self.run is None:
            return model_left
        examples = self.run.examples + (self.step_now - self.first_step) * self.examples_per_step
        seconds = self.run.seconds + (self.clock() - self.started)
        run_speed = examples / seconds if examples > 0 and seconds > 0 else None
        if model_left is None and run_speed:
            model_left = (self.total_steps - self.step_now) * self.examples_per_step / run_speed
        later = self.run.work_after(self.name)
        if later == 0:
            return model_left
        return None if not run_speed else (model_left or 0.0) + later / run_speed

    def status(self, progress) -> str:
        """One line: where this model is and how long it and the run have left."""
        step = progress.step
        line = (f"  {self.name}: step {step}/{self.total_steps} ({100 * step / self.total_steps:.0f}%), "
                f"epoch {step / self.steps_per_epoch:.2f}, loss {progress.running:.4f}")
        speed = self._steps_per_second()
        if speed:
            line += f", {speed:.2f} steps/s, about {duration(self._model_left())} left for this model"
        if self.run is not None:
            names = self.run.names()
            k = names.index(self.name) + 1 if self.name in names else len(names)
            left = self._run_left()
            line += f"; model {k} of {len(names)}" + (f", about {duration(left)} left for {self.run.scope()}"
                                                      if left is not None else "")
        return line

    # --- the model's end ----------------------------------------------------------------------

    def close(self) -> None:
        """The model is done (or failed): close the trackers, add what was measured to the run."""
        if self.trackers is not None:
            self.trackers.finish()
        if self.active and self.run is not None:
            self.run.end(self.name, (self.step_now - self.first_step) * self.examples_per_step,
                         self.clock() - self.started)
        self.active = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
