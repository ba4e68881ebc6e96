"""The loss formulas (cascade_kd/losses/{logits,hidden,attention,relations}.py): hand-computed values,
masking, shapes, dtypes and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from cascade_kd.losses.attention import AttentionKL, AttentionMSE
from cascade_kd.losses.hidden import HiddenCosine, HiddenMSE
from cascade_kd.losses.logits import HardLabelCE, LogitMSE, SoftLogitKL
from cascade_kd.losses.registry import LOSSES
from cascade_kd.losses.relations import RelationKL

LN2, LN3 = math.log(2.0), math.log(3.0)


def t(values, **kw) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, **kw)


def close(actual: torch.Tensor, expected: float, tol: float = 1e-6) -> None:
    assert actual.dim() == 0
    assert actual.dtype == torch.float32
    assert actual.item() == pytest.approx(expected, abs=tol, rel=tol)


# Hand-computed KLs between two-class distributions used below.
# softmax([0, ln3]) = [1/4, 3/4];  softmax([0, 0]) = [1/2, 1/2];  softmax([ln2, 0]) = [2/3, 1/3].
# KL([1/4, 3/4] || [1/2, 1/2]) and KL([1/2, 1/2] || [2/3, 1/3]):
KL_QUARTER_VS_HALF = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
KL_HALF_VS_TWOTHIRDS = 0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))


# ---------------------------------------------------------------- SoftLogitKL


def test_soft_kl_by_hand_sequence():
    student = t([[0.0, 0.0], [LN2, 0.0]])
    teacher = t([[0.0, LN3], [0.0, 0.0]])
    close(SoftLogitKL()(student, teacher), (KL_QUARTER_VS_HALF + KL_HALF_VS_TWOTHIRDS) / 2)


def test_soft_kl_identical_is_zero():
    z = t([[1.0, -2.0, 0.5]])
    close(SoftLogitKL(temperature=3.0)(z, z.clone()), 0.0)


def test_soft_kl_temperature_scales_by_t_squared():
    # Dividing by T=2 turns the teacher [0, 2 ln3] into [0, ln3]; the student [0, 0] stays put.
    student = t([[0.0, 0.0]])
    teacher = t([[0.0, 2 * LN3]])
    close(SoftLogitKL(temperature=2.0)(student, teacher), 2.0**2 * KL_QUARTER_VS_HALF)
    # At T=1 the same logits give KL([1/10, 9/10] || [1/2, 1/2]), without any factor.
    close(SoftLogitKL()(student, teacher), 0.1 * math.log(0.1 / 0.5) + 0.9 * math.log(0.9 / 0.5))


def test_soft_kl_token_shape_with_mask():
    student = t([[[0.0, 0.0], [LN2, 0.0], [5.0, -5.0]]])  # [B=1, T=3, C=2]
    teacher = t([[[0.0, LN3], [0.0, 0.0], [-7.0, 7.0]]])
    mask = torch.tensor([[True, True, False]])
    loss = SoftLogitKL()(student, teacher, mask)
    close(loss, (KL_QUARTER_VS_HALF + KL_HALF_VS_TWOTHIRDS) / 2)


def test_soft_kl_rejects_bad_temperature_and_shapes():
    with pytest.raises(ValueError):
        SoftLogitKL(temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        SoftLogitKL()(torch.zeros(2, 3), torch.zeros(2, 4))


# ---------------------------------------------------------------- LogitMSE


def test_logit_mse_by_hand():
    student = t([[1.0, 2.0], [3.0, 4.0]])
    teacher = t([[0.0, 0.0], [1.0, 1.0]])
    close(LogitMSE()(student, teacher), (1 + 4 + 4 + 9) / 4)
    close(LogitMSE()(student, teacher, torch.tensor([True, False])), (1 + 4) / 2)


def test_logit_mse_token_shape_with_mask():
    student = t([[[1.0, 2.0], [9.0, 9.0]], [[0.0, 3.0], [1.0, 1.0]]])  # [B=2, T=2, C=2]
    teacher = torch.zeros(2, 2, 2)
    mask = torch.tensor([[True, False], [True, True]])
    close(LogitMSE()(student, teacher, mask), (1 + 4 + 0 + 9 + 1 + 1) / 6)


# ---------------------------------------------------------------- HardLabelCE


def test_ce_by_hand_sequence():
    logits = t([[0.0, LN3], [0.0, 0.0]])
    labels = torch.tensor([1, 0])
    close(HardLabelCE()(logits, labels), (-math.log(3 / 4) - math.log(1 / 2)) / 2)


def test_ce_token_shape_ignores_minus_100():
    logits = t([[[0.0, LN3], [100.0, -100.0], [0.0, 0.0]]])  # [B=1, T=3, C=2]
    labels = torch.tensor([[1, -100, 0]])
    close(HardLabelCE()(logits, labels), (-math.log(3 / 4) - math.log(1 / 2)) / 2)


def test_ce_all_ignored_is_zero_with_grad():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    loss = HardLabelCE()(logits, torch.full((2, 3), -100))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_ce_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels"):
        HardLabelCE()(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))


# ---------------------------------------------------------------- HiddenMSE / HiddenCosine


def test_hidden_mse_by_hand():
    student = t([[[1.0, 2.0], [3.0, 4.0]]])  # [B=1, T=2, D=2]
    teacher = t([[[1.0, 0.0], [0.0, 0.0]]])
    close(HiddenMSE()(student, teacher), ((0 + 4) / 2 + (9 + 16) / 2) / 2)
    close(HiddenMSE()(student, teacher, torch.tensor([[True, False]])), (0 + 4) / 2)


def test_hidden_cosine_by_hand():
    student = t([[[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]]])  # [B=1, T=3, D=2]
    teacher = t([[[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]])
    # cosines: 0, 1/sqrt(2), -1
    close(HiddenCosine()(student, teacher), ((1 - 0) + (1 - 1 / math.sqrt(2)) + (1 + 1)) / 3)
    mask = torch.tensor([[True, True, False]])
    close(HiddenCosine()(student, teacher, mask), ((1 - 0) + (1 - 1 / math.sqrt(2))) / 2)


# ---------------------------------------------------------------- AttentionMSE / AttentionKL

# Real 2x2 maps (rows are queries, columns keys); padded to T=3 below.
S_MAP = [[0.5, 0.5], [0.2, 0.8]]
T_MAP = [[1.0, 0.0], [0.5, 0.5]]
MSE_S_T = (0.25 + 0.25 + 0.09 + 0.09) / 4
KL_T_S = (math.log(1.0 / 0.5) + (0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8))) / 2


def padded(real_map, pad_value: float) -> list[list[float]]:
    """Embed a 2x2 map into 3x3; the third row and column hold `pad_value`."""
    return [row + [pad_value] for row in real_map] + [[pad_value] * 3]


PAD_MASK = torch.tensor([[True, True, False]])


def test_attention_mse_by_hand():
    student = t([[S_MAP]])  # [B=1, H=1, T=2, T=2]
    teacher = t([[T_MAP]])
    close(AttentionMSE()(student, teacher), MSE_S_T)


def test_attention_mse_two_heads_mean_over_heads():
    student = t([[S_MAP, S_MAP]])
    teacher = t([[T_MAP, S_MAP]])  # second head matches exactly
    close(AttentionMSE()(student, teacher), (MSE_S_T + 0.0) / 2)


@pytest.mark.parametrize("loss_cls, expected", [(AttentionMSE, MSE_S_T), (AttentionKL, KL_T_S)])
def test_attention_padding_rows_and_columns_do_not_count(loss_cls, expected):
    loss_fn = loss_cls()
    a = loss_fn(t([[padded(S_MAP, 0.3)]]), t([[padded(T_MAP, 0.0)]]), PAD_MASK)
    b = loss_fn(t([[padded(S_MAP, 0.9)]]), t([[padded(T_MAP, 0.7)]]), PAD_MASK)
    close(a, expected, tol=1e-5)
    close(b, expected, tol=1e-5)


def test_attention_kl_by_hand():
    close(AttentionKL()(t([[S_MAP]]), t([[T_MAP]])), KL_T_S, tol=1e-5)
    close(AttentionKL()(t([[T_MAP]]), t([[T_MAP]])), 0.0, tol=1e-5)


@pytest.mark.parametrize("loss_cls, expected", [(AttentionMSE, MSE_S_T), (AttentionKL, KL_T_S)])
def test_attention_head_mean_allows_unequal_heads(loss_cls, expected):
    student = t([[S_MAP]])  # 1 head
    # 2 teacher heads whose average is T_MAP
    teacher = t([[[[1.0, 0.0], [0.8, 0.2]], [[1.0, 0.0], [0.2, 0.8]]]])
    close(loss_cls(head_reduction="mean")(student, teacher), expected, tol=1e-5)


@pytest.mark.parametrize("loss_cls", [AttentionMSE, AttentionKL])
def test_attention_unequal_heads_without_reduction_raises(loss_cls):
    with pytest.raises(ValueError, match=r"2 attention heads.*4.*head_reduction=\"mean\""):
        loss_cls()(torch.rand(1, 2, 3, 3), torch.rand(1, 4, 3, 3))
    with pytest.raises(ValueError, match="head_reduction"):
        loss_cls(head_reduction="max")


# ---------------------------------------------------------------- shared behaviour

B, T_LEN, C, D, H = 2, 4, 3, 5, 2


SHAPES = {"logits": (B, T_LEN, C), "hidden": (B, T_LEN, D), "attention": (B, H, T_LEN, T_LEN)}
EXAMPLE_OPTIONS = {"kl": {"temperature": 2.0}}  # constructor arguments other than the defaults, per loss


def make_inputs(name: str, dtype=torch.float32, seed: int = 0):
    """(loss, student, teacher, mask) with random tensors of the shape of the loss's feature."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    feature = LOSSES[name].feature
    student = torch.randn(SHAPES[feature], generator=g)
    teacher = torch.randn(SHAPES[feature], generator=g)
    if feature == "attention":
        student, teacher = student.softmax(-1), teacher.softmax(-1)
    loss = LOSSES[name](**EXAMPLE_OPTIONS.get(name, {}))
    return loss, student.to(dtype), teacher.to(dtype), mask


