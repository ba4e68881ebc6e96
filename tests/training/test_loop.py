"""The training engine's contracts: what is frozen stays bit-identical, the teacher is never
trained, projections belong to the trainable module, selection keeps the best dev weights."""

import pytest
import torch
from torch import nn

from cascade_kd.data.encode import collate, encode
from cascade_kd.data.readers import read_examples
from cascade_kd.training.loop import DistillationModule, LossTerm, TrainingError, build_loss_terms, make_optimizer, train
from cascade_kd.errors import UserError
from cascade_kd.students.features import extract_features
from cascade_kd.losses.functions import HardLabelCE
from cascade_kd.students import build_student
from cascade_kd.students.hub import use_attention_outputs
from cascade_kd.config.schema import LossConfig, StudentConfig, TrainConfig
from tests.helpers import tiny_bert

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


@pytest.fixture(scope="module")
def train_data(demo_workspace, tokenizer):
    examples = read_examples(demo_workspace / "data" / "en" / "train.conll", fmt="conll", task="token", lang="en", limit=64)
    return encode(examples, tokenizer, task="token", label2id={l: i for i, l in enumerate(LABELS)}, max_length=64)


CFG = TrainConfig(epochs=1, batch_size=16, lr=1e-3, precision="fp32", warmup_ratio=0.0)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_frozen_embeddings_are_bit_identical_and_not_optimised(train_data):
    student = build_student(tiny_bert(layers=2), StudentConfig(layers=2, freeze_embeddings=True))
    before = _snapshot(student)
    optimizer = make_optimizer(DistillationModule(student, nn.ModuleDict()), CFG)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(student.bert.embeddings.word_embeddings.weight) not in in_optimizer
    train(student, train_data, CFG, terms=[LossTerm("ce", 1.0, HardLabelCE())], pad_id=0)
    after = student.state_dict()
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        key = f"bert.embeddings.{name}.weight"
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["bert.encoder.layer.0.attention.self.query.weight"], after["bert.encoder.layer.0.attention.self.query.weight"])


def test_distillation_leaves_the_teacher_untouched_and_trains_projections(train_data):
    teacher = tiny_bert(layers=3, hidden=32)
    student = build_student(teacher, StudentConfig(layers=1, init="random", hidden=16, heads=4, embeddings="pca"))
    losses = {"kl": LossConfig(temperature=2.0), "hidden_mse": LossConfig(layer_map="uniform"),
              "attention_mse": LossConfig(layer_map="top_only")}
    terms, projections = build_loss_terms(losses, teacher.config, student.config, where="test")
    assert sorted(projections) == ["hidden_mse_0", "hidden_mse_1"]  # one per mapped student layer
    use_attention_outputs(teacher, True)
    use_attention_outputs(student, True)
    t_before, p_before = _snapshot(teacher), _snapshot(projections)
    module = DistillationModule(student, projections)
    assert {id(p) for p in projections.parameters()} <= {id(p) for p in module.parameters()}
    train(student, train_data, CFG, terms=terms, projections=projections, teacher=teacher, pad_id=0)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_before.items())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(v, projections.state_dict()[k]) for k, v in p_before.items())


def test_best_dev_weights_are_kept(train_data):
    student = tiny_bert(layers=1)
    seen, scores = [], iter([0.5, 0.9, 0.1])

    def evaluate(model):
        seen.append(_snapshot(model))
        return next(scores)

    cfg = CFG.model_copy(update={"epochs": 3})
    result = train(student, train_data, cfg, terms=[LossTerm("ce", 1.0, HardLabelCE())], evaluate=evaluate, pad_id=0)
    assert result.best_score == 0.9 and result.best_epoch == 2
    final = student.state_dict()
    assert all(torch.equal(final[k], v) for k, v in seen[1].items())
    assert not all(torch.equal(final[k], v) for k, v in seen[2].items())


def test_training_is_deterministic_for_a_seed(train_data):
    def run():
        student = tiny_bert(layers=1)
        train(student, train_data, CFG, terms=[LossTerm("ce", 1.0, HardLabelCE())], pad_id=0, seed=3)
        return student.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


class _Exploding(nn.Module):
    def forward(self, logits, labels):
        return logits.sum() * float("nan")


