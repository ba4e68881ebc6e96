"""What tests share besides fixtures: paths to the real data, tiny models, tiny recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or a skip that says why the test cannot run here."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available here: {path} is missing (see README, 'Real data')")
    return path



def tiny_bert(task: str = "token", layers: int = 4, hidden: int = 32, heads: int = 4, num_labels: int = 7, vocab: int = 800):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden, max_position_embeddings=64, num_labels=num_labels)
    cls = BertForTokenClassification if task == "token" else BertForSequenceClassification
    return cls(config)




# --- editing the demo task's files, and running the CLI on them (tests/cli, tests/losses) ------


def edit_recipe(ws: Path, old: str, new: str) -> Path:
    path = ws / "recipe.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} is not exactly once in the demo recipe"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    """The 1-based number of the only line of `path` that contains `needle`."""
    hits = [n for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1) if needle in line]
    assert len(hits) == 1, f"{needle!r} is on lines {hits} of {path}"
    return hits[0]


def edit_data_line(path: Path, n: int, new: str) -> None:
    """Replace line n (1-based) of a data file."""
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[n - 1] = new
    path.write_text("\n".join(lines), encoding="utf-8")


def first_token_line(path: Path, after: int = 1) -> int:
    """The number of the first non-blank (token) line at or after line `after`."""
    lines = path.read_text(encoding="utf-8").split("\n")
    return next(n for n in range(after, len(lines) + 1) if lines[n - 1].strip())


def fails(capsys, ws: Path, *options: str, recipe: Path | None = None, run_dir_untouched: bool = True) -> str:
    """Run `cascade-kd run`; check exit code 2 and one clean error line; return that line."""
    recipe = recipe or ws / "recipe.yaml"
    out = ws / "run"
    from cascade_kd.cli.app import main

    rc = main(["run", str(recipe), "--out", str(out), *options])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: ")
    if run_dir_untouched:  # every check happens before anything is written
        assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    return lines[0]




def tiny_encoder(model_type: str):
    """A 4-layer, 32-wide token classifier of another encoder family (bert, xlm-roberta, distilbert)."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    extra = {"dim": 32, "n_layers": 4, "n_heads": 4, "hidden_dim": 64} if model_type == "distilbert" else {
        "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 64}
    config = AutoConfig.for_model(model_type, vocab_size=100, max_position_embeddings=40, num_labels=3, **extra)
    return AutoModelForTokenClassification.from_config(config).eval()


# a finished tiny run's recipe (the tiny_run fixture; tests/deploy, tests/data/test_transfer.py)
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
