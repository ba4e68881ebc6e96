"""What tests share besides fixtures: paths to the real data, tiny models, tiny recipes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or a skip that says why the test cannot run here."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available here: {path} is missing (the real-data tests read ../shared/data: see docs/contributing.md)")
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



# --- tiny recipes --------------------------------------------------------------------------------
# Every test that runs a recipe starts from this one: the demo task (tests/conftest.py demo_workspace:
# data/{lang}/*.conll and tokenizer/), a 2-layer 32-wide teacher trained from its config, one
# 1-layer student, fp32. A test states only what it changes.

TINY_BASE = {
    "name": "tiny",
    "seed": 0,
    "task": {"type": "token", "max_length": 48},
    "data": {"languages": ["en", "ru"], "format": "conll", "train": "data/{lang}/train.conll",
             "dev": "data/{lang}/dev.conll", "test": "data/{lang}/test.conll",
             "max_train_per_language": 200, "max_eval_per_language": 40},
    "teacher": {"config": {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
                           "intermediate_size": 64, "max_position_embeddings": 64},
                "tokenizer": "tokenizer", "train": {"epochs": 5, "lr": 4.0e-3}},
    "train": {"batch_size": 32, "epochs": 1, "lr": 3.0e-3, "precision": "fp32"},
    "cascade": {"stages": [{"name": "student", "student": {"layers": 1}}], "direct": False},
}


def merge(base: dict, changes: dict) -> dict:
    """`base` with `changes` merged in, section by section; a value of None removes the key. A dict
    of list positions edits those items of a list, e.g. `{"cascade": {"stages": {1: {"student":
    {"layers": 2}}}}}` changes the second stage only; any other value (a list too) replaces."""
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), list) and value and all(
                isinstance(i, int) for i in value):
            items = list(out[key])
            for i, item_changes in value.items():
                items[i] = merge(items[i], item_changes)
            out[key] = items
        else:
            out[key] = value
    return out


def tiny_recipe(root: Path | str | None = None, **changes) -> dict:
    """The tiny recipe as a dict, with `changes` merged in per section (e.g. `train={"epochs": 2}`,
    `cascade={"stages": [...]}`; None removes a key). With `root` (a copy of the demo workspace, or
    the workspace itself), relative data and tokenizer paths are made absolute under it."""
    import copy

    recipe = merge(copy.deepcopy(TINY_BASE), changes)
    if root is not None:
        root = Path(root)
        data = recipe["data"]
        for split in ("train", "dev", "test"):
            if isinstance(data.get(split), str) and not Path(data[split]).is_absolute():
                data[split] = str(root / data[split])
        tokenizer = recipe["teacher"].get("tokenizer")
        if isinstance(tokenizer, str) and not Path(tokenizer).is_absolute():
            recipe["teacher"]["tokenizer"] = str(root / tokenizer)
    return recipe


def run_card_code(folder: Path, pythonpath: list[str] | None = None):
    """Run the "How to use" block of a saved model's card (folder/README.md) as a user copies it,
    in a fresh interpreter with `path = "."` the folder, then check that it labelled something.
    Returns the finished process (returncode, stderr)."""
    import re
    import subprocess
    import sys

    code = re.search(r"## How to use.*?```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    code += "assert labels and set(labels) <= set(model.config.id2label.values()), labels\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    return subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def write_recipe(directory: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    """Write a recipe dict as YAML (paths in it stay relative to `directory`); returns the file."""
    import yaml

    path = Path(directory) / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


# --- what a test must not disturb, and where it must stop ---------------------------------------


def snapshot(directory: Path) -> dict[str, tuple]:
    """Every entry under `directory`, hidden ones included: file -> sha256, link -> its target, dir
    (empty for a directory that does not exist)."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(directory))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def refuse_training(monkeypatch, *, teacher_only: bool = False) -> None:
    """Make reaching training (or, with teacher_only, loading the teacher) fail the test: the input
    must have been refused by the checks before."""
    import cascade_kd.cascade.run as run
    import cascade_kd.cascade.stages as stages

    def refuse(*args, **kwargs):
        raise AssertionError("training started: this input should have been rejected by the checks")

    if not teacher_only:
        monkeypatch.setattr(stages, "train", refuse)
    monkeypatch.setattr(run, "get_teacher", refuse)
