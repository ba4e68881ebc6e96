"""Fuzzing teacher configs (`teacher.config` in a recipe): whatever model type and fields it holds,
the checks that run before any training (the config itself, the model built on the meta device,
its memory, the position table, the whole cascade's shapes) either raise a UserError whose message
is one printable line naming the recipe key, or pass; and a config that passes builds for real,
runs a forward pass, and gives its first stage's student, which runs too. Any other exception,
in the checks or after them, is a bug.

Configs are a small valid BERT config with a few fields changed: sizes of the wrong type (strings,
floats, lists, booleans, None), zero, negative or absurd (10**12), unknown activations and model
types, other encoder and non-encoder model types, unknown keys. Models above 3M parameters pass
the checks without being built for real (the memory check is then what is tested).

A few examples by default; `CASCADE_KD_FUZZ=N` runs N (scripts/fuzz_inputs.py).
"""

from __future__ import annotations

import copy
import os
from types import SimpleNamespace

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
LABELS = ["O", "B-PER", "I-PER"]

RECIPE = {
    "name": "fuzz", "seed": 0, "task": {"type": "token", "max_length": 16, "labels": LABELS},
    "data": {"languages": ["en"], "format": "conll", "train": "train.conll", "dev": "dev.conll"},
    "teacher": {"config": {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2,
                           "intermediate_size": 32, "max_position_embeddings": 32}, "tokenizer": "tokenizer"},
    "train": {"batch_size": 8, "epochs": 1},
    "cascade": {"losses": {"kl": {"weight": 1.0}, "hidden_mse": {"weight": 1.0}},
                "stages": [{"name": "s", "student": {"layers": 1}}]},
}
MODEL_TYPES = st.sampled_from(["bert"] * 8 + ["xlm-roberta", "roberta", "distilbert", "electra", "albert", "camembert",
                                              "gpt2", "vit", "whisper", "t5", "bertx", "", "BERT"])
KEYS = st.sampled_from(["num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                        "max_position_embeddings", "vocab_size", "type_vocab_size", "hidden_act", "hidden_dropout_prob",
                        "attention_probs_dropout_prob", "layer_norm_eps", "dim", "n_layers", "n_heads", "hidden_dim",
                        "embedding_size", "pad_token_id", "position_embedding_type", "initializer_range", "x_unknown"])
VALUES = st.one_of(
    st.integers(1, 64), st.integers(-3, 3), st.sampled_from([10**6, 2**31, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from(["gelu", "relu", "swishy", "", "absolute",
                                                                              "relative_key", "32"]),
    st.lists(st.integers(0, 3), max_size=2), st.booleans(), st.none(),
)


@st.composite
def teacher_configs(draw) -> dict:
    config = copy.deepcopy(RECIPE["teacher"]["config"])
    if draw(st.integers(0, 3)) == 0:
        config["model_type"] = draw(MODEL_TYPES)
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
        key = draw(KEYS)
        if draw(st.integers(0, 5)) == 0:
            config.pop(key, None)
        else:
            config[key] = draw(VALUES)
    return config


@pytest.fixture(scope="module")
def demo_tokenizer(demo_workspace):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_workspace / "tokenizer")


@FUZZ
@given(config=teacher_configs())
def test_a_teacher_config_is_refused_in_one_line_or_builds_and_runs(fuzz_tally, demo_workspace, demo_tokenizer, config):
    from cascade_kd.cascade.job import _check_positions, _teacher_config
    from cascade_kd.cascade.plan import check_cascade, check_teacher
    from cascade_kd.config.schema import Recipe
    from cascade_kd.students import build_student
    from cascade_kd.students.hub import create_model

    tally = fuzz_tally["teacher-config"]
    tally["cases"] += 1
    recipe_data = copy.deepcopy(RECIPE)
    recipe_data["teacher"]["config"] = config
    data = SimpleNamespace(task="token", labels=LABELS)
    try:
        recipe = Recipe.from_dict(recipe_data, base_dir=demo_workspace)
        t_config = _teacher_config(recipe, data, demo_tokenizer)
        with SMALL_MEMORY:
            check_teacher(recipe, t_config, "token")
        _check_positions(recipe, t_config)
        check_cascade(recipe, t_config)
    except UserError as err:
        tally["UserError"] += 1
        msg = str(err)
        assert msg.isprintable() and len(msg) < 1500, msg
        assert "teacher" in msg or "cascade" in msg or "task" in msg, msg  # names the recipe key
        return
    except Exception:
        tally["other exception"] += 1
        raise
    tally["parsed"] += 1  # passed every check
    from cascade_kd.students.hub import model_on_meta

    meta = model_on_meta(t_config, "token")  # within 2 GiB (checked above): built for real only below 3M parameters
    if sum(p.numel() for p in meta.parameters()) > 3_000_000:
        return
    torch.manual_seed(0)
    teacher = create_model(recipe.teacher.config, "token", LABELS, len(demo_tokenizer), demo_tokenizer.pad_token_id)
    ids = torch.randint(5, len(demo_tokenizer), (2, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        assert teacher.eval()(**batch).logits.shape == (2, 9, len(LABELS))
        student = build_student(teacher, recipe.cascade.stages[0].student)
        assert student.eval()(**batch).logits.shape == (2, 9, len(LABELS))
