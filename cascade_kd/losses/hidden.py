"""Losses between hidden states, layer by layer along a layer map (TinyBERT, LightMBERT, MiniALBERT).

A student narrower than its teacher (width d_S < d_T) is compared through a trainable
Linear(d_S, d_T), one per student layer of the map: the loss builds them (`from_config`) and owns
them (`projections()`, keyed `NAME_LAYER`), and the stage's trainable module holds them, so the
optimiser, DDP and the stage checkpoint cover them like the student.

In a stage (`compute`): the mean over the map's (teacher layer, student layer) pairs of the formula
on the two layers' states, with padding masked out. Units: real tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cascade_kd.errors import RecipeError
from cascade_kd.losses.base import Loss, Reads, TeacherFeatures, check_same_shape, masked_mean, real_tokens
from cascade_kd.losses.layer_maps import layer_pairs
from cascade_kd.students.features import Features
from cascade_kd.students.registry import family_of


class HiddenLoss(Loss):
    """A loss between the student's and the teacher's hidden states of mapped layers."""

    feature = "hidden"
    options = ("layer_map",)

    def __init__(self, pairs=(), projections: dict[int, nn.Module] | None = None):
        super().__init__()
        self.pairs = [tuple(p) for p in pairs]
        # student layer -> Linear(d_S, d_T): a plain dict, so the modules are registered once, in
        # the trainable module (DistillationTask.projections), under their checkpoint keys
        self._projections = dict(projections or {})
        self.student_reads = Reads(hidden=tuple(sorted({s for _, s in self.pairs})))
        self.teacher_reads = Reads(hidden=tuple(sorted({t for t, _ in self.pairs})))

    @classmethod
    def check(cls, cfg, teacher_config, student_config, *, where: str) -> None:
        """Each mapped layer must have the width its model projects by (its hidden width): a
        BiLSTM's layer 0 is its word embeddings, which may be narrower."""
        pairs = cls._pairs(cfg, teacher_config, student_config, where)
        for side, config in (("student", student_config), ("teacher", teacher_config)):
            family = family_of(config)
            for layer in sorted({t if side == "teacher" else s for t, s in pairs}):
                width = family.hidden_width(config, layer)
                if width != config.hidden_size:
                    what = f"the embeddings of a {family.label}, which are" if layer == 0 else f"a {family.label} layer"
                    raise RecipeError(
                        f"{cls.name}'s layer map uses the {side}'s layer {layer}, {what} {width} wide, "
                        f"not its hidden width {config.hidden_size}",
                        where=f"{where}.losses.{cls.name}.layer_map",
                        hint=f"match the {family.label}'s projected output: layer_map top_only, or e.g. [[6, last]]")

    @classmethod
    def from_config(cls, cfg, teacher_config, student_config, *, where: str) -> HiddenLoss:
        pairs = cls._pairs(cfg, teacher_config, student_config, where)
        projections = {}
        if teacher_config.hidden_size != student_config.hidden_size:
            for _, s in pairs:
                projections[s] = nn.Linear(student_config.hidden_size, teacher_config.hidden_size)
        return cls(pairs, projections)

    @classmethod
    def _pairs(cls, cfg, teacher_config, student_config, where: str) -> list[tuple[int, int]]:
        return layer_pairs(cfg.layer_map, teacher_config.num_hidden_layers, student_config.num_hidden_layers,
                           feature="hidden", where=f"{where}.losses.{cls.name}.layer_map")

    def projections(self) -> dict[str, nn.Module]:
        return {f"{self.name}_{s}": module for s, module in self._projections.items()}

    def compute(self, student: Features, teacher: TeacherFeatures, batch: dict) -> Tensor:
        values = []
        for t_layer, s_layer in self.pairs:
            projection = self._projections.get(s_layer)
            student_h = student.hidden(s_layer) if projection is None else projection(student.hidden(s_layer))
            values.append(self(student_h, teacher.teacher.hidden(t_layer), student.attention_mask))
        return torch.stack(values).mean()  # mean over the map's pairs

    def units(self, batch: dict) -> Tensor:
        return real_tokens(batch)


class HiddenMSE(HiddenLoss):
    """Mean squared error between student and teacher hidden states (recipe name `hidden_mse`;
    TinyBERT, Jiao et al., 2020).

    Inputs:
        student_hidden: float tensor [B, T, D], already projected to the teacher's width D.
        teacher_hidden: float tensor [B, T, D].
        mask: optional bool tensor [B, T]; False tokens (padding) never count.

    Reduction: mean over counted tokens and over the D dimensions of the squared error.
    Returns a float32 scalar; 0 when no token counts.
    """

    name = "hidden_mse"

    def forward(self, student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        check_same_shape(student_hidden, teacher_hidden, "hidden states")
        sq = (student_hidden.float() - teacher_hidden.float()).pow(2).mean(dim=-1)
        return masked_mean(sq, mask)


class HiddenCosine(HiddenLoss):
    """Cosine distance between student and teacher hidden states, token by token (recipe name
    `hidden_cos`; DistilBERT's cosine embedding loss, Sanh et al., 2019).

    Inputs:
        student_hidden: float tensor [B, T, D], already projected to the teacher's width D.
        teacher_hidden: float tensor [B, T, D].
        mask: optional bool tensor [B, T]; False tokens (padding) never count.

    Reduction: mean over counted tokens of (1 - cosine_similarity along D). Returns a float32
    scalar; 0 when no token counts.
    """

    name = "hidden_cos"

    def forward(self, student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        check_same_shape(student_hidden, teacher_hidden, "hidden states")
        cos = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
        return masked_mean(1.0 - cos, mask)