# every registered loss between a student tensor and a teacher tensor under a mask (ce compares
# labels, relation_kl query/key/value states of whole models: both tested on their own)
MASKED_NAMES = [name for name, cls in LOSSES.items() if cls.reads_teacher and cls.feature in SHAPES]


def test_registry_names():
    from cascade_kd.config.schema import LOSS_NAMES, loss_names

    # a new built-in loss goes into LOSS_NAMES too, and here (docs/contributing.md, "Adding a loss")
    assert set(LOSS_NAMES) == set(LOSSES) and set(loss_names()) == set(LOSSES)  # what recipes may name
    assert MASKED_NAMES == ["kl", "logit_mse", "hidden_mse", "hidden_cos", "attention_mse", "attention_kl"]
    assert LOSSES == {
        "kl": SoftLogitKL,
        "logit_mse": LogitMSE,
        "ce": HardLabelCE,
        "hidden_mse": HiddenMSE,
        "hidden_cos": HiddenCosine,
        "attention_mse": AttentionMSE,
        "attention_kl": AttentionKL,
        "relation_kl": RelationKL,
    }


@pytest.mark.parametrize("name", MASKED_NAMES)
def test_changing_padding_does_not_change_loss(name):
    loss_fn, student, teacher, mask = make_inputs(name)
    before = loss_fn(student, teacher, mask)
    # Overwrite every position that touches padding (for attention: padded rows or columns).
    pad = ~mask
    if name.startswith("attention"):
        touched = (pad[:, None, :, None] | pad[:, None, None, :]).expand_as(student)
    else:
        touched = pad[..., None].expand_as(student)
    student2, teacher2 = student.clone(), teacher.clone()
    student2[touched] = 0.77
    teacher2[touched] = 0.11
    after = loss_fn(student2, teacher2, mask)
    assert after.item() == pytest.approx(before.item(), rel=1e-6, abs=1e-7)
    assert before.item() > 0


