"""What each loss declares, checked by hand: which features it reads of each model, what it counts
(`units`, the denominator data-parallel training weights by), what it refuses of the two models;
and the contract that a new loss is one class: registered in a test, it runs through a recipe's
stage with nothing else changed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cascade_kd.config.schema import LossConfig, StudentConfig
from cascade_kd.data.encode import IGNORE, UNLABELLED, collate
from cascade_kd.errors import RecipeError, UserError
from cascade_kd.losses.base import Loss, LossTerm, Reads, TeacherFeatures, masked_mean
from cascade_kd.losses.guides import DenseGuidance
from cascade_kd.losses.registry import LOSSES, build_terms
from cascade_kd.students import student_config
from cascade_kd.students.features import Features
from cascade_kd.training.task import DistillationTask
from cascade_kd.training.teacher import LiveTeacher
from tests.helpers import tiny_bert, tiny_recipe

# two sequences of 3 and 2 real tokens (padded to 4): 5 real tokens, 3*3 + 2*2 = 13 (query, key)
# pairs; token labels at 3 positions, of which 2 are gold (the third is unlabelled transfer text)
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
TOKEN_LABELS = torch.tensor([[IGNORE, 2, UNLABELLED, IGNORE], [0, IGNORE, IGNORE, IGNORE]])
TOKEN_BATCH = {"attention_mask": MASK, "labels": TOKEN_LABELS}
SEQUENCE_BATCH = {"attention_mask": MASK, "labels": torch.tensor([1, IGNORE])}  # the second: transfer text


def _terms(names, teacher_layers=4, student_layers=2, **options):
    teacher, student = tiny_bert(layers=teacher_layers).config, tiny_bert(layers=student_layers).config
    return {t.name: t.loss for t in build_terms({n: LossConfig(**options.get(n, {})) for n in names}, teacher, student,
                                                 where="stage")}


def test_every_loss_counts_its_own_items_in_a_token_batch():
    losses = _terms(LOSSES, relation_kl={"relation_heads": 2})
    units = {name: int(loss.units(TOKEN_BATCH)) for name, loss in losses.items()}
    assert units == {"kl": 3, "logit_mse": 3, "ce": 2, "hidden_mse": 5, "hidden_cos": 5, "attention_mse": 13,
                     "attention_kl": 5, "relation_kl": 5}
    at_tokens = _terms(["kl", "logit_mse"], kl={"positions": "tokens"}, logit_mse={"positions": "tokens"})
    assert {name: int(loss.units(TOKEN_BATCH)) for name, loss in at_tokens.items()} == {"kl": 5, "logit_mse": 5}
    assert int(DenseGuidance(losses["kl"]).units(TOKEN_BATCH)) == 3  # every guide's term has the same denominator


def test_logit_losses_count_sequences_and_ce_the_gold_labels_of_a_sequence_batch():
    losses = _terms(["kl", "logit_mse", "ce"])
    assert {name: int(loss.units(SEQUENCE_BATCH)) for name, loss in losses.items()} == {"kl": 2, "logit_mse": 2, "ce": 1}


def test_the_units_are_the_denominators_of_the_losses():
    """A loss's value times its units is additive over a split of the batch: what share_scales relies on."""
    torch.manual_seed(0)
    b, t, c = 2, 4, 3
    s = Features(torch.randn(b, t, c), None, None, MASK.bool())
    tf = TeacherFeatures(Features(torch.randn(b, t, c), None, None, MASK.bool()))
    for loss in _terms(["kl", "logit_mse", "ce"]).values():
        whole = loss.compute(s, tf, TOKEN_BATCH) * loss.units(TOKEN_BATCH)
        parts = 0
        for rows in ([0], [1]):
            sub = {k: v[rows] for k, v in TOKEN_BATCH.items()}
            sf = Features(s.logits[rows], None, None, s.attention_mask[rows])
            part_t = TeacherFeatures(Features(tf.teacher.logits[rows], None, None, s.attention_mask[rows]))
            parts = parts + loss.compute(sf, part_t, sub) * loss.units(sub)
        torch.testing.assert_close(whole, parts, msg=loss.name)


def test_each_loss_reads_exactly_the_features_of_its_layer_map():
    losses = _terms(LOSSES, hidden_mse={"layer_map": "uniform"}, hidden_cos={"layer_map": [[1, 0]]},
                    attention_mse={"layer_map": "uniform"}, relation_kl={"relation_heads": 2})
    reads = {name: (loss.student_reads, loss.teacher_reads) for name, loss in losses.items()}
    logits = Reads(logits=True)
    assert reads["kl"] == reads["logit_mse"] == (logits, logits)
    assert reads["ce"] == (logits, None)  # no teacher
    # uniform, 4 -> 2 layers: (0, 0), (2, 1), (4, 2) for hidden states; (2, 1), (4, 2) for attention
    assert reads["hidden_mse"] == (Reads(hidden=(0, 1, 2)), Reads(hidden=(0, 2, 4)))
    assert reads["hidden_cos"] == (Reads(hidden=(0,)), Reads(hidden=(1,)))
    assert reads["attention_mse"] == (Reads(attention=(1, 2)), Reads(attention=(2, 4)))
    assert reads["attention_kl"] == (Reads(attention=(2,)), Reads(attention=(4,)))  # top_only
    assert reads["relation_kl"] == (Reads(qkv=(2,)), Reads(qkv=(4,)))
    task = DistillationTask(tiny_bert(layers=2), [LossTerm(1.0, loss) for loss in losses.values()],
                            LiveTeacher(tiny_bert(layers=4)))
    assert task.student_reads == Reads(True, (0, 1, 2), (1, 2), (2,))
    assert task.teacher_reads == Reads(True, (0, 1, 2, 4), (2, 4), (4,))  # what a teacher cache would have to hold
    assert DistillationTask(tiny_bert(layers=2), [LossTerm(1.0, losses["ce"])], LiveTeacher(tiny_bert())).teacher is None


