"""Dense guidance (DGKD, Son et al., "Densely Guided Knowledge Distillation using Multiple Teacher
Assistants", ICCV 2021): a loss applied against several guides instead of one teacher.

A dense stage is taught by the teacher and every earlier student of the chain. `DenseGuidance`
wraps a loss that reads only the teacher's logits (the one output every guide shares, whatever its
shape) and applies it against each guide kept in the batch, reduced by sum (as in DGKD) or mean.
Which guides a batch keeps is the frozen side's business (training/teacher.py, `DenseGuides`);
the other losses of the stage (hidden states, attention maps) still read the stage's teacher only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cascade_kd.losses.base import Loss, LossTerm, Reads, TeacherFeatures
from cascade_kd.students.features import Features

REDUCTIONS = ("sum", "mean")


class DenseGuidance(Loss):
    """`loss` against every guide of the batch (`TeacherFeatures.guides`; without guides, the
    teacher alone), reduced by `reduction`: sum_g loss(student, g) or its mean over the guides.
    Units: those of `loss` (each guide's term has the same denominator)."""

    feature = "logits"

    def __init__(self, loss: Loss, reduction: str = "sum"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if loss.teacher_reads != Reads(logits=True):
            raise ValueError(f"dense guidance applies losses on the teachers' logits only, not {loss.name}")
        self.loss, self.reduction, self.name = loss, reduction, loss.name
        self.student_reads = loss.student_reads
        self.guide_reads = loss.teacher_reads  # read from every kept guide, the teacher among them
        self.teacher_reads = None

    def compute(self, student: Features, teacher: TeacherFeatures, batch: dict) -> Tensor:
        guides = teacher.guides if teacher.guides is not None else [teacher.teacher]
        values = torch.stack([self.loss.compute(student, TeacherFeatures(g), batch) for g in guides])
        return values.sum() if self.reduction == "sum" else values.mean()

    def units(self, batch: dict) -> Tensor:
        return self.loss.units(batch)

    def projections(self) -> dict[str, nn.Module]:
        return self.loss.projections()

    def forward(self, *args, **kwargs) -> Tensor:
        return self.loss(*args, **kwargs)


def guided(terms: list[LossTerm], reduction: str = "sum") -> list[LossTerm]:
    """The terms of a dense stage: each loss on the teacher's logits alone wrapped in DenseGuidance."""
    return [LossTerm(t.weight, DenseGuidance(t.loss, reduction)) if t.loss.teacher_reads == Reads(logits=True) else t
            for t in terms]
