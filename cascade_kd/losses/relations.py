"""MiniLMv2's self-attention relation loss (recipe name `relation_kl`).

In a stage (`compute`): the mean over the map's (teacher layer, student layer) pairs of the
formula on the two layers' query/key/value projection outputs, which `extract_features` captures
with hooks (no eager attention needed). No projection and no equal head counts are needed: both
widths are split into the same number of relation heads. Units: real tokens (query rows).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cascade_kd.errors import UserError
from cascade_kd.losses.base import Loss, Reads, TeacherFeatures, masked_mean, real_tokens
from cascade_kd.losses.layer_maps import layer_pairs
from cascade_kd.students.features import Features


class RelationKL(Loss):
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

    name = "relation_kl"
    feature = "qkv"
    options = ("layer_map", "relation_heads", "relations")
    KINDS = ("query", "key", "value")

    def __init__(self, relation_heads: int = 12, relations: tuple = KINDS, *, pairs=()):
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
        self.pairs = [tuple(p) for p in pairs]  # layers 1..L, as for attention maps
        self.student_reads = Reads(qkv=tuple(sorted({s for _, s in self.pairs})))
        self.teacher_reads = Reads(qkv=tuple(sorted({t for t, _ in self.pairs})))

    @classmethod
    def check(cls, cfg, teacher_config, student_config, *, where: str) -> None:
        heads = cls._heads(cfg, teacher_config)
        for who, config in (("teacher", teacher_config), ("student", student_config)):
            if config.hidden_size % heads:
                raise UserError(
                    f"{cls.name} splits each width into {heads} relation heads, but the {who}'s width "
                    f"{config.hidden_size} is not a multiple of {heads}", where=f"{where}.losses.{cls.name}.relation_heads",
                    hint="set relation_heads to a common divisor of the teacher's and the student's widths")

    @classmethod
    def from_config(cls, cfg, teacher_config, student_config, *, where: str) -> RelationKL:
        pairs = layer_pairs(cfg.layer_map, teacher_config.num_hidden_layers, student_config.num_hidden_layers,
                            feature="attention", where=f"{where}.losses.{cls.name}.layer_map")
        return cls(cls._heads(cfg, teacher_config), tuple(cfg.relations), pairs=pairs)

    @staticmethod
    def _heads(cfg, teacher_config) -> int:
        return cfg.relation_heads or teacher_config.num_attention_heads

    def compute(self, student: Features, teacher: TeacherFeatures, batch: dict) -> Tensor:
        values = [self(student.relation_states(s), teacher.teacher.relation_states(t), student.attention_mask)
                  for t, s in self.pairs]
        return torch.stack(values).mean()  # mean over the map's pairs

    def units(self, batch: dict) -> Tensor:
        return real_tokens(batch)

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

    def forward(self, student: dict[str, Tensor], teacher: dict[str, Tensor], mask: Tensor | None = None) -> Tensor:
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
            losses.append(masked_mean(row_kl, mask[:, None, :]))
        return torch.stack(losses).mean()
