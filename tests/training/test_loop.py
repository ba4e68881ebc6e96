"""The training loop's contracts: what is frozen stays bit-identical, the teacher is never
trained, projections belong to the trainable module, selection keeps the best dev weights."""

import pytest
import torch

from cascade_kd.data.encode import collate, encode
from cascade_kd.data.readers import read_examples
from cascade_kd.errors import UserError
from cascade_kd.losses.base import LossTerm
from cascade_kd.losses.logits import HardLabelCE
from cascade_kd.losses.registry import build_terms
from cascade_kd.students.features import extract_features
from cascade_kd.training.data import StageData
from cascade_kd.training.loop import TrainingError, train
from cascade_kd.training.setup import make_optimizer
from cascade_kd.training.task import DistillationTask
from cascade_kd.training.teacher import LiveTeacher
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


def _ce(student):
    """Fine-tuning: the hard-label loss alone, no teacher."""
    return DistillationTask(student, [LossTerm(1.0, HardLabelCE())])


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_frozen_embeddings_are_bit_identical_and_not_optimised(train_data):
    student = build_student(tiny_bert(layers=2), StudentConfig(layers=2, freeze_embeddings=True))
    before = _snapshot(student)
    optimizer = make_optimizer(_ce(student), CFG)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(student.bert.embeddings.word_embeddings.weight) not in in_optimizer
    train(_ce(student), StageData(train_data), CFG)
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
    task = DistillationTask(student, build_terms(losses, teacher.config, student.config, where="test"), LiveTeacher(teacher))
    projections = task.projections
    assert sorted(projections) == ["hidden_mse_0", "hidden_mse_1"]  # one per mapped student layer
    use_attention_outputs(teacher, True)
    use_attention_outputs(student, True)
    t_before, p_before = _snapshot(teacher), _snapshot(projections)
    # the projections are the task's (optimiser, DDP, checkpoint); the teacher is not
    assert {id(p) for p in projections.parameters()} <= {id(p) for p in task.parameters()}
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in task.parameters()}
    assert set(task.state_dict()) == {f"student.{k}" for k in student.state_dict()} | {f"projections.{k}" for k in projections.state_dict()}
    train(task, StageData(train_data), CFG)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_before.items())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(not torch.equal(v, projections.state_dict()[k]) for k, v in p_before.items())


def test_best_dev_weights_are_kept(train_data):
    student = tiny_bert(layers=1)
    seen, scores = [], iter([0.5, 0.9, 0.1])

    def evaluate(model):
        seen.append(_snapshot(model))
        return next(scores)

    cfg = CFG.model_copy(update={"epochs": 3})
    result = train(_ce(student), StageData(train_data), cfg, evaluate=evaluate)
    assert result.best_score == 0.9 and result.best_epoch == 2
    final = student.state_dict()
    assert all(torch.equal(final[k], v) for k, v in seen[1].items())
    assert not all(torch.equal(final[k], v) for k, v in seen[2].items())


def test_training_is_deterministic_for_a_seed(train_data):
    def run():
        student = tiny_bert(layers=1)
        train(_ce(student), StageData(train_data, seed=3), CFG)
        return student.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


class _Exploding(HardLabelCE):
    def forward(self, logits, labels):
        return logits.sum() * float("nan")


def test_non_finite_loss_stops_with_the_step_and_term(train_data):
    student = tiny_bert(layers=1)
    with pytest.raises(TrainingError, match=r"step 1 .*term\(s\) ce"):
        train(DistillationTask(student, [LossTerm(1.0, _Exploding())]), StageData(train_data), CFG, desc="stage-x")


def test_attention_losses_need_equal_heads_unless_averaged():
    teacher, student = tiny_bert(layers=2, heads=4).config, tiny_bert(layers=1, heads=2).config
    with pytest.raises(Exception, match="head_reduction"):
        build_terms({"attention_mse": LossConfig()}, teacher, student, where="s")
    terms = build_terms({"attention_mse": LossConfig(head_reduction="mean")}, teacher, student, where="s")
    assert terms[0].loss.pairs == [(2, 1)]


def test_stages_may_use_different_precisions(train_data):
    """accelerate keeps one state per process: each stage's Accelerator must start afresh. A bf16
    stage trains in bf16 (its weights differ from fp32 training), and an fp32 stage after it gives
    exactly the weights of an fp32 stage run alone."""

    def stage(precision):
        torch.manual_seed(0)
        student = tiny_bert(layers=1)
        torch.manual_seed(1)  # the same dropout draws in every run
        train(_ce(student), StageData(train_data), CFG.model_copy(update={"precision": precision, "epochs": 0.25}))
        return student.state_dict()

    alone = stage("fp32")
    in_bf16 = stage("bf16")
    after_bf16 = stage("fp32")
    assert all(torch.equal(alone[k], after_bf16[k]) for k in alone)
    assert not all(torch.equal(alone[k], in_bf16[k]) for k in alone)


def _count_optimiser_steps(monkeypatch) -> list:
    steps, step = [], torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (steps.append(1), step(self, *a, **k))[1])
    return steps


def test_grad_accumulation_steps_the_optimiser_every_grad_accum_batches_and_at_the_end(train_data, monkeypatch):
    optimiser_steps = _count_optimiser_steps(monkeypatch)
    cfg = CFG.model_copy(update={"grad_accum": 3})  # 4 batches: an optimiser step after 3, the last after 1
    result = train(_ce(tiny_bert(layers=1)), StageData(train_data), cfg)
    assert result.steps == 4 and len(optimiser_steps) == 2


