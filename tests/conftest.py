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
    from cascade_kd.demo import generate

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
