"""Losses on the task head's outputs: soft-target KL and logit MSE against the teacher's logits,
cross-entropy against the gold labels.

Where they count (`compute`): sequence tasks, every sequence; token tasks, the labelled positions
(first sub-words, gold or unlabelled transfer text) or, with `positions: tokens`, every real token.
For masked-LM stages the head runs at the masked positions only (DistillationTask's
`logits_at_labels`): the logits are [masked positions, vocabulary] and every row counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cascade_kd.data.encode import UNLABELLED
from cascade_kd.losses.base import IGNORE_INDEX, Loss, Reads, TeacherFeatures, check_same_shape, masked_mean
from cascade_kd.students.features import Features

POSITIONS = ("labelled", "tokens")


class TeacherLogitLoss(Loss):
    """A loss between the student's and the teacher's logits, at `positions` of token tasks."""

    feature = "logits"

    def __init__(self, positions: str = "labelled"):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        self.positions = positions
        self.student_reads = self.teacher_reads = Reads(logits=True)

    def mask(self, student: Features, batch: dict) -> Tensor | None:
        """The positions that count: None for one logit row per item (sequences, masked positions)."""
        if student.logits.dim() != 3:
            return None
        return batch["labels"] != IGNORE_INDEX if self.positions == "labelled" else student.attention_mask

    def compute(self, student: Features, teacher: TeacherFeatures, batch: dict) -> Tensor:
        return self(student.logits, teacher.teacher.logits, self.mask(student, batch))

    def units(self, batch: dict) -> Tensor:
        labels = batch["labels"]
        if labels.dim() != 2:  # one item per sequence
            return torch.tensor(labels.shape[0], device=labels.device)
        if self.positions == "labelled":  # masked-LM labels too: their units are the masked positions
            return (labels != IGNORE_INDEX).sum()
        return batch["attention_mask"].sum()


class SoftLogitKL(TeacherLogitLoss):
    """Hinton-style soft-target KL divergence between teacher and student logits (recipe name `kl`).

    Loss = T^2 * mean over counted positions of KL(softmax(z_T / T) || softmax(z_S / T)),
    where the KL is summed over classes. The T^2 factor keeps gradient magnitudes comparable
    across temperatures (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network").

    Inputs:
        student_logits: float tensor [N, C] (sequence tasks) or [B, T, C] (token tasks).
        teacher_logits: float tensor of the same shape.
        mask: optional bool tensor [N] or [B, T]; False positions never count.

    Reduction: per-position mean of the class-summed KL (PyTorch's "batchmean" convention applied
    per position), times T^2. Returns a float32 scalar; 0 when no position counts.
    """

    name = "kl"
    options = ("temperature", "positions")

    def __init__(self, temperature: float = 1.0, positions: str = "labelled"):
        super().__init__(positions)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    @classmethod
    def from_config(cls, cfg, teacher_config, student_config, *, where: str) -> SoftLogitKL:
        return cls(temperature=cfg.temperature, positions=cfg.positions)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None) -> Tensor:
        check_same_shape(student_logits, teacher_logits, "logits")
        t = self.temperature
        log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
        # log_target=True computes p_T * (log p_T - log p_S) without 0 * log 0 trouble.
        kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=-1)
        return (t * t) * masked_mean(kl, mask)


class LogitMSE(TeacherLogitLoss):
    """Mean squared error between raw student and teacher logits (recipe name `logit_mse`;
    XtremeDistil's logit loss, Mukherjee & Awadallah, 2020).

    Inputs:
        student_logits: float tensor [N, C] or [B, T, C].
        teacher_logits: float tensor of the same shape.
        mask: optional bool tensor [N] or [B, T]; False positions never count.

    Reduction: mean over counted positions and over the C classes of (z_S - z_T)^2.
    Returns a float32 scalar; 0 when no position counts.
    """

    name = "logit_mse"
    options = ("positions",)

    @classmethod
    def from_config(cls, cfg, teacher_config, student_config, *, where: str) -> LogitMSE:
        return cls(positions=cfg.positions)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None) -> Tensor:
        check_same_shape(student_logits, teacher_logits, "logits")
        # Every position has the same C, so the mean of per-position means is the overall mean.
        sq = (student_logits.float() - teacher_logits.float()).pow(2).mean(dim=-1)
        return masked_mean(sq, mask)


class HardLabelCE(Loss):
    """Cross-entropy against gold labels (recipe name `ce`); reads no teacher.

    Inputs:
        logits: float tensor [N, C] (sequence tasks) or [B, T, C] (token tasks).
        labels: long tensor [N] or [B, T]; -100 marks positions that do not count (padding,
            non-first sub-words). There is no separate mask: the labels carry it.

    In a stage, unlabelled transfer positions (UNLABELLED) count as -100: they have no gold label.
    Reduction: mean over positions whose label is not -100. Returns a float32 scalar; 0 when
    every label is -100.
    """

    name = "ce"
    options = ()
    feature = "logits"
    reads_teacher = False

    def __init__(self):
        super().__init__()
        self.student_reads = Reads(logits=True)

    @classmethod
    def from_config(cls, cfg, teacher_config, student_config, *, where: str) -> HardLabelCE:
        return cls()

    def compute(self, student: Features, teacher: TeacherFeatures, batch: dict) -> Tensor:
        labels = batch["labels"]
        return self(student.logits, labels.masked_fill(labels == UNLABELLED, IGNORE_INDEX))

    def units(self, batch: dict) -> Tensor:
        labels = batch["labels"]  # gold labels only (not unlabelled transfer examples or positions)
        return ((labels != IGNORE_INDEX) & (labels != UNLABELLED)).sum()

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
        return masked_mean(ce, labels != IGNORE_INDEX)