@pytest.mark.parametrize("name", MASKED_NAMES)
def test_all_false_mask_gives_zero_with_grad(name):
    loss_fn, student, teacher, mask = make_inputs(name)
    student.requires_grad_(True)
    loss = loss_fn(student, teacher, torch.zeros_like(mask))
    assert loss.dim() == 0 and loss.item() == 0.0 and not torch.isnan(loss)
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


@pytest.mark.parametrize("name", MASKED_NAMES)
def test_none_mask_equals_all_true_mask(name):
    loss_fn, student, teacher, mask = make_inputs(name)
    full = torch.ones_like(mask)
    expected = loss_fn(student, teacher, full).item()
    assert loss_fn(student, teacher).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", MASKED_NAMES)
def test_grad_reaches_student_only_and_not_padding(name):
    loss_fn, student, teacher, mask = make_inputs(name)
    student.requires_grad_(True)
    assert not teacher.requires_grad
    loss_fn(student, teacher, mask).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    # Padded tokens (for attention: padded query rows) get no gradient.
    if name.startswith("attention"):
        pad_grad = student.grad.permute(0, 2, 1, 3)[~mask]
    else:
        pad_grad = student.grad[~mask]
    assert torch.equal(pad_grad, torch.zeros_like(pad_grad))


@pytest.mark.parametrize("name", MASKED_NAMES)
def test_bf16_inputs_give_float32_close_to_fp32(name):
    loss_fn, student, teacher, mask = make_inputs(name)
    ref = loss_fn(student, teacher, mask)
    s16, t16 = student.bfloat16(), teacher.bfloat16()
    out = loss_fn(s16, t16, mask)
    assert out.dtype == torch.float32
    # Exactly the fp32 computation on the rounded inputs, and close to the unrounded one.
    assert out.item() == pytest.approx(loss_fn(s16.float(), t16.float(), mask).item(), rel=1e-6)
    assert out.item() == pytest.approx(ref.item(), rel=5e-2, abs=1e-3)


