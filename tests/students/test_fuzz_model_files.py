"""Fuzzing model directories: whatever happened to a saved model's files (weights truncated, bytes of
the safetensors header overwritten, a header length that points anywhere, bytes appended, config.json
fields changed to other sizes or types or deleted, config.json replaced by garbage, the weights
deleted or left only as a pickle), loading it (`load_checkpoint`: eval, export, trim, bench, a
resumed run; `load_model`: a teacher) either gives a model that runs, or raises a UserError whose
message is one printable line naming the directory or the file. Any other exception is a bug.

A few examples by default; `CASCADE_KD_FUZZ=N` runs N (scripts/fuzz_inputs.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade_kd.errors import UserError

FUZZ_CASES = int(os.environ.get("CASCADE_KD_FUZZ") or 0)
# the memory the size checks compare with, here: no case may allocate more (the machine is shared)
SMALL_MEMORY = mock.patch("cascade_kd.students.hub.device_memory", lambda: (2 << 30, "memory (2 GiB in this test)"))
FUZZ = settings(max_examples=FUZZ_CASES or 30, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]

CONFIG_KEYS = st.sampled_from(["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                               "vocab_size", "max_position_embeddings", "hidden_act", "model_type", "architectures",
                               "id2label", "label2id", "type_vocab_size", "layer_norm_eps", "dtype"])
CONFIG_VALUES = st.one_of(st.integers(-2, 70), st.sampled_from([10**9, 2**40]), st.floats(width=32),
                          st.sampled_from(["gelu", "swishy", "bert", "gpt2", "vit", "", "float16"]),
                          st.lists(st.sampled_from(["BertForTokenClassification", "X", 3]), max_size=2),
                          st.dictionaries(st.sampled_from(["0", "1", "x"]), st.sampled_from(["O", "A", 1]), max_size=2),
                          st.none(), st.booleans())


@st.composite
def damage(draw):
    """A list of (what, argument) changes to a saved model's files."""
    kinds = st.sampled_from(["truncate", "header-bytes", "header-length", "append", "config-field", "config-drop",
                             "config-garbage", "no-weights", "pickle-only", "nothing"])
    out = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(kinds)
        if kind == "truncate":
            out.append((kind, draw(st.floats(0, 1))))
        elif kind == "header-bytes":
            out.append((kind, (draw(st.integers(0, 300)), draw(st.binary(min_size=1, max_size=8)))))
        elif kind == "header-length":
            out.append((kind, draw(st.integers(0, 2**64 - 1))))
        elif kind == "append":
            out.append((kind, draw(st.binary(min_size=1, max_size=64))))
        elif kind == "config-field":
            out.append((kind, (draw(CONFIG_KEYS), draw(CONFIG_VALUES))))
        elif kind == "config-drop":
            out.append((kind, draw(CONFIG_KEYS)))
        elif kind == "config-garbage":
            out.append((kind, draw(st.binary(max_size=20))))
        else:
            out.append((kind, None))
    return out


def apply(directory: Path, changes) -> None:
    weights, config = directory / "model.safetensors", directory / "config.json"
    for kind, arg in changes:
        if kind == "truncate" and weights.exists():
            data = weights.read_bytes()
            weights.write_bytes(data[: int(len(data) * arg)])
        elif kind == "header-bytes" and weights.exists():
            data = bytearray(weights.read_bytes())
            at, new = arg
            data[at: at + len(new)] = new
            weights.write_bytes(bytes(data))
        elif kind == "header-length" and weights.exists():
            weights.write_bytes(arg.to_bytes(8, "little") + weights.read_bytes()[8:])
        elif kind == "append" and weights.exists():
            with open(weights, "ab") as handle:
                handle.write(arg)
        elif kind in ("config-field", "config-drop") and config.exists():
            try:
                data = json.loads(config.read_text())
            except ValueError:
                continue
            if not isinstance(data, dict):
                continue
            if kind == "config-field":
                data[arg[0]] = arg[1]
            else:
                data.pop(arg, None)
            config.write_text(json.dumps(data))
        elif kind == "config-garbage":
            config.write_bytes(arg)
        elif kind == "no-weights":
            weights.unlink(missing_ok=True)
        elif kind == "pickle-only" and weights.exists():
            from safetensors.torch import load_file

            try:
                torch.save(load_file(weights), directory / "pytorch_model.bin")
            except Exception:  # noqa: BLE001 - already damaged: any bytes will do for a pickle-only directory
                (directory / "pytorch_model.bin").write_bytes(b"\x80\x04N.")
            weights.unlink()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, demo_workspace) -> Path:
    from transformers import AutoTokenizer

    from cascade_kd.students.hub import label_config, save_checkpoint
    from tests.helpers import tiny_bert

    tokenizer = AutoTokenizer.from_pretrained(demo_workspace / "tokenizer")
    model = tiny_bert(layers=2, vocab=len(tokenizer))
    model.config.update(label_config(LABELS))
    path = tmp_path_factory.mktemp("fuzz-model") / "model"
    save_checkpoint(model, tokenizer, path)
    return path


@pytest.mark.parametrize("loader", ["load_checkpoint", "load_model"])
@FUZZ
@given(changes=damage())
def test_a_damaged_model_directory_loads_or_is_one_user_error(fuzz_tally, saved_model, loader, changes):
    from cascade_kd.students.hub import load_checkpoint, load_model

    tally = fuzz_tally[f"model-dir-{loader}"]
    tally["cases"] += 1
    case = Path(tempfile.mkdtemp()) / "model"
    try:
        shutil.copytree(saved_model, case)
        apply(case, changes)
        try:
            with SMALL_MEMORY:
                if loader == "load_checkpoint":
                    model = load_checkpoint(case, "token")
                else:
                    model, _ = load_model(str(case), "token", LABELS)
        except UserError as err:
            tally["UserError"] += 1
            msg = str(err)
            assert msg.isprintable() and len(msg) < 2000, msg
            assert str(case) in msg or "teacher.model" in msg, msg
            return
        except Exception:
            tally["other exception"] += 1
            raise
        tally["parsed"] += 1  # loaded: it must run
        ids = torch.randint(5, 700, (2, 7))
        with torch.no_grad():
            logits = model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        assert logits.shape[:2] == (2, 7)
    finally:
        shutil.rmtree(case.parent, ignore_errors=True)
