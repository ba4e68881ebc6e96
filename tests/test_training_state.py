"""An interrupted stage resumes to exactly the weights of an uninterrupted one (CPU, fixed seed)."""

import pytest
import torch

import cascade_kd.engine as engine
from cascade_kd.data.encode import encode
from cascade_kd.data.readers import read_examples
from cascade_kd.engine import LossTerm, build_loss_terms, train
from cascade_kd.losses import HardLabelCE
from cascade_kd.models import build_student, use_attention_outputs
from cascade_kd.recipe import LossConfig, StudentConfig, TrainConfig
from cascade_kd.training_state import has_state
from conftest import tiny_bert

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
CFG = TrainConfig(epochs=3, batch_size=16, lr=1e-3, precision="fp32", checkpoint_every=2)


@pytest.fixture(scope="module")
def data(demo_workspace, tokenizer):
    examples = read_examples(demo_workspace / "data" / "de" / "train.conll", fmt="conll", task="token", lang="de", limit=80)
    return encode(examples, tokenizer, task="token", label2id={l: i for i, l in enumerate(LABELS)}, max_length=64)


def _distil(data, state_dir, teacher):
    """A width-changing distillation stage (projections, dropout RNG, scheduler all in play)."""
    torch.manual_seed(1)
    student = build_student(teacher, StudentConfig(layers=1, init="random", hidden=16, heads=2, embeddings="pca"))
    losses = {"kl": LossConfig(temperature=2.0), "hidden_mse": LossConfig(), "attention_mse": LossConfig(head_reduction="mean")}
    terms, projections = build_loss_terms(losses, teacher.config, student.config, where="t")
    use_attention_outputs(teacher, True)
    use_attention_outputs(student, True)
    scores = lambda m: -float(sum(p.detach().float().pow(2).sum() for p in m.parameters()))  # deterministic in the weights
    result = train(student, data, CFG, terms=terms, projections=projections, teacher=teacher, evaluate=scores,
                   pad_id=0, seed=5, state_dir=state_dir)
    return student, projections, result


class _Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at", [3, 7, 12])  # mid-epoch after a checkpoint, right after an epoch end, late
def test_resume_after_a_crash_gives_identical_weights(data, tmp_path, monkeypatch, crash_at):
    teacher = tiny_bert(layers=2, hidden=32).eval()
    ref_student, ref_proj, ref = _distil(data, tmp_path / "ref", teacher)

    calls = {"n": 0}
    real_collate = engine.collate

    def crashing_collate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise _Crash
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(engine, "collate", crashing_collate)
    with pytest.raises(_Crash):
        _distil(data, tmp_path / "run", teacher)
    assert has_state(tmp_path / "run")
    monkeypatch.setattr(engine, "collate", real_collate)
    student, proj, result = _distil(data, tmp_path / "run", teacher)

    assert result.steps == ref.steps and result.history == ref.history
    for a, b in ((student, ref_student), (proj, ref_proj)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb)


def test_plain_stage_without_state_dir_writes_nothing(data, tmp_path):
    train(tiny_bert(layers=1), data, CFG.model_copy(update={"epochs": 1}), terms=[LossTerm("ce", 1.0, HardLabelCE())], pad_id=0)
    assert not any(tmp_path.iterdir())
