"""Shared fixtures: tiny models and a tiny generated task, built offline in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CASCADE_KD_QUIET", "1")

from transformers.utils import logging as _hf_logging  # noqa: E402

_hf_logging.disable_progress_bar()

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or a skip that says why the test cannot run here."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available here: {path} is missing (see README, 'Real data')")
    return path


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory) -> Path:
    """The demo's generated 4-language NER task and tokenizer (generated once per session)."""
    from cascade_kd.cli.demo import generate

    root = tmp_path_factory.mktemp("demo")
    generate(root, seed=0)
    return root


@pytest.fixture(scope="session")
def tokenizer(demo_workspace):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_workspace / "tokenizer")


def tiny_bert(task: str = "token", layers: int = 4, hidden: int = 32, heads: int = 4, num_labels: int = 7, vocab: int = 800):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden, max_position_embeddings=64, num_labels=num_labels)
    cls = BertForTokenClassification if task == "token" else BertForSequenceClassification
    return cls(config)


# --- fuzzing (tests/test_fuzz_recipe.py, tests/data/test_fuzz_readers.py) --------------------
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


# --- a finished tiny run (tests/test_export.py, tests/test_benchmark.py) ------------------------


TINY_RUN_RECIPE = """\
name: tiny-run
seed: 0
task: {type: token, max_length: 48}
data:
  languages: [en, ru]
  format: conll
  train: data/{lang}/train.conll
  dev: data/{lang}/dev.conll
  max_train_per_language: 200
  max_eval_per_language: 40
teacher:
  config: {model_type: bert, num_hidden_layers: 2, hidden_size: 32, num_attention_heads: 2,
           intermediate_size: 64, max_position_embeddings: 64}
  tokenizer: tokenizer
  train: {epochs: 5, lr: 4.0e-3}
train: {batch_size: 32, epochs: 1, lr: 3.0e-3, precision: fp32}
cascade:
  stages:
    - {name: student, student: {layers: 1}}
  direct: false
"""


@pytest.fixture(scope="session")
def tiny_run(demo_workspace, tmp_path_factory) -> Path:
    """A finished two-model run (2-layer teacher, 1-layer student) on the demo task, shared by the
    export and bench tests: RUN_DIR, with recipe.yaml pointing at the generated dev data."""
    import shutil

    from cascade_kd.cascade.run import run_recipe
    from cascade_kd.config.schema import load_recipe

    root = tmp_path_factory.mktemp("tiny_run")
    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, root / name)
    (root / "recipe.yaml").write_text(TINY_RUN_RECIPE)
    run_recipe(load_recipe(root / "recipe.yaml"), root / "run", say=lambda m: None)
    return root / "run"
