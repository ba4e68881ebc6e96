"""The run's progress (model k of n, time left), the periodic lines off a terminal, the loss curve
and what reaches the trackers (training/progress.py, training/trackers.py)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from cascade_kd.training.progress import RunProgress, RunSet, StageMonitor, duration
from cascade_kd.training.state import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Recorder:
    """Stands in for Trackers: what was logged, and whether it was started and finished."""

    def __init__(self):
        self.logged, self.started, self.finished = [], False, False

    def start(self):
        self.started = True

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


@pytest.fixture
def printed(monkeypatch):
    lines = []
    monkeypatch.delenv("CASCADE_KD_QUIET", raising=False)
    monkeypatch.setattr("cascade_kd.training.progress.log_line", lambda message, bar=None: lines.append(message))
    return lines


def _steps(monitor, progress, clock, n, seconds_per_step=1.0, parts=None):
    for _ in range(n):
        clock.now += seconds_per_step
        progress.step += 1
        progress.running = 0.5
        monitor.step(progress, 2.0, parts or {"kl": torch.tensor(1.0), "hidden_mse": torch.tensor(3.0)}, 1e-3)


def test_lines_at_a_steady_interval_off_a_terminal_with_the_run_position_and_time_left(printed, monkeypatch):
    monkeypatch.setenv("CASCADE_KD_PROGRESS_SECONDS", "10")
    clock, run = Clock(), RunProgress([("teacher", 3200), ("ta", 1600), ("student", 1600)])
    monitor = StageMonitor("ta", run=run, clock=clock)
    progress = Progress()
    # the teacher was measured at 32 examples per second
    run.end("teacher", 3200, 100.0)
    monitor.start(progress, total_steps=50, examples_per_step=32, steps_per_epoch=25, precision="fp32", live=False)
    assert printed[0].startswith("[model 2 of 3] ta: 50 steps of 32 examples, precision fp32")
    # before ta has a speed: its 1600 and the student's 1600 examples at the run's 32/s
    assert printed[0].endswith(f"about {duration(100)} left for the run")
    _steps(monitor, progress, clock, 25)  # ta: 1 step (32 examples) per second
    beats = [line for line in printed[1:]]
    assert len(beats) == 2  # at 10 s and at 20 s, not at every step
    assert "ta: step 10/50 (20%)" in beats[0] and "model 2 of 3" in beats[0]
    # 30 steps left at 1/s, then the student's 1600 examples at the run's speed (3200 + 20*32) / (100 + 20)
    assert f"about {duration(30 + 1600 / ((3200 + 640) / 120))} left for the run" in beats[1]
    monitor.close()
    assert run.examples == 3200 + 25 * 32 and run.seconds == pytest.approx(125.0)


def test_a_run_of_a_seed_set_counts_the_later_seeds_at_the_speed_measured_over_the_set(printed):
    """run --seeds: the time left covers the seeds still to run (each as much work as this run), at
    the speed every run of the set has measured so far."""
    clock, run_set = Clock(), RunSet(later_runs=2)
    first = RunProgress([("teacher", 3200), ("student", 1600)], run_set)
    first.end("teacher", 3200, 100.0)  # 32 examples per second
    monitor = StageMonitor("student", run=first, clock=clock)
    monitor.start(Progress(), total_steps=50, examples_per_step=32, steps_per_epoch=50, precision="fp32", live=True)
    # the student's 1600 examples, then two more runs of 3200 + 1600, all at 32 per second
    assert printed[-1].endswith(f"about {duration((1600 + 2 * 4800) / 32)} left for this run and the 2 after it")
    monitor.close()
    # the next seed's run starts with the speed the first one measured
    run_set.later_runs = 1
    second = RunProgress([("teacher", 3200), ("student", 1600)], run_set)
    assert second.examples == 3200 and second.seconds == pytest.approx(100.0)
    monitor = StageMonitor("teacher", run=second, clock=clock)
    monitor.start(Progress(), total_steps=100, examples_per_step=32, steps_per_epoch=100, precision="fp32", live=True)
    assert printed[-1].endswith(f"about {duration((3200 + 1600 + 4800) / 32)} left for this run and the 1 after it")
    # a run of its own says 'the run', as before
    alone = StageMonitor("teacher", run=RunProgress([("teacher", 3200)]), clock=clock)
    alone.start(Progress(), total_steps=100, examples_per_step=32, steps_per_epoch=100, precision="fp32", live=True)
    assert "left for" not in printed[-1]  # nothing measured yet: no estimate rather than a guess


def test_no_periodic_lines_under_a_live_bar_and_a_curve_of_window_means(printed, monkeypatch):
    monkeypatch.setenv("CASCADE_KD_PROGRESS_SECONDS", "1")
    clock, trackers = Clock(), Recorder()
    monitor = StageMonitor("student", trackers=trackers, clock=clock, curve_points=4)
    progress = Progress()
    monitor.start(progress, total_steps=10, examples_per_step=8, steps_per_epoch=5, precision="bf16", live=True)
    assert trackers.started and len(printed) == 1
    for step in range(1, 11):
        clock.now += 5
        progress.step = step
        monitor.step(progress, float(step), {"kl": torch.tensor(float(step))}, 0.1 * step)
    assert len(printed) == 1  # the bar shows progress: no extra lines
    # windows of ceil(10 / 4) = 3 steps, and the last (shorter) one at the final step
    assert [p["step"] for p in progress.curve] == [3, 6, 9, 10]
    assert [p["loss"] for p in progress.curve] == [2.0, 5.0, 8.0, 10.0]
    assert progress.curve[1]["parts"] == {"kl": 5.0} and progress.curve[1]["epoch"] == 1.2
    assert progress.curve[1]["lr"] == pytest.approx(0.6)
    monitor.evaluated(progress, 0.75)
    logged = dict(trackers.logged)
    assert logged[3]["train/loss"] == 2.0 and logged[3]["train/kl"] == 2.0 and logged[10] == {"dev/score": 0.75}
    monitor.close()
    assert trackers.finished


def test_only_the_main_process_prints_and_logs(printed):
    trackers = Recorder()
    monitor = StageMonitor("s", trackers=trackers)
    progress = Progress()
    monitor.start(progress, total_steps=4, examples_per_step=2, steps_per_epoch=2, precision="fp32", live=False,
                  active=False)
    progress.step = 1
    monitor.step(progress, 1.0, {"kl": torch.tensor(1.0)}, 0.1)
    assert printed == [] and progress.curve == [] and not trackers.started


def test_the_loop_records_every_loss_part_and_names_the_precision(capsys, monkeypatch):
    from cascade_kd.config.schema import LossConfig, TrainConfig
    from cascade_kd.data.encode import Encoded
    from cascade_kd.losses.base import LossTerm
    from cascade_kd.losses.logits import HardLabelCE
    from cascade_kd.losses.registry import build_terms
    from cascade_kd.training.data import StageData
    from cascade_kd.training.loop import train
    from cascade_kd.training.task import DistillationTask
    from cascade_kd.training.teacher import LiveTeacher
    from tests.helpers import tiny_bert

    monkeypatch.delenv("CASCADE_KD_QUIET", raising=False)
    monkeypatch.setenv("CASCADE_KD_PROGRESS_SECONDS", "0.000001")  # a line at every step
    teacher, student = tiny_bert("sequence", layers=2, num_labels=2), tiny_bert("sequence", layers=1, num_labels=2)
    data = [Encoded([2, 5 + i % 50, 9, 3], [0, 0, 0, 0], i % 2) for i in range(64)]
    terms = build_terms({"kl": LossConfig(), "hidden_mse": LossConfig()}, teacher.config, student.config, where="test")
    terms.append(LossTerm(0.5, HardLabelCE()))
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-3, precision="fp32", checkpoint_every=None)
    result = train(DistillationTask(student, terms, LiveTeacher(teacher)), StageData(data), cfg, desc="unit")
    out = capsys.readouterr().out
    assert "precision fp32" in out and "precision no" not in out
    assert "unit: step 3/8" in out  # a periodic line, the output being captured (not a terminal)
    assert [p["step"] for p in result.curve] == list(range(1, 9))
    assert set(result.curve[0]["parts"]) == {"kl", "hidden_mse", "ce"}
    assert all(p["loss"] > 0 and p["lr"] >= 0 for p in result.curve)


def test_tensorboard_receives_the_curves_under_logs(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cascade_kd.training.trackers import Trackers

    trackers = Trackers(["tensorboard"], logs_dir=tmp_path / "logs", project="p", run_name="ta2",
                        config={"train": {"lr": 1e-3, "epochs": 2}, "model": "ta2"})
    trackers.start()
    for step in (1, 2, 3):
        trackers.log({"train/loss": 1.0 / step}, step=step)
    trackers.finish()
    events = EventAccumulator(str(tmp_path / "logs" / "ta2"))
    events.Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 0.5), (3, 0.3333)]


@pytest.fixture
def mlflow_uri_restored():
    """mlflow's tracking URI is process-wide: put back what it was (unset, or the user's) after the test."""
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install mlflow-skinny)")
    from mlflow.tracking._tracking_service import utils  # where mlflow keeps the URI set in the process

    before = utils._tracking_uri
    yield mlflow
    utils._tracking_uri = before


def _mlflow_curve(uri: str, experiment: str, run_name: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.run_name == run_name and run.data.params == {"train.lr": "0.001"}
    return [(m.step, round(m.value, 4)) for m in client.get_metric_history(run.info.run_id, "train/loss")]


def test_mlflow_logs_each_run_under_its_own_logs_folder_unless_the_user_set_a_uri(tmp_path, monkeypatch,
                                                                               mlflow_uri_restored):
    from cascade_kd.training.trackers import Trackers, mlflow_store_uri

    mlflow = mlflow_uri_restored
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # mlflow's own default would be a folder or database here
    for run in ("seed0", "seed1"):  # two runs in one process (run --seeds): each in its own RUN_DIR/logs
        trackers = Trackers(["mlflow"], logs_dir=tmp_path / run / "logs", project="recipe", run_name="ta2",
                            config={"train": {"lr": 0.001}})
        trackers.start()
        for step in (1, 2, 3):
            trackers.log({"train/loss": 1.0 / step}, step=step)
        trackers.finish()
        assert _mlflow_curve(mlflow_store_uri(tmp_path / run / "logs"), "recipe", "ta2") == [(1, 1.0), (2, 0.5),
                                                                                            (3, 0.3333)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0", "seed1"]  # nothing in the working directory
    # a URI the user chose is kept
    mine = (tmp_path / "elsewhere").resolve().as_uri()
    mlflow.set_tracking_uri(mine)
    trackers = Trackers(["mlflow"], logs_dir=tmp_path / "seed2" / "logs", project="recipe", run_name="ta2",
                        config={"train": {"lr": 0.001}})
    trackers.start()
    trackers.log({"train/loss": 0.25}, step=1)
    trackers.finish()
    assert mlflow.get_tracking_uri() == mine and _mlflow_curve(mine, "recipe", "ta2") == [(1, 0.25)]


def test_wandb_and_trackio_get_the_run_names_and_the_logs_folder(tmp_path, monkeypatch):
    """With fake wandb/trackio modules: what accelerate's trackers are given (the real packages are
    not installed here)."""
    from cascade_kd.training.trackers import Trackers

    calls = []

    class Run:
        def log(self, values, step=None):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    def fake(name):
        module = types.ModuleType(name)
        module.init = lambda **kwargs: calls.append((name, kwargs)) or Run()
        module.config = types.SimpleNamespace(update=lambda values, allow_val_change: calls.append(("config", values)))
        return module

    monkeypatch.setitem(sys.modules, "wandb", fake("wandb"))
    monkeypatch.setitem(sys.modules, "trackio", fake("trackio"))
    trackers = Trackers(["wandb", "trackio"], logs_dir=tmp_path / "logs", project="recipe", run_name="ta2",
                        config={"train": {"lr": 0.001}})
    trackers.start()
    trackers.log({"train/loss": 0.5}, step=7)
    trackers.finish()
    assert ("wandb", {"project": "recipe", "name": "ta2", "dir": str(tmp_path / "logs")}) in calls
    assert ("trackio", {"project": "recipe", "name": "ta2"}) in calls
    assert ("config", {"train.lr": 0.001}) in calls
    assert calls.count(("log", {"train/loss": 0.5}, 7)) == 2 and calls.count(("finish",)) == 2


def test_a_tracker_that_is_not_installed_is_one_recipe_error(ws, capsys):
    from cascade_kd.training.trackers import TRACKERS, missing_tracker
    from tests.helpers import edit_recipe, fails

    absent = next((name for name in TRACKERS if missing_tracker(name)), None)
    if absent is None:
        pytest.skip("every supported tracker is installed here")
    recipe = edit_recipe(ws, "  precision: fp32\n", f"  precision: fp32\n  report_to: [{absent}]\n")
    line = fails(capsys, ws, recipe=recipe)
    assert f"train.report_to names {absent}, but it is not installed" in line and "recipe.yaml:" in line
    assert f"pip install {absent}" in line