def test_non_finite_loss_stops_with_the_step_and_term(train_data):
    student = tiny_bert(layers=1)
    with pytest.raises(TrainingError, match=r"step 1 .*term\(s\) ce"):
        train(student, train_data, CFG, terms=[LossTerm("ce", 1.0, _Exploding())], pad_id=0, desc="stage-x")


def test_attention_losses_need_equal_heads_unless_averaged():
    teacher, student = tiny_bert(layers=2, heads=4).config, tiny_bert(layers=1, heads=2).config
    with pytest.raises(Exception, match="head_reduction"):
        build_loss_terms({"attention_mse": LossConfig()}, teacher, student, where="s")
    terms, _ = build_loss_terms({"attention_mse": LossConfig(head_reduction="mean")}, teacher, student, where="s")
    assert terms[0].pairs == [(2, 1)]


def test_stages_may_use_different_precisions(train_data):
    """accelerate keeps one state per process: each stage's Accelerator must start afresh."""
    for precision in ("bf16", "fp32"):
        cfg = CFG.model_copy(update={"precision": precision, "epochs": 0.25})
        train(tiny_bert(layers=1), train_data, cfg, terms=[LossTerm("ce", 1.0, HardLabelCE())], pad_id=0)


def test_grad_accumulation_ends_on_a_whole_optimiser_step(train_data):
    cfg = CFG.model_copy(update={"grad_accum": 3})  # 4 batches per epoch -> 6 micro-batches, 2 steps
    result = train(tiny_bert(layers=1), train_data, cfg, terms=[LossTerm("ce", 1.0, HardLabelCE())], pad_id=0)
    assert result.steps % 3 == 0


def test_epoch_draw_and_batch_transform_see_exactly_the_drawn_examples(train_data):
    """Language sampling hands the engine each epoch's indices; dynamic masking sees every batch with
    its members and epoch. Both are called as the docstring says, and steps follow the data size."""
    seen = []

    def record(batch, members, epoch, slots):
        seen.append((epoch, list(members)))
        assert len(slots) == len(members) and len(set(slots)) == len(slots)
        return batch

    def draw(epoch):  # only the first 16 examples, each 4 times: 64 draws like the 64 examples
        return [i for i in range(16) for _ in range(4)] if epoch == 0 else list(range(16, 64)) + list(range(16))

    cfg = CFG.model_copy(update={"epochs": 2})
    result = train(tiny_bert(layers=1), train_data, cfg, terms=[LossTerm("ce", 1.0, HardLabelCE())], pad_id=0,
                   epoch_draw=draw, batch_transform=record)
    assert result.steps == 8  # 64 examples / batch 16, twice
    first = sorted(i for epoch, members in seen if epoch == 0 for i in members)
    second = sorted(i for epoch, members in seen if epoch == 1 for i in members)
    assert first == sorted(draw(0)) and second == sorted(draw(1))


def test_relation_loss_distils_across_widths_and_head_counts(train_data):
    """relation_kl (MiniLMv2) needs no projection and no equal heads: a 32-wide 4-head teacher teaches
    a 16-wide 2-head student through 4 relation heads; only the student trains."""
    teacher = tiny_bert(layers=2)
    student = build_student(teacher, StudentConfig(layers=1, hidden=16, heads=2, init="random", embeddings="random"))
    terms, projections = build_loss_terms({"relation_kl": LossConfig(layer_map=[["last", "last"]])},
                                          teacher.config, student.config, where="stage")
    assert not len(projections) and terms[0].module.relation_heads == 4  # default: the teacher's heads
    before_t = _snapshot(teacher)
    batch = collate(train_data[:16], 0)

    def relation_loss():
        with torch.no_grad():
            s = extract_features(student.eval(), batch, hidden=False, attentions=False, qkv_layers=["last"])
            t = extract_features(teacher.eval(), batch, hidden=False, attentions=False, qkv_layers=["last"])
        return float(terms[0].module(s.relation_states("last"), t.relation_states("last"), s.attention_mask))

    start = relation_loss()
    train(student, train_data, CFG.model_copy(update={"epochs": 3, "lr": 3e-3}), terms=terms, teacher=teacher, pad_id=0)
    assert relation_loss() < 0.8 * start
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_t.items())
    with pytest.raises(UserError, match="not a multiple of 3"):
        build_loss_terms({"relation_kl": LossConfig(relation_heads=3)}, teacher.config, student.config, where="stage")
