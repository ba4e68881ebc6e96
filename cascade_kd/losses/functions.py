"""Distillation losses: small, mask-aware `torch.nn.Module`s that take tensors, not models.

Conventions shared by every loss here:

* Masks are bool tensors; True marks a position that counts (a real token, or for token tasks the
  first sub-word of a word). `None` means every position counts.
* Inputs are cast to float32 before any arithmetic, so callers may run under bf16 autocast.
* Every loss returns a float32 scalar. When no position counts it returns 0 that is still
  connected to the student input (so `backward()` works), never NaN.
* Teacher tensors are expected without `requires_grad`; nothing here detaches them for you.

`LOSSES` maps the names used in recipes to the classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LOSSES",
    "AttentionKL",
    "AttentionMSE",
    "HardLabelCE",
    "HiddenCosine",
    "HiddenMSE",
    "LogitMSE",
    "RelationKL",
    "SoftLogitKL",
]

IGNORE_INDEX = -100  # the Hugging Face / PyTorch convention for labels that do not count


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `values` over the positions where `mask` (broadcast to `values`) is True.

    `torch.where` (rather than multiplying by the mask) keeps garbage at masked positions out of
    the sum, and clamping the count at 1 turns an empty mask into 0 instead of 0/0 = NaN; the
    result stays in the autograd graph of `values` either way.
    """
    if mask is None:
        return values.mean()
    mask = mask.to(torch.bool)
    try:
        mask = mask.expand_as(values)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not fit values of shape {tuple(values.shape)}"
        ) from None
    total = torch.where(mask, values, values.new_zeros(())).sum()
    return total / mask.sum().clamp(min=1)


def _check_same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher {what} must have the same shape, "
            f"got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )


class SoftLogitKL(nn.Module):
    """Hinton-style soft-target KL divergence between teacher and student logits.

    Loss = T^2 * mean over counted positions of KL(softmax(z_T / T) || softmax(z_S / T)),
    where the KL is summed over classes. The T^2 factor keeps gradient magnitudes comparable
    across temperatures (Hinton et al., 2015).

    Inputs:
        student_logits: float tensor [N, C] (sequence tasks) or [B, T, C] (token tasks).
        teacher_logits: float tensor of the same shape.
        mask: optional bool tensor [N] or [B, T]; False positions never count.

    Reduction: per-position mean of the class-summed KL (PyTorch's "batchmean" convention applied
    per position), times T^2. Returns a float32 scalar; 0 when no position counts.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        _check_same_shape(student_logits, teacher_logits, "logits")
        t = self.temperature
        log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
        # log_target=True computes p_T * (log p_T - log p_S) without 0 * log 0 trouble.
        kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=-1)
        return (t * t) * _masked_mean(kl, mask)


class LogitMSE(nn.Module):
    """Mean squared error between raw student and teacher logits (XtremeDistil's logit loss).

    Inputs:
        student_logits: float tensor [N, C] or [B, T, C].
        teacher_logits: float tensor of the same shape.
        mask: optional bool tensor [N] or [B, T]; False positions never count.

    Reduction: mean over counted positions and over the C classes of (z_S - z_T)^2.
    Returns a float32 scalar; 0 when no position counts.
    """

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        _check_same_shape(student_logits, teacher_logits, "logits")
        # Every position has the same C, so the mean of per-position means is the overall mean.
        sq = (student_logits.float() - teacher_logits.float()).pow(2).mean(dim=-1)
        return _masked_mean(sq, mask)


class HardLabelCE(nn.Module):
    """Cross-entropy against gold labels.

    Inputs:
        logits: float tensor [N, C] (sequence tasks) or [B, T, C] (token tasks).
        labels: long tensor [N] or [B, T]; -100 marks positions that do not count (padding,
            non-first sub-words). There is no separate mask: the labels carry it.

    Reduction: mean over positions whose label is not -100. Returns a float32 scalar; 0 when
    every label is -100.
    """

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        if logits.shape[:-1] != labels.shape:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not fit logits of shape "
                f"{tuple(logits.shape)}; "
                "expected labels to have the logits' shape without the class dimension"
            )
        num_classes = logits.shape[-1]
        ce = F.cross_entropy(
            logits.float().reshape(-1, num_classes),
            labels.reshape(-1).long(),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(labels.shape)
        return _masked_mean(ce, labels != IGNORE_INDEX)


class HiddenMSE(nn.Module):
    """Mean squared error between student and teacher hidden states.

    Inputs:
        student_hidden: float tensor [B, T, D], already projected to the teacher's width D.
        teacher_hidden: float tensor [B, T, D].
        mask: optional bool tensor [B, T]; False tokens (padding) never count.

    Reduction: mean over counted tokens and over the D dimensions of the squared error.
    Returns a float32 scalar; 0 when no token counts.
    """

    def forward(
        self, student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        _check_same_shape(student_hidden, teacher_hidden, "hidden states")
        sq = (student_hidden.float() - teacher_hidden.float()).pow(2).mean(dim=-1)
        return _masked_mean(sq, mask)


class HiddenCosine(nn.Module):
    """Cosine distance between student and teacher hidden states, token by token.

    Inputs:
        student_hidden: float tensor [B, T, D], already projected to the teacher's width D.
        teacher_hidden: float tensor [B, T, D].
        mask: optional bool tensor [B, T]; False tokens (padding) never count.

    Reduction: mean over counted tokens of (1 - cosine_similarity along D). Returns a float32
    scalar; 0 when no token counts.
    """

    def forward(
        self, student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        _check_same_shape(student_hidden, teacher_hidden, "hidden states")
        cos = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
        return _masked_mean(1.0 - cos, mask)


class _AttentionLoss(nn.Module):
    """Shared input handling for the attention-map losses."""

    def __init__(self, head_reduction: str = "none"):
        super().__init__()
        if head_reduction not in ("none", "mean"):
            raise ValueError(f'head_reduction must be "none" or "mean", got {head_reduction!r}')
        self.head_reduction = head_reduction

    def _prepare(self, student_attn: Tensor, teacher_attn: Tensor) -> tuple[Tensor, Tensor]:
        if student_attn.dim() != 4 or teacher_attn.dim() != 4:
            raise ValueError(
                "attention maps must be [B, H, T, T], "
                f"got {tuple(student_attn.shape)} and {tuple(teacher_attn.shape)}"
            )
        s, t = student_attn.float(), teacher_attn.float()
        if self.head_reduction == "mean":
            # Head-averaged maps let a student with fewer heads match the teacher.
            s, t = s.mean(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)
        elif s.shape[1] != t.shape[1]:
            raise ValueError(
                f"student has {s.shape[1]} attention heads but teacher has {t.shape[1]}; "
                'head_reduction="none" compares head by head, '
                'use head_reduction="mean" to compare head-averaged maps'
            )
        _check_same_shape(s, t, "attention maps")
        return s, t


class AttentionMSE(_AttentionLoss):
    """Mean squared error between student and teacher attention probabilities (TinyBERT/MiniLM style).

    Inputs:
        student_attn: float tensor [B, H_s, T, T] of post-softmax attention probabilities, as
            Hugging Face models return with `output_attentions=True`.
        teacher_attn: float tensor [B, H_t, T, T]. H_s must equal H_t unless head_reduction="mean".
        mask: optional bool tensor [B, T] marking real tokens.

    Reduction: mean over heads and over (query, key) pairs where both the query and the key are
    real tokens of the squared error. With head_reduction="mean" the maps are first averaged over
    heads, so H_s and H_t may differ. Returns a float32 scalar; 0 when no token is real.
    """

    def forward(
        self, student_attn: Tensor, teacher_attn: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        s, t = self._prepare(student_attn, teacher_attn)
        pair_mask = None
        if mask is not None:
            mask = mask.to(torch.bool)
            pair_mask = mask[:, None, :, None] & mask[:, None, None, :]  # [B, 1, T, T]
        return _masked_mean((s - t).pow(2), pair_mask)


class AttentionKL(_AttentionLoss):
    """KL divergence between teacher and student attention rows (MiniLM style).

    Inputs:
        student_attn: float tensor [B, H_s, T, T] of post-softmax attention probabilities.
        teacher_attn: float tensor [B, H_t, T, T]. H_s must equal H_t unless head_reduction="mean".
        mask: optional bool tensor [B, T] marking real tokens.

    For each head and each real query row: KL(A_T row || A_S row) =
    sum over real keys of A_T * (log(A_T + eps) - log(A_S + eps)); eps keeps log(0) finite.

    Reduction: mean over heads and over real query rows. With head_reduction="mean" the maps are
    first averaged over heads. Returns a float32 scalar; 0 when no token is real.
    """

    def __init__(self, head_reduction: str = "none", eps: float = 1e-12):
        super().__init__(head_reduction)
        self.eps = float(eps)

    def forward(
        self, student_attn: Tensor, teacher_attn: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        s, t = self._prepare(student_attn, teacher_attn)
        terms = t * (torch.log(t + self.eps) - torch.log(s + self.eps))
        if mask is None:
            return terms.sum(dim=-1).mean()
        mask = mask.to(torch.bool)
        key_mask = mask[:, None, None, :]  # [B, 1, 1, T]
        row_kl = torch.where(key_mask, terms, terms.new_zeros(())).sum(dim=-1)  # [B, H, T]
        return _masked_mean(row_kl, mask[:, None, :])


class RelationKL(nn.Module):
    """MiniLMv2 self-attention relation loss (Wang et al., 2021): KL between teacher and student
    query-query, key-key and value-value relations.

    Inputs:
        student: dict mapping "query" / "key" / "value" to float tensors [B, T, D_s], the outputs
            of one layer's query / key / value projections before they are split into attention
            heads (`Features.relation_states`). Only the types in `relations` are read.
        teacher: the same for the teacher, [B, T, D_t]; D_t may differ from D_s.
        mask: optional bool tensor [B, T] marking real tokens.

    Each X is split into R = relation_heads relation heads of width d = D / R (D_s and D_t must
    both be divisible by R; the models' own attention head counts play no part), and
    relation = softmax over keys of X_h X_h^T / sqrt(d), a [B, R, T, T] map; padded keys are
    excluded before the softmax. Per type: KL(teacher row || student row) summed over real keys.

    Reduction: mean over real query rows and the R heads, then mean over the relation types.
    Returns a float32 scalar; 0 when no token is real.
    """

    KINDS = ("query", "key", "value")

    def __init__(self, relation_heads: int = 12, relations: tuple = KINDS):
        super().__init__()
        if isinstance(relation_heads, bool) or not isinstance(relation_heads, int) or relation_heads < 1:
            raise ValueError(f"relation_heads must be an integer >= 1, got {relation_heads!r}")
        relations = (relations,) if isinstance(relations, str) else tuple(relations)
        unknown = [r for r in relations if r not in self.KINDS]
        if not relations or unknown or len(set(relations)) != len(relations):
            raise ValueError(
                f"relations must be a non-empty subset of {self.KINDS} without repeats, got {relations!r}"
            )
        self.relation_heads = relation_heads
        self.relations = relations

    def _log_relation(self, x: Tensor, key_mask: Tensor | None, who: str, kind: str) -> Tensor:
        """log softmax(X_h X_h^T / sqrt(d)) over the real keys, [B, R, T, T]."""
        if x.dim() != 3:
            raise ValueError(f"{who} {kind} states must be [B, T, D], got {tuple(x.shape)}")
        b, t, width = x.shape
        r = self.relation_heads
        if width % r:
            raise ValueError(
                f"{who} {kind} width {width} is not divisible by relation_heads={r}; "
                "pick a relation head count that divides both the teacher's and the student's width"
            )
        h = x.float().view(b, t, r, width // r).transpose(1, 2)  # [B, R, T, d]
        with torch.autocast(x.device.type, enabled=False):  # the first loss with a matmul: keep it in fp32
            scores = h @ h.transpose(-1, -2) / math.sqrt(width // r)
        if key_mask is not None:
            # The most negative finite float, not -inf: a row whose keys are all padding then gets a
            # uniform (ignored) distribution instead of NaN.
            scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
        return F.log_softmax(scores, dim=-1)

    def forward(
        self, student: dict[str, Tensor], teacher: dict[str, Tensor], mask: Tensor | None = None
    ) -> Tensor:
        key_mask = None
        if mask is not None:
            mask = mask.to(torch.bool)
            key_mask = mask[:, None, None, :]  # [B, 1, 1, T]
        losses = []
        for kind in self.relations:
            for who, states in (("student", student), ("teacher", teacher)):
                if kind not in states:
                    raise ValueError(f"{who} states have no {kind!r} (got {sorted(states)})")
            s, t = student[kind], teacher[kind]
            if s.shape[:2] != t.shape[:2]:
                raise ValueError(
                    f"student and teacher {kind} states must share [B, T], "
                    f"got {tuple(s.shape)} and {tuple(t.shape)}"
                )
            log_s = self._log_relation(s, key_mask, "student", kind)
            log_t = self._log_relation(t, key_mask, "teacher", kind)
            terms = F.kl_div(log_s, log_t, reduction="none", log_target=True)
            if mask is None:
                losses.append(terms.sum(dim=-1).mean())
                continue
            row_kl = torch.where(key_mask, terms, terms.new_zeros(())).sum(dim=-1)  # [B, R, T]
            losses.append(_masked_mean(row_kl, mask[:, None, :]))
        return torch.stack(losses).mean()


LOSSES: dict[str, type[nn.Module]] = {
    "kl": SoftLogitKL,
    "logit_mse": LogitMSE,
    "ce": HardLabelCE,
    "hidden_mse": HiddenMSE,
    "hidden_cos": HiddenCosine,
    "attention_mse": AttentionMSE,
    "attention_kl": AttentionKL,
    "relation_kl": RelationKL,
}