def test_losses_refuse_what_the_two_models_cannot_do():
    teacher = tiny_bert(layers=2, hidden=32).config
    bilstm, _, _ = student_config(teacher, StudentConfig(kind="bilstm", hidden=8, embedding_size=24), where="s")
    for name, what in (("attention_kl", "attention maps"), ("relation_kl", "self-attention relations")):
        with pytest.raises(RecipeError, match=f"{name} compares {what}, but the student is a BiLSTM, which has none"):
            build_terms({name: LossConfig()}, teacher, bilstm, where="stage")
        with pytest.raises(RecipeError, match="the teacher is a BiLSTM"):
            build_terms({name: LossConfig()}, bilstm, tiny_bert(layers=1).config, where="stage")
    with pytest.raises(RecipeError, match="layer 0, the embeddings of a BiLSTM, which are 24 wide, not its hidden width 32"):
        build_terms({"hidden_mse": LossConfig(layer_map=[[0, 0]])}, teacher, bilstm, where="stage")
    assert build_terms({"hidden_mse": LossConfig(layer_map=[[2, 1]])}, teacher, bilstm, where="stage")
    narrow = tiny_bert(layers=1, heads=2).config
    with pytest.raises(UserError, match="head by head, but the teacher has 4 heads and the student 2") as err:
        build_terms({"attention_mse": LossConfig()}, teacher, narrow, where="stage")
    assert err.value.where == "stage.losses.attention_mse"
    with pytest.raises(UserError, match="width 32 is not a multiple of 5") as err:
        build_terms({"relation_kl": LossConfig(relation_heads=5)}, teacher, narrow, where="stage")
    assert err.value.where == "stage.losses.relation_kl.relation_heads"


def test_projections_are_owned_by_the_loss_and_held_by_the_task():
    teacher, student = tiny_bert(layers=2, hidden=32), tiny_bert(layers=1, hidden=16, heads=2)
    (term,) = build_terms({"hidden_mse": LossConfig(layer_map="uniform")}, teacher.config, student.config, where="s")
    assert sorted(term.loss.projections()) == ["hidden_mse_0", "hidden_mse_1"]
    assert all(p.in_features == 16 and p.out_features == 32 for p in term.loss.projections().values())
    assert list(term.loss.state_dict()) == []  # registered once: in the task, under the checkpoint's keys
    task = DistillationTask(student, [term], LiveTeacher(teacher))
    assert set(k for k in task.state_dict() if not k.startswith("student.")) == {
        f"projections.hidden_mse_{i}.{w}" for i in (0, 1) for w in ("weight", "bias")}


# --- a new loss is one class -------------------------------------------------------------------------


class CentredLogitMSE(Loss):
    """Mean squared error between mean-centred student and teacher logits (a toy loss for this test;
    centring makes it blind to a constant shift of all logits, which softmax ignores too).

    Inputs: student_logits, teacher_logits [B, T, C] or [N, C]; mask [B, T] or [N] (labelled positions).
    Formula: mean over counted positions and classes of ((z_S - mean_c z_S) - (z_T - mean_c z_T))^2.
    Units: labelled positions (token tasks), sequences otherwise.
    """

    name = "centred_mse"
    feature = "logits"
    calls = 0

    def __init__(self):
        super().__init__()
        self.student_reads = self.teacher_reads = Reads(logits=True)

    @classmethod
    def from_config(cls, cfg, teacher_config, student_config, *, where):
        return cls()

    def units(self, batch):
        labels = batch["labels"]
        return (labels != IGNORE).sum() if labels.dim() == 2 else torch.tensor(labels.shape[0])

    def compute(self, student, teacher, batch):
        type(self).calls += 1
        mask = batch["labels"] != IGNORE if student.logits.dim() == 3 else None
        return self(student.logits, teacher.teacher.logits, mask)

    def forward(self, student_logits, teacher_logits, mask=None):
        centre = lambda z: z.float() - z.float().mean(-1, keepdim=True)  # noqa: E731
        return masked_mean((centre(student_logits) - centre(teacher_logits)).pow(2).mean(-1), mask)


