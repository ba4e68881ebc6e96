"""A large word-embedding table is saved as a shard of its own, and a student that keeps a frozen
copy of its teacher's table links that shard instead of storing it again (an XLM-R-vocabulary
table is 384 MB of a 6-layer student's 427 MB). The sharded checkpoint stays a plain Hugging Face
one: it loads, resumes, trims, exports and is timed as a single file is. The size threshold is
lowered here so that the tiny models split."""

from __future__ import annotations

import json

import pytest
import torch

import cascade_kd as ckd
import cascade_kd.students.hub as hub
from cascade_kd.fileio import weight_files, weights_size
from tests.helpers import tiny_recipe, write_recipe


@pytest.fixture
def split_every_table(monkeypatch):
    monkeypatch.setattr(hub, "EMBEDDING_SHARD_BYTES", 1)


def test_the_table_is_a_shard_of_its_own_and_loads_as_saved(split_every_table, tmp_path, tokenizer):
    from tests.helpers import tiny_bert

    model = tiny_bert(vocab=len(tokenizer))
    hub.save_checkpoint(model, tokenizer, tmp_path / "m")
    index = json.loads((tmp_path / "m" / hub.SHARD_INDEX).read_text())
    assert [p.name for p in weight_files(tmp_path / "m")] == [hub.EMBEDDING_SHARD, hub.REST_SHARD]
    assert not (tmp_path / "m" / "model.safetensors").exists()
    table = [k for k, shard in index["weight_map"].items() if shard == hub.EMBEDDING_SHARD]
    assert table == ["bert.embeddings.word_embeddings.weight"]
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in model.state_dict().values())
    loaded = hub.load_checkpoint(tmp_path / "m", "token")
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_below_the_threshold_a_model_stays_one_file(tmp_path, tokenizer):
    from tests.helpers import tiny_bert

    hub.save_checkpoint(tiny_bert(vocab=len(tokenizer)), tokenizer, tmp_path / "m")
    assert [p.name for p in weight_files(tmp_path / "m")] == ["model.safetensors"]


def test_frozen_students_link_the_teachers_table_and_deploy_as_usual(split_every_table, ws):
    recipe = tiny_recipe(ws, name="shared", data={"test": None, "max_train_per_language": 64},
                         teacher={"train": {"epochs": 1}},
                         cascade={"stages": [{"name": "free", "student": {"layers": 1, "freeze_embeddings": False}},
                                             {"name": "ta", "student": {"layers": 1, "freeze_embeddings": True}}],
                                  "direct": True})
    run = ws / "run"
    metrics = ckd.run(write_recipe(ws, recipe), run, say=lambda m: None)

    def inode(model, shard=hub.EMBEDDING_SHARD):
        return (run / model / shard).stat().st_ino

    # a student that trained its table has its own; the next stage keeps that table frozen: linked
    assert inode("stages/free") != inode("teacher")
    assert inode("stages/ta") == inode("stages/free")
    # the direct model (the last stage's spec: frozen) keeps the teacher's
    assert inode("stages/direct") == inode("teacher")
    assert inode("stages/ta", hub.REST_SHARD) != inode("stages/free", hub.REST_SHARD)
    # resumed, every finished model loads from its shards and none is saved again
    saved = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run.rglob("model-0000*.safetensors")}
    again = ckd.run(run / "recipe.yaml", run, resume=True, say=lambda m: None)
    assert [m["average"] for m in again["models"]] == [m["average"] for m in metrics["models"]]
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run.rglob("model-0000*.safetensors")} == saved
    # trim, export and bench read the sharded student
    trim = ckd.trim(run / "stages" / "ta", run / "stages" / "ta" / "trimmed", recipe=run / "recipe.yaml", say=lambda m: None)
    assert trim["size_mb_before"] == pytest.approx(weights_size(run / "stages" / "ta") / 2**20)
    export = ckd.export_onnx(run / "stages" / "ta", say=lambda m: None)
    assert export["fp32"]["size_mb"] > 0
    ckd.bench(run, batch_sizes=(1,), seq_lens=(16,), repeats=1, backends=("fp32",), say=lambda m: None)
    timed = {m["name"]: m for m in json.loads((run / "metrics.json").read_text())["latency"]["models"]}
    assert timed["ta"]["size_mb"] == pytest.approx(weights_size(run / "stages" / "ta") / 2**20)


def test_a_damaged_sharded_model_is_named_and_made_again(split_every_table, ws):
    recipe = tiny_recipe(ws, name="shared", data={"test": None, "max_train_per_language": 64},
                         teacher={"train": {"epochs": 1}},
                         cascade={"stages": [{"name": "ta", "student": {"layers": 1, "freeze_embeddings": True}}]})
    run = ws / "run"
    ckd.run(write_recipe(ws, recipe), run, say=lambda m: None)
    model = run / "stages" / "ta"

    def missing_index():
        (model / hub.SHARD_INDEX).unlink()
        return hub.SHARD_INDEX

    def index_not_json():
        (model / hub.SHARD_INDEX).write_text("{not json")
        return hub.SHARD_INDEX

    def missing_shard():
        (model / hub.EMBEDDING_SHARD).unlink()
        return hub.EMBEDDING_SHARD

    for damage in (missing_index, index_not_json, missing_shard):
        named = damage()
        assert hub.checkpoint_problem(model)[0].name == named, damage.__name__
        lines = []
        ckd.run(run / "recipe.yaml", run, resume=True, say=lines.append)
        assert any(named in line and "ta is made again" in line for line in lines), (damage.__name__, lines)
        assert hub.checkpoint_problem(model) is None
        assert (model / hub.EMBEDDING_SHARD).stat().st_ino == (run / "teacher" / hub.EMBEDDING_SHARD).stat().st_ino