def test_ce_bf16_logits_give_float32():
    logits = torch.randn(2, 3, 4)
    labels = torch.tensor([[0, 1, -100], [3, -100, -100]])
    ref = HardLabelCE()(logits, labels)
    out = HardLabelCE()(logits.bfloat16(), labels)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), rel=2e-2)


def test_ce_grad_reaches_logits():
    logits = torch.randn(3, 4, requires_grad=True)
    HardLabelCE()(logits, torch.tensor([0, -100, 2])).backward()
    assert logits.grad[1].abs().sum() == 0
    assert logits.grad[0].abs().sum() > 0 and logits.grad[2].abs().sum() > 0


# ---------------------------------------------------------------- RelationKL (MiniLMv2)

KINDS = ("query", "key", "value")


def relation_row(x, head: int, heads: int, i: int, real: list[int]) -> dict[int, float]:
    """Plain-math relation row: softmax over the real keys j of <x_i, x_j> / sqrt(d) in one head."""
    d = len(x[0]) // heads
    part = lambda tok: x[tok][head * d:(head + 1) * d]
    scores = {j: sum(a * b for a, b in zip(part(i), part(j))) / math.sqrt(d) for j in real}
    z = sum(math.exp(v) for v in scores.values())
    return {j: math.exp(v) / z for j, v in scores.items()}


