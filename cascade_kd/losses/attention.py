"""Losses between attention maps, layer by layer along a layer map (TinyBERT, MiniLM, LightMBERT).

In a stage (`compute`): the mean over the map's (teacher layer, student layer) pairs of the formula
on the two layers' attention probabilities (students/features.py numbering: layers 1..L), with
padded queries and keys masked out. Both models must have attention maps (a BiLSTM has none), and
equal head counts unless `head_reduction: mean` compares head-averaged maps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cascade_kd.errors import RecipeError, UserError
from cascade_kd.losses.base import Loss, Reads, TeacherFeatures, check_same_shape, masked_mean, real_tokens
from cascade_kd.losses.layer_maps import layer_pairs
from cascade_kd.students.features import Features
from cascade_kd.students.registry import family_of

WHAT = {"attention": "attention maps", "qkv": "self-attention relations"}


def check_has_attention(cls: type[Loss], teacher_config, student_config, *, where: str) -> None:
    """Refuse a loss on self-attention between models of which one has none (a BiLSTM)."""
    for side, config in (("student", student_config), ("teacher", teacher_config)):
        family = family_of(config)
        if not family.has_attention:
            raise RecipeError(f"{cls.name} compares {WHAT[cls.feature]}, but the {side} is a {family.label}, which has none",
                              where=f"{where}.losses.{cls.name}",
                              hint="give the stage its own losses without attention terms (e.g. kl, logit_mse, ce, "
                                   "hidden_mse with layer_map top_only)")


class AttentionLoss(Loss):
    """A loss between the student's and the teacher's attention maps of mapped layers."""

    feature = "attention"
    options = ("layer_map", "head_reduction")

    def __init__(self, head_reduction: str = "none", *, pairs=()):
        super().__init__()
        if head_reduction not in ("none", "mean"):
            raise ValueError(f'head_reduction must be "none" or "mean", got {head_reduction!r}')
        self.head_reduction = head_reduction
        self.pairs = [tuple(p) for p in pairs]
        self.student_reads = Reads(attention=tuple(sorted({s for _, s in self.pairs})))
        self.teacher_reads = Reads(attention=tuple(sorted({t for t, _ in self.pairs})))

    @classmethod
    def check(cls, cfg, teacher_config, student_config, *, where: str) -> None:
        t_heads, s_heads = teacher_config.num_attention_heads, student_config.num_attention_heads
        if cfg.head_reduction == "none" and t_heads != s_heads:
            raise UserError(
                f"{cls.name} compares attention maps head by head, but the teacher has {t_heads} heads "
                f"and the student {s_heads}",
                where=f"{where}.losses.{cls.name}",
                hint="set head_reduction: mean to compare head-averaged maps",
            )

    @classmethod
    def from_config(cls, cfg, teacher_config, student_config, *, where: str) -> AttentionLoss:
        pairs = layer_pairs(cfg.layer_map, teacher_config.num_hidden_layers, student_config.num_hidden_layers,
                            feature="attention", where=f"{where}.losses.{cls.name}.layer_map")
        return cls(cfg.head_reduction, pairs=pairs)

    def compute(self, student: Features, teacher: TeacherFeatures, batch: dict) -> Tensor:
        values = [self(student.attention(s), teacher.teacher.attention(t), student.attention_mask) for t, s in self.pairs]
        return torch.stack(values).mean()  # mean over the map's pairs

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
        check_same_shape(s, t, "attention maps")
        return s, t


class AttentionMSE(AttentionLoss):
    """Mean squared error between student and teacher attention probabilities (recipe name
    `attention_mse`; TinyBERT, Jiao et al., 2020).

    Inputs:
        student_attn: float tensor [B, H_s, T, T] of post-softmax attention probabilities, as
            Hugging Face models return with `output_attentions=True`.
        teacher_attn: float tensor [B, H_t, T, T]. H_s must equal H_t unless head_reduction="mean".
        mask: optional bool tensor [B, T] marking real tokens.

    Reduction: mean over heads and over (query, key) pairs where both the query and the key are
    real tokens of the squared error. With head_reduction="mean" the maps are first averaged over
    heads, so H_s and H_t may differ. Returns a float32 scalar; 0 when no token is real.
    Units: the (query, key) pairs of real tokens.
    """

    name = "attention_mse"

    def units(self, batch: dict) -> Tensor:
        return batch["attention_mask"].sum(dim=1).pow(2).sum()  # (query, key) pairs of real tokens

    def forward(self, student_attn: Tensor, teacher_attn: Tensor, mask: Tensor | None = None) -> Tensor:
        s, t = self._prepare(student_attn, teacher_attn)
        pair_mask = None
        if mask is not None:
            mask = mask.to(torch.bool)
            pair_mask = mask[:, None, :, None] & mask[:, None, None, :]  # [B, 1, T, T]
        return masked_mean((s - t).pow(2), pair_mask)


class AttentionKL(AttentionLoss):
    """KL divergence between teacher and student attention rows (recipe name `attention_kl`;
    MiniLM, Wang et al., 2020).

    Inputs:
        student_attn: float tensor [B, H_s, T, T] of post-softmax attention probabilities.
        teacher_attn: float tensor [B, H_t, T, T]. H_s must equal H_t unless head_reduction="mean".
        mask: optional bool tensor [B, T] marking real tokens.

    For each head and each real query row: KL(A_T row || A_S row) =
    sum over real keys of A_T * (log(A_T + eps) - log(A_S + eps)); eps keeps log(0) finite.

    Reduction: mean over heads and over real query rows. With head_reduction="mean" the maps are
    first averaged over heads. Returns a float32 scalar; 0 when no token is real.
    Units: real tokens (query rows).
    """

    name = "attention_kl"

    def __init__(self, head_reduction: str = "none", eps: float = 1e-12, *, pairs=()):
        super().__init__(head_reduction, pairs=pairs)
        self.eps = float(eps)

    def units(self, batch: dict) -> Tensor:
        return real_tokens(batch)

    def forward(self, student_attn: Tensor, teacher_attn: Tensor, mask: Tensor | None = None) -> Tensor:
        s, t = self._prepare(student_attn, teacher_attn)
        terms = t * (torch.log(t + self.eps) - torch.log(s + self.eps))
        if mask is None:
            return terms.sum(dim=-1).mean()
        mask = mask.to(torch.bool)
        key_mask = mask[:, None, None, :]  # [B, 1, 1, T]
        row_kl = torch.where(key_mask, terms, terms.new_zeros(())).sum(dim=-1)  # [B, H, T]
        return masked_mean(row_kl, mask[:, None, :])
