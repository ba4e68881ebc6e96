"""A frozen teacher split between processes (cascade_kd/training/sharding.py, `train.teacher_sharding: fsdp`).

The sharded copy must compute exactly what the teacher computes (logits, hidden states, attentions,
query/key/value projections) while each process holds only its share of the weights, and the
teacher itself must stay a plain, unchanged model. Whole runs with a sharded teacher are checked
against one process in tests/training/test_distributed.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import BertConfig, BertForMaskedLM, BertForTokenClassification

from cascade_kd.training.sharding import shard_blocks

WORKER = Path(__file__).with_name("sharding_worker.py")


def _tiny(cls):
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    return cls(config)


def test_layers_and_untied_embeddings_are_groups_of_their_own():
    model = _tiny(BertForTokenClassification)
    blocks = shard_blocks(model)
    assert [type(b).__name__ for b in blocks] == ["BertEmbeddings", "BertLayer", "BertLayer"]
    assert blocks[1] is model.bert.encoder.layer[0]


def test_embeddings_tied_to_the_masked_lm_decoder_stay_in_the_root_group():
    # FSDP gathers a weight with the group that owns it: a group of their own would leave the
    # decoder's (tied) weight sharded when the head runs
    model = _tiny(BertForMaskedLM)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert [type(b).__name__ for b in shard_blocks(model)] == ["BertLayer", "BertLayer"]


def test_sharded_teacher_gives_the_teachers_features_and_halves_what_each_process_holds():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    results = {r["model"]: r for r in json.loads(line[len("RESULT "):])}
    assert set(results) == {"BertForTokenClassification", "BertForMaskedLM"}
    for name, r in results.items():
        # the same float operations on the same (gathered) weights; the masked-LM head runs on every
        # position through the whole model instead of at the masked ones: last-bit differences only
        assert r["max_gap"] <= 1e-6, name
        # every weight is split in two (rows rounded up on the first process), and stays split
        # after forward passes: what no layer group holds is freed again by the root group's hook
        assert sum(r["held"]) == r["total"], name
        assert max(r["held"]) <= r["total"] / 2 + 64, name
        assert r["teacher_unchanged"] and r["teacher_plain"], name


def test_sharding_with_the_teacher_cache_is_refused_with_the_key(tmp_path, demo_workspace):
    from cascade_kd.cascade import prepare
    from cascade_kd.errors import RecipeError
    from cascade_kd.config.schema import load_recipe

    text = (demo_workspace / "recipe.yaml").read_text()
    assert "\ntrain:\n" in text
    text = text.replace("\ntrain:\n", "\ntrain:\n  teacher_sharding: fsdp\n  teacher_cache: bf16\n", 1)
    path = demo_workspace / "sharded-cache.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as err:
        prepare(load_recipe(path), tmp_path / "run")
    assert "sharded teacher" in err.value.message
    assert err.value.where.endswith("train.teacher_cache")
    assert not (tmp_path / "run").exists()