def relation_kl_by_loops(student, teacher, mask, heads: int, kinds=KINDS) -> float:
    """MiniLMv2's loss with explicit loops: states are nested lists [B][T][D], mask [B][T]."""
    per_kind = []
    for kind in kinds:
        kl_sum, rows = 0.0, 0
        for b, tokens in enumerate(mask):
            real = [j for j, keep in enumerate(tokens) if keep]
            for head in range(heads):
                for i in real:
                    p_t = relation_row(teacher[kind][b], head, heads, i, real)
                    p_s = relation_row(student[kind][b], head, heads, i, real)
                    kl_sum += sum(p_t[j] * math.log(p_t[j] / p_s[j]) for j in real)
                    rows += 1
        per_kind.append(kl_sum / rows)
    return sum(per_kind) / len(per_kind)


# A tiny case: B=1, T=3 (the third token is padding, with garbage in it), R=2 relation heads;
# teacher D=4 (head width 2), student D=6 (head width 3).
REL_MASK = [[True, True, False]]
REL_TEACHER = {
    "query": [[[1.0, 0.0, 0.5, -1.0], [0.0, 1.0, 1.0, 0.5], [9.0, -9.0, 9.0, 9.0]]],
    "key": [[[0.5, 0.5, -1.0, 0.0], [1.0, -0.5, 0.0, 2.0], [-7.0, 7.0, 7.0, -7.0]]],
    "value": [[[2.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, -5.0, 5.0]]],
}
REL_STUDENT = {
    "query": [[[0.0, 1.0, 0.0, 1.0, 0.0, -1.0], [1.0, 1.0, 0.0, 0.0, 0.5, 0.5], [8.0, 8.0, 8.0, -8.0, 8.0, 8.0]]],
    "key": [[[0.2, 0.4, -0.6, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0, 1.0, 0.0], [6.0, -6.0, 6.0, 6.0, 6.0, 6.0]]],
    "value": [[[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0, 0.0, 1.0], [-4.0, 4.0, 4.0, 4.0, 4.0, -4.0]]],
}


def states(values: dict) -> dict[str, torch.Tensor]:
    return {kind: t(v) for kind, v in values.items()}


def test_relation_kl_by_hand_with_unequal_widths_and_padding():
    mask = torch.tensor(REL_MASK)
    loss = RelationKL(relation_heads=2)(states(REL_STUDENT), states(REL_TEACHER), mask)
    close(loss, relation_kl_by_loops(REL_STUDENT, REL_TEACHER, REL_MASK, 2), tol=1e-5)
    assert loss.item() > 0
    # one relation type alone, and a pair: the mean over the types used
    for kinds in (("value",), ("query", "key")):
        close(RelationKL(2, kinds)(states(REL_STUDENT), states(REL_TEACHER), mask),
              relation_kl_by_loops(REL_STUDENT, REL_TEACHER, REL_MASK, 2, kinds), tol=1e-5)


def test_relation_kl_closed_form():
    # R=1, value relation only. Teacher (D=1) x = [0, sqrt(ln 3)]: row 0 scores [0, 0] -> [1/2, 1/2],
    # row 1 scores [0, ln 3] -> [1/4, 3/4]. Student (D=2) all zeros: both rows [1/2, 1/2].
    teacher = {"value": t([[[0.0], [math.sqrt(LN3)], [4.0]]])}
    student = {"value": t([[[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]]])}
    loss = RelationKL(relation_heads=1, relations=("value",))(student, teacher, torch.tensor(REL_MASK))
    close(loss, (0.0 + KL_QUARTER_VS_HALF) / 2, tol=1e-6)


