"""Training curves to the experiment trackers people use (`train.report_to`), through accelerate's
tracker classes (the integration behind `Accelerator(log_with=...)`).

Each trained model of a run is one tracker run, named after the model, in a project named after
the recipe. Where a tracker writes files, they go under RUN_DIR/logs/:
- tensorboard: RUN_DIR/logs/<model>/ (event files; `tensorboard --logdir RUN_DIR/logs`);
- trackio: RUN_DIR/logs/trackio/ (its SQLite database), unless TRACKIO_DIR is set or trackio was
  imported before with another directory;
- mlflow: RUN_DIR/logs/mlflow.db (params and metrics; with mlflow-skinny, which has no database
  backend: RUN_DIR/logs/mlruns/) and RUN_DIR/logs/mlruns/ (artifacts), unless MLFLOW_TRACKING_URI (or
  mlflow.set_tracking_uri) says otherwise;
- wandb: run files in RUN_DIR/logs/wandb/; whether they are also sent to a server is the user's
  wandb setting (`wandb login`, WANDB_MODE=offline), as with any wandb run.
With no report_to (the default), nothing is logged anywhere beyond the run's own files.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TRACKERS = ("tensorboard", "trackio", "wandb", "mlflow")


def _available(name: str) -> bool:
    from accelerate.utils import (
        is_mlflow_available,
        is_tensorboard_available,
        is_trackio_available,
        is_wandb_available,
    )

    return {"tensorboard": is_tensorboard_available, "trackio": is_trackio_available, "wandb": is_wandb_available,
            "mlflow": is_mlflow_available}[name]()


def missing_tracker(name: str) -> str | None:
    """Why tracker `name` cannot be used here (not installed), or None when it can."""
    if name not in TRACKERS:
        return f"cascade-kd knows no tracker {name!r} (known: {', '.join(TRACKERS)})"
    return None if _available(name) else "it is not installed"


def flat_config(values: dict, prefix: str = "") -> dict:
    """Nested settings as the flat str/int/float/bool values trackers take as hyperparameters."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif value is not None:
            flat[name] = str(value)
    return flat


_MLFLOW_URIS_SET_HERE: set[str] = set()


def mlflow_store_uri(logs_dir: Path) -> str:
    """Where mlflow keeps a run's params and metrics under RUN_DIR/logs: a SQLite database
    (logs/mlflow.db) where mlflow has its database backend (the `mlflow` package), else its file
    store in logs/mlruns (`mlflow-skinny`), which mlflow 3 keeps in maintenance mode and refuses
    unless MLFLOW_ALLOW_FILE_STORE is set: it is set here, for that folder's sake."""
    try:
        import sqlalchemy  # noqa: F401 - mlflow's database backend needs it
    except ImportError:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return (Path(logs_dir) / "mlruns").resolve().as_uri()
    return f"sqlite:///{(Path(logs_dir) / 'mlflow.db').resolve()}"


class Trackers:
    """The trackers of one trained model: started on `start`, given values by `log`, closed by `finish`."""

    def __init__(self, names: list[str], *, logs_dir: Path, project: str, run_name: str, config: dict | None = None):
        self.names = list(names)
        self.logs_dir = Path(logs_dir)
        self.project = project
        self.run_name = run_name
        self.config = flat_config(config or {})
        self.trackers = []

    def _make(self, name: str):
        from accelerate.tracking import (
            MLflowTracker,
            TensorBoardTracker,
            TrackioTracker,
            WandBTracker,
        )

        if name == "tensorboard":
            return TensorBoardTracker(self.run_name, self.logs_dir)
        if name == "wandb":
            (self.logs_dir / "wandb").mkdir(parents=True, exist_ok=True)
            return WandBTracker(self.project, name=self.run_name, dir=str(self.logs_dir))
        if name == "trackio":
            if "trackio" not in sys.modules:  # trackio reads TRACKIO_DIR once, when it is first imported
                os.environ.setdefault("TRACKIO_DIR", str(self.logs_dir / "trackio"))
            return TrackioTracker(self.project, name=self.run_name)
        if name == "mlflow":
            import mlflow

            # the user's tracking URI (MLFLOW_TRACKING_URI, mlflow.set_tracking_uri) wins; else this run's
            # logs folder, also when an earlier run of this process set its own (a set of seeds, a grid)
            if not mlflow.is_tracking_uri_set() or mlflow.get_tracking_uri() in _MLFLOW_URIS_SET_HERE:
                uri = mlflow_store_uri(self.logs_dir)
                mlflow.set_tracking_uri(uri)
                _MLFLOW_URIS_SET_HERE.add(uri)
            return MLflowTracker(self.project, logging_dir=(self.logs_dir / "mlruns").resolve().as_uri(),
                                 run_name=self.run_name)
        raise ValueError(f"unknown tracker {name!r}")

    def start(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            tracker = self._make(name)
            tracker.start()
            if self.config:
                tracker.store_init_configuration(self.config)
            self.trackers.append(tracker)

    def log(self, values: dict, step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def finish(self) -> None:
        while self.trackers:
            self.trackers.pop().finish()
