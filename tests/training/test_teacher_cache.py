"""The teacher-output cache gives back what the teacher computes, is never stale, and resumes."""

from __future__ import annotations

import random
import shutil
from collections import namedtuple

import pytest
import torch

from cascade_kd.training import teacher_cache as tc
from cascade_kd.data.encode import IGNORE, Encoded, collate
from cascade_kd.errors import UserError
from cascade_kd.losses.attention import AttentionMSE
from cascade_kd.losses.base import LossTerm
from cascade_kd.losses.hidden import HiddenMSE
from cascade_kd.losses.logits import SoftLogitKL
from cascade_kd.students.features import extract_features
from cascade_kd.training.data import StageData
from cascade_kd.training.loop import train
from cascade_kd.training.task import DistillationTask
from cascade_kd.training.teacher import CachedTeacher, LiveTeacher
from cascade_kd.config.schema import TrainConfig
from tests.helpers import tiny_bert


def _data(n: int, token: bool, seed: int = 0) -> list[Encoded]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.randint(3, 20)
        ids = [rng.randint(5, 799) for _ in range(t)]
        label = [rng.randint(0, 6) if rng.random() < 0.7 else IGNORE for _ in range(t)] if token else rng.randint(0, 6)
        out.append(Encoded(ids, [0] * t, label))
    return out


def _teacher(task: str):
    model = tiny_bert(task, layers=3).eval()
    model.set_attn_implementation("eager")
    return model


def _build(tmp_path, teacher, data, request, token=True):
    directory = tmp_path / tc.cache_key(teacher, data, request)
    tc.build_cache(teacher, data, request, directory, token_task=token, pad_id=0, batch_size=8, device="cpu",
                   say=lambda m: None)
    return directory, tc.TeacherCache(directory, request, teacher.config, token)


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_cached_features_equal_the_teachers_for_any_batch(tmp_path, task, monkeypatch):
    monkeypatch.setattr(tc, "SHARD_EXAMPLES", 7)  # several shards, batches that cross them
    token = task == "token"
    teacher, data = _teacher(task), _data(23, token)
    request = tc.CacheRequest(logits=True, hidden=(0, 3), attention=(2,), dtype="fp32")
    _, cache = _build(tmp_path, teacher, data, request, token)
    members = [22, 3, 7, 14, 0]
    batch = collate([data[i] for i in members], 0)
    with torch.no_grad():
        live = extract_features(teacher, batch, hidden=True, attentions=True)
    cached = cache.features(members, batch["attention_mask"])
    mask = batch["attention_mask"].bool()
    if token:
        torch.testing.assert_close(cached.logits[mask], live.logits[mask], rtol=1e-5, atol=1e-5)
        assert (cached.logits[~mask] == 0).all()
    else:
        torch.testing.assert_close(cached.logits, live.logits, rtol=1e-5, atol=1e-5)
    for layer in (0, 3, "last"):
        torch.testing.assert_close(cached.hidden(layer)[mask], live.hidden(layer)[mask], rtol=1e-5, atol=1e-5)
    pair = mask[:, None, :, None] & mask[:, None, None, :]
    pair = pair.expand_as(live.attention(2))
    torch.testing.assert_close(cached.attention(2)[pair], live.attention(2)[pair], rtol=1e-5, atol=1e-6)
    # only what was asked for is stored
    assert cached.hidden_states[1] is None and cached.attentions[0] is None


def test_bf16_cache_is_half_the_size_and_close(tmp_path):
    teacher, data = _teacher("token"), _data(10, True)
    request = tc.CacheRequest(logits=True, hidden=(3,), attention=(), dtype="bf16")
    directory, cache = _build(tmp_path, teacher, data, request)
    batch = collate(data[:4], 0)
    with torch.no_grad():
        live = extract_features(teacher, batch, hidden=True, attentions=False)
    got = cache.features([0, 1, 2, 3], batch["attention_mask"])
    assert got.logits.dtype == torch.bfloat16
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got.hidden(3)[mask].float(), live.hidden(3)[mask], rtol=1e-2, atol=2e-2)
    lengths = [len(x) for x in data]
    stored = (directory / "shard-00000.safetensors").stat().st_size
    estimate = tc.estimate_bytes(teacher.config, lengths, request, True)
    assert estimate == sum(lengths) * (7 + 32) * 2 + 2 * 8 * (10 + 2)
    assert estimate <= stored < estimate + 2048  # plus the safetensors header


