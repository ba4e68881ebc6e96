"""Shared fixtures: tiny models and a tiny generated task, built offline in seconds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CASCADE_KD_QUIET", "1")

# Under pytest-xdist (`make test` runs `-n auto`) every worker is a process of its own: each gets its
# share of the cores, set before anything imports torch (and inherited by the runs tests start), since
# torch's default of every core per process oversubscribes them and its OpenMP threads then spin-wait.
MAX_WORKERS = 4  # a cap: every worker builds the session fixtures (the demo task, a finished tiny run) again


def _usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per usable core, at most MAX_WORKERS (xdist alone counts the host's
    physical cores, more than a container may use)."""
    return max(1, min(MAX_WORKERS, _usable_cores()))


_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    # worker gwI of N: cores // N, and one of the cores left over for the first cores % N workers
    _index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    _cores = _usable_cores()
    _share = _cores // _workers + (1 if _index < _cores % _workers else 0)
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, str(max(1, _share)))

from transformers.utils import logging as _hf_logging  # noqa: E402

_hf_logging.disable_progress_bar()

from tests.helpers import SHARED_DATA, shared_data, tiny_bert, tiny_recipe, write_recipe  # noqa: E402,F401  (re-exported for fixtures)

@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory) -> Path:
    """The demo's generated 4-language NER task and tokenizer (generated once per session)."""
    from cascade_kd.cli.demo import generate

    root = tmp_path_factory.mktemp("demo")
    generate(root, seed=0)
    return root


@pytest.fixture
def ws(demo_workspace, tmp_path) -> Path:
    """A private copy of the demo task, free to break."""
    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, tmp_path / name)
    shutil.copy(demo_workspace / "recipe.yaml", tmp_path / "recipe.yaml")
    return tmp_path


@pytest.fixture(scope="session")
def tokenizer(demo_workspace):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_workspace / "tokenizer")


# --- fuzzing (tests/config/test_fuzz_recipe.py, tests/data/test_fuzz_readers.py) --------------------
# A few examples per property by default; CASCADE_KD_FUZZ=N runs N per target (scripts/fuzz_inputs.py).


@pytest.fixture(scope="session")
def fuzz_tally():
    """target -> outcome -> count of fuzz cases; written to $CASCADE_KD_FUZZ_REPORT (JSON) at the end,
    so that scripts/fuzz_inputs.py can say how many cases each target tried."""
    import collections
    import json

    tally = collections.defaultdict(collections.Counter)
    yield tally
    report = os.environ.get("CASCADE_KD_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(tally, indent=2, sort_keys=True), encoding="utf-8")


# --- a finished tiny run (tests/deploy/test_export.py, tests/deploy/test_bench.py and others) ------




@pytest.fixture(scope="session")
def tiny_run(demo_workspace, tmp_path_factory) -> Path:
    """A finished two-model run (2-layer teacher, 1-layer student) on the demo task, shared by the
    export and bench tests: RUN_DIR, with recipe.yaml pointing at the generated dev data."""
    from cascade_kd.cascade import run_recipe
    from cascade_kd.config.schema import load_recipe

    root = tmp_path_factory.mktemp("tiny_run")
    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, root / name)
    write_recipe(root, tiny_recipe(name="tiny-run", data={"test": None}))
    run_recipe(load_recipe(root / "recipe.yaml"), root / "run", say=lambda m: None)
    return root / "run"


# --- a finished cascade with a direct baseline and TensorBoard curves (tests/evaluation) -------

CASCADE_RUN_RECIPE = tiny_recipe(
    name="tiny-cascade",
    data={"max_train_per_language": 96, "max_eval_per_language": 32},
    teacher={"config": {"num_hidden_layers": 3}, "train": {"epochs": 3}},
    train={"batch_size": 16, "report_to": ["tensorboard"]},
    cascade={"stages": [{"name": "ta2", "student": {"layers": 2, "freeze_embeddings": True}},
                        # a layer list, which the direct baseline's spec turns into bottom layers
                        {"name": "student", "student": {"layers": 1, "init": [2]}}], "direct": True},
)


@pytest.fixture(scope="session")
def cascade_run(demo_workspace, tmp_path_factory) -> Path:
    """A finished run with teacher, assistant, student and direct model (report.html, model cards,
    TensorBoard logs), for the report and card tests. Skips where tensorboard is not installed."""
    pytest.importorskip("tensorboard", reason="train.report_to: [tensorboard] needs tensorboard (pip install tensorboard)")
    from cascade_kd.cascade import run_recipe
    from cascade_kd.config.schema import load_recipe

    root = tmp_path_factory.mktemp("cascade_run")
    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, root / name)
    write_recipe(root, CASCADE_RUN_RECIPE)
    run_recipe(load_recipe(root / "recipe.yaml"), root / "run", say=lambda m: None)
    return root / "run"