def test_grad_accumulation_beyond_the_run_trains_the_epochs_asked_for(train_data, monkeypatch):
    """grad_accum larger than the run's batches: 2 epochs of 4 batches are 8 micro-batches and one
    optimiser step on their mean gradient, exactly what grad_accum 8 gives (the loop used to run on
    to 64 micro-batches, "epoch 16/2")."""
    optimiser_steps = _count_optimiser_steps(monkeypatch)

    def run(grad_accum):
        torch.manual_seed(0)
        student = tiny_bert(layers=1)
        torch.manual_seed(1)  # the same dropout draws in both runs
        result = train(_ce(student), StageData(train_data), CFG.model_copy(update={"grad_accum": grad_accum, "epochs": 2}))
        return result, student.state_dict()

    (beyond, weights), (exact, expected) = run(64), run(8)
    assert beyond.steps == exact.steps == 8 and len(optimiser_steps) == 2  # one per run
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def test_checkpoints_come_at_the_first_optimiser_step_checkpoint_every_micro_batches_after_the_last(
        train_data, tmp_path, monkeypatch):
    """grad_accum 3, checkpoint_every 2, 3 epochs of 4 batches: optimiser steps after micro-batches
    3, 6, 9 and 12 (accumulation runs across epochs), so saved at each (and again at the end, after
    the last evaluation); before, only where a multiple of 2 was also a step's end: 6 and 12."""
    import cascade_kd.training.loop as loop

    saved = []
    real = loop.save_state
    monkeypatch.setattr(loop, "save_state", lambda directory, module, opt, sched, progress, *rest:
                        saved.append(progress.step) or real(directory, module, opt, sched, progress, *rest))
    cfg = CFG.model_copy(update={"grad_accum": 3, "checkpoint_every": 2, "epochs": 3})
    train(_ce(tiny_bert(layers=1)), StageData(train_data), cfg, state_dir=tmp_path / "state")
    assert saved == [3, 6, 9, 12, 12]


def test_a_stage_resumed_inside_its_last_partial_step_ends_like_an_uninterrupted_one(train_data, tmp_path):
    """5 batches with grad_accum 2: checkpoints after micro-batches 2 and 4 (optimiser steps), the
    last step takes the fifth batch alone. A crash after the second checkpoint resumes to the same weights."""
    cfg = CFG.model_copy(update={"grad_accum": 2, "checkpoint_every": 2, "batch_size": 13})  # 64 / 13: 5 batches

    def run(state_dir, crash_at=None):
        import cascade_kd.training.data as stage_data

        torch.manual_seed(0)
        student = tiny_bert(layers=1)
        torch.manual_seed(1)
        calls, collate_ = [0], stage_data.collate

        def counting(*args, **kwargs):
            calls[0] += 1
            if calls[0] == crash_at:
                raise KeyboardInterrupt
            return collate_(*args, **kwargs)

        stage_data.collate = counting
        try:
            result = train(_ce(student), StageData(train_data), cfg, state_dir=state_dir)
        finally:
            stage_data.collate = collate_
        return result, student.state_dict()

    reference, expected = run(tmp_path / "ref")
    assert reference.steps == 5
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", crash_at=5)
    resumed, weights = run(tmp_path / "run")
    assert resumed.steps == 5 and all(torch.equal(weights[k], expected[k]) for k in expected)


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
    result = train(_ce(tiny_bert(layers=1)), StageData(train_data, epoch_draw=draw, batch_transform=record), cfg)
    assert result.steps == 8  # 64 examples / batch 16, twice
    first = sorted(i for epoch, members in seen if epoch == 0 for i in members)
    second = sorted(i for epoch, members in seen if epoch == 1 for i in members)
    assert first == sorted(draw(0)) and second == sorted(draw(1))


def test_relation_loss_distils_across_widths_and_head_counts(train_data):
    """relation_kl (MiniLMv2) needs no projection and no equal heads: a 32-wide 4-head teacher teaches
    a 16-wide 2-head student through 4 relation heads; only the student trains."""
    teacher = tiny_bert(layers=2)
    student = build_student(teacher, StudentConfig(layers=1, hidden=16, heads=2, init="random", embeddings="random"))
    terms = build_terms({"relation_kl": LossConfig(layer_map=[["last", "last"]])}, teacher.config, student.config,
                        where="stage")
    task = DistillationTask(student, terms, LiveTeacher(teacher))
    assert not len(task.projections) and terms[0].loss.relation_heads == 4  # default: the teacher's heads
    before_t = _snapshot(teacher)
    batch = collate(train_data[:16], 0)

    def relation_loss():
        with torch.no_grad():
            s = extract_features(student.eval(), batch, hidden=False, attentions=False, qkv_layers=["last"])
            t = extract_features(teacher.eval(), batch, hidden=False, attentions=False, qkv_layers=["last"])
        return float(terms[0].loss(s.relation_states("last"), t.relation_states("last"), s.attention_mask))

    start = relation_loss()
    train(task, StageData(train_data), CFG.model_copy(update={"epochs": 3, "lr": 3e-3}))
    assert relation_loss() < 0.8 * start
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_t.items())
    with pytest.raises(UserError, match="not a multiple of 3"):
        build_terms({"relation_kl": LossConfig(relation_heads=3)}, teacher.config, student.config, where="stage")


def test_the_teacher_is_a_frozen_side_never_a_submodule():
    teacher, student = tiny_bert(layers=2), tiny_bert(layers=1)
    terms = build_terms({"kl": LossConfig()}, teacher.config, student.config, where="s")
    with pytest.raises(TypeError, match="LiveTeacher"):  # as a module it would be trained, synchronised, saved
        DistillationTask(student, terms, teacher)
    with pytest.raises(ValueError, match="need a teacher"):
        DistillationTask(student, terms)