def test_the_toy_loss_by_hand():
    # student [1, 2, 3] -> centred [-1, 0, 1]; teacher [0, 0, 3] -> [-1, -1, 2]: squares 0, 1, 1 -> 2/3
    loss = CentredLogitMSE()(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]), torch.tensor([[0.0, 0.0, 3.0], [0.0, 9.0, 0.0]]),
                             torch.tensor([True, False]))
    assert loss.item() == pytest.approx(2 / 3)


# the tiny recipe whose one stage learns from the toy loss alone
TOY_RECIPE = tiny_recipe(
    name="toy-loss",
    data={"test": None, "max_train_per_language": 100},
    teacher={"train": {"epochs": 1}},
    cascade={"stages": [{"name": "student", "student": {"layers": 1}, "losses": {"centred_mse": {"weight": 2.0}}}]},
)


def test_a_new_loss_registered_in_a_test_runs_through_a_recipe_stage(demo_workspace, tmp_path, monkeypatch):
    from cascade_kd.cascade import run_recipe
    from cascade_kd.config.schema import Recipe

    monkeypatch.setitem(LOSSES, CentredLogitMSE.name, CentredLogitMSE)  # what `register` does, undone after the test
    monkeypatch.setattr(CentredLogitMSE, "calls", 0)
    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, tmp_path / name)
    said = []
    run_recipe(Recipe.from_dict(TOY_RECIPE, base_dir=tmp_path), tmp_path / "run", say=said.append)
    assert any(line.startswith("student:") and "losses centred_mse*2" in line for line in said), said
    stage = json.loads((tmp_path / "run" / "stages" / "student" / "stage.json").read_text())
    assert CentredLogitMSE.calls == stage["steps"] > 0  # once per batch: the loop ran it, nothing else did
    assert stage["dev"] is not None  # a loss on the logits: the stage selects on dev


def test_a_new_loss_trains_the_student_towards_the_teacher(demo_workspace, tokenizer):
    from cascade_kd.data.encode import encode
    from cascade_kd.data.readers import read_examples
    from cascade_kd.config.schema import TrainConfig
    from cascade_kd.students.features import extract_features
    from cascade_kd.training.data import StageData
    from cascade_kd.training.loop import train

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    examples = read_examples(demo_workspace / "data" / "en" / "train.conll", fmt="conll", task="token", lang="en", limit=48)
    data = encode(examples, tokenizer, task="token", label2id={l: i for i, l in enumerate(labels)}, max_length=48)
    teacher, student = tiny_bert(layers=2).eval(), tiny_bert(layers=1)
    batch = collate(data[:16], 0)

    def gap():
        with torch.no_grad():
            s = extract_features(student.eval(), batch, hidden=False, attentions=False)
            t = extract_features(teacher, batch, hidden=False, attentions=False)
        return CentredLogitMSE()(s.logits, t.logits, batch["labels"] != IGNORE).item()

    before = gap()
    task = DistillationTask(student, [LossTerm(1.0, CentredLogitMSE())], LiveTeacher(teacher))
    train(task, StageData(data), TrainConfig(epochs=3, batch_size=16, lr=3e-3, precision="fp32", warmup_ratio=0.0))
    assert gap() < 0.5 * before


def test_the_engine_refuses_a_loss_on_attention_with_a_bilstm_whatever_the_loss_checks(monkeypatch):
    class TopAttention(Loss):  # a new loss on attention maps that checks nothing itself
        name, feature = "top_attention", "attention"

        @classmethod
        def from_config(cls, cfg, teacher_config, student_config, *, where):
            raise AssertionError("built without the engine's check")

    monkeypatch.setitem(LOSSES, TopAttention.name, TopAttention)
    teacher = tiny_bert(layers=2, hidden=32).config
    bilstm, _, _ = student_config(teacher, StudentConfig(kind="bilstm", hidden=8), where="s")
    with pytest.raises(RecipeError, match="top_attention compares attention maps, but the student is a BiLSTM"):
        build_terms({"top_attention": LossConfig()}, teacher, bilstm, where="stage")


def test_a_loss_name_taken_is_refused_unless_replaced():
    from cascade_kd.losses.logits import SoftLogitKL
    from cascade_kd.losses.registry import register

    class Copied(SoftLogitKL):  # copied from kl, its name left unchanged
        pass

    with pytest.raises(ValueError, match="a loss named 'kl' is registered already"):
        register(Copied)
    assert LOSSES["kl"] is SoftLogitKL
    register(SoftLogitKL)  # the same class again: allowed

    class SoftLogitKL(SoftLogitKL):  # noqa: F811  a subclass of the same name, defined elsewhere, still named kl
        pass

    with pytest.raises(ValueError, match="a loss named 'kl' is registered already"):
        register(SoftLogitKL)


def test_reads_number_layers_as_the_teacher_cache_stores_them():
    with pytest.raises(ValueError, match="Reads.hidden numbers layers from 0, not -1"):
        Reads(hidden=(-1,))
    with pytest.raises(ValueError, match="Reads.attention numbers layers from 1, not 0"):
        Reads(attention=(0, 2))
    assert Reads(hidden=(0, 3), attention=(1,)).hidden == (0, 3)