def random_states(width: int, seed: int, b: int = 2, length: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {kind: torch.randn(b, length, width, generator=g) for kind in KINDS}


REL_PAD = torch.tensor([[True, True, True, False], [True, True, False, False]])


def test_relation_kl_identical_is_zero():
    x = random_states(8, 0)
    close(RelationKL(relation_heads=4)(x, {k: v.clone() for k, v in x.items()}, REL_PAD), 0.0, tol=1e-6)


def test_relation_kl_padding_does_not_change_the_loss_or_get_gradient():
    loss_fn = RelationKL(relation_heads=2)
    student, teacher = random_states(6, 1), random_states(4, 2)
    for x in student.values():
        x.requires_grad_(True)
    before = loss_fn(student, teacher, REL_PAD)
    before.backward()
    assert before.item() > 0
    for kind, x in student.items():  # gradient reaches every real token, and no padded one
        assert x.grad[REL_PAD].abs().sum(-1).min() > 0, kind
        assert torch.equal(x.grad[~REL_PAD], torch.zeros_like(x.grad[~REL_PAD])), kind
    garbage = lambda x, v: torch.where(REL_PAD[..., None], x.detach(), torch.full_like(x, v))
    after = loss_fn({k: garbage(x, 77.0) for k, x in student.items()},
                    {k: garbage(x, -1e4) for k, x in teacher.items()}, REL_PAD)
    assert after.item() == pytest.approx(before.item(), rel=1e-6)


def test_relation_kl_mask_edges():
    loss_fn = RelationKL(relation_heads=2)
    student, teacher = random_states(6, 3), random_states(4, 4)
    full = torch.ones_like(REL_PAD)
    assert loss_fn(student, teacher).item() == pytest.approx(loss_fn(student, teacher, full).item(), rel=1e-6)
    student["key"].requires_grad_(True)
    loss = loss_fn(student, teacher, torch.zeros_like(REL_PAD))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(student["key"].grad, torch.zeros_like(student["key"]))


def test_relation_kl_bf16_inputs_give_float32():
    loss_fn = RelationKL(relation_heads=2)
    student, teacher = random_states(6, 5), random_states(4, 6)
    ref = loss_fn(student, teacher, REL_PAD)
    s16 = {k: v.bfloat16() for k, v in student.items()}
    t16 = {k: v.bfloat16() for k, v in teacher.items()}
    out = loss_fn(s16, t16, REL_PAD)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    rounded = loss_fn({k: v.float() for k, v in s16.items()}, {k: v.float() for k, v in t16.items()}, REL_PAD)
    assert out.item() == pytest.approx(rounded.item(), rel=1e-6)
    assert out.item() == pytest.approx(ref.item(), rel=5e-2, abs=1e-3)


def test_relation_kl_rejects_bad_arguments():
    with pytest.raises(ValueError, match="student query width 6 is not divisible by relation_heads=4"):
        RelationKL(relation_heads=4)(random_states(6, 0), random_states(8, 0))
    with pytest.raises(ValueError, match="teacher query width 6 is not divisible by relation_heads=4"):
        RelationKL(relation_heads=4)(random_states(8, 0), random_states(6, 0))
    with pytest.raises(ValueError, match="share"):
        RelationKL(relation_heads=2)(random_states(4, 0, length=3), random_states(4, 0, length=4))
    with pytest.raises(ValueError, match="student states have no 'key'"):
        RelationKL(relation_heads=2)({"query": torch.zeros(2, 4, 4)}, random_states(4, 0))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="relation_heads"):
            RelationKL(relation_heads=bad)
    for bad in ((), ("query", "attention"), ("key", "key")):
        with pytest.raises(ValueError, match="relations"):
            RelationKL(relations=bad)


def test_relation_kl_is_computed_in_float32_under_bf16_autocast():
    """The relation scores are a matmul: under the engine's bf16 autocast they must not drop to bf16,
    or rounding noise swamps the loss near convergence."""
    torch.manual_seed(0)
    teacher = {k: torch.randn(2, 7, 16) for k in ("query", "key", "value")}
    student = {k: v + 0.01 * torch.randn_like(v) for k, v in teacher.items()}
    loss = RelationKL(relation_heads=4)
    exact = loss(student, teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = loss(student, teacher)
    torch.testing.assert_close(under, exact, rtol=1e-4, atol=1e-9)