def test_the_key_changes_with_weights_inputs_and_request():
    teacher, data = _teacher("token"), _data(6, True)
    request = tc.CacheRequest(logits=True, hidden=(3,), attention=())
    key = tc.cache_key(teacher, data, request)
    assert tc.cache_key(teacher, data, request) == key
    assert tc.cache_key(teacher, data[:-1], request) != key
    changed = [Encoded(list(x.input_ids), x.token_type_ids, x.label) for x in data]
    changed[2].input_ids[0] += 1  # one sub-word id (tokenizer, data or max_length changed)
    assert tc.cache_key(teacher, changed, request) != key
    assert tc.cache_key(teacher, data, tc.CacheRequest(logits=True, hidden=(2,), attention=())) != key
    assert tc.cache_key(teacher, data, tc.CacheRequest(logits=True, hidden=(3,), attention=(), dtype="fp16")) != key
    assert tc.cache_key(teacher, data, tc.CacheRequest(logits=True, hidden=(3,), attention=(), precision="bf16")) != key
    teacher.config.architectures = ["Anything"]  # what save_pretrained writes into a live config
    assert tc.cache_key(teacher, data, request) == key
    with torch.no_grad():
        teacher.bert.encoder.layer[1].output.dense.weight[0, 0] += 1e-3
    assert tc.cache_key(teacher, data, request) != key


def test_an_interrupted_build_computes_only_the_missing_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(tc, "SHARD_EXAMPLES", 4)
    teacher, data = _teacher("token"), _data(10, True)
    request = tc.CacheRequest(logits=True, hidden=(), attention=(), dtype="fp32")
    directory, _ = _build(tmp_path, teacher, data, request)
    before = {p.name: p.stat().st_mtime_ns for p in directory.glob("shard-*")}
    assert len(before) == 3
    (directory / "meta.json").unlink()  # as if killed before the end
    (directory / "shard-00001.safetensors").unlink()
    calls = []
    real = tc._shard_tensors
    monkeypatch.setattr(tc, "_shard_tensors", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    _, cache = _build(tmp_path, teacher, data, request)
    assert calls == [4]  # one shard of 4 examples recomputed
    assert (directory / "shard-00000.safetensors").stat().st_mtime_ns == before["shard-00000.safetensors"]
    batch = collate(data[4:8], 0)
    with torch.no_grad():
        live = extract_features(teacher, batch, hidden=False, attentions=False)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(cache.features([4, 5, 6, 7], batch["attention_mask"]).logits[mask], live.logits[mask])


def test_a_disk_too_small_is_refused_before_writing(tmp_path, monkeypatch):
    teacher, data = _teacher("token"), _data(10, True)
    request = tc.CacheRequest(logits=True, hidden=(1, 2, 3), attention=(1, 2, 3), dtype="fp32")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(UserError, match="the teacher cache needs .* but only 100.0 B is free"):
        tc.build_cache(teacher, data, request, tmp_path / "c", token_task=True, pad_id=0, batch_size=8,
                       device="cpu", say=lambda m: None)
    assert not list((tmp_path / "c").glob("shard-*"))


def test_a_stage_trained_on_the_fp32_cache_matches_the_live_teacher(tmp_path):
    teacher, data = _teacher("token"), _data(40, True)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-3, precision="fp32", checkpoint_every=None)

    def terms():
        return [LossTerm(1.0, SoftLogitKL(temperature=2.0)), LossTerm(1.0, HiddenMSE(pairs=[(3, 2)])),
                LossTerm(1.0, AttentionMSE(pairs=[(3, 2)]))]

    def student():
        model = tiny_bert("token", layers=2)
        model.set_attn_implementation("eager")
        return model

    live, cached = student(), student()
    torch.manual_seed(5)  # the same dropout draws in both runs
    train(DistillationTask(live, terms(), LiveTeacher(teacher)), StageData(data, seed=1), cfg)
    request = tc.CacheRequest(logits=True, hidden=(3,), attention=(3,), dtype="fp32")
    _, cache = _build(tmp_path, teacher, data, request)
    torch.manual_seed(5)
    train(DistillationTask(cached, terms(), CachedTeacher(cache, teacher)), StageData(data, seed=1), cfg)
    for (name, a), (_, b) in zip(live.state_dict().items(), cached.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_a_cached_teacher_refuses_features_its_cache_does_not_hold():
    from types import SimpleNamespace

    from cascade_kd.losses.base import Reads

    held = tc.CacheRequest(logits=True, hidden=(3,), attention=())
    cached = CachedTeacher(SimpleNamespace(request=held, features=lambda members, mask: "read"))
    batch = {"attention_mask": torch.ones(1, 2)}
    assert cached.run(batch, [0], Reads(logits=True, hidden=(3,)), True) == "read"
    for reads in (Reads(hidden=(2,)), Reads(attention=(3,)), Reads(qkv=(3,))):
        with pytest.raises(ValueError, match="the teacher cache holds"):
            cached.run(batch, [0], reads, True)
