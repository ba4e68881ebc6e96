"""A stage's trainable side as one module, in the manner of timm's distillation tasks.

`DistillationTask` holds the student, the projections its losses own and the weighted losses;
`forward(batch, ...)` runs the student, asks the frozen side (training/teacher.py) for the
teacher's features, and returns a dict with `loss` (the weighted total) and each loss by name.
Fine-tuning the teacher is a task with the hard-label loss alone and no frozen side; a
CAMeMBERT/LightMBERT stage is the same task with hidden/attention/logit losses; a DGKD stage's
logit losses are wrapped in DenseGuidance and its frozen side is DenseGuides. Nothing here, or in
the loop, depends on a method's name.

Only this module is given to the optimiser and to DDP, and only its tensors are checkpointed:
the student (`student.*`) and the projections (`projections.NAME_LAYER.*`). The frozen side is
a plain attribute, run under `no_grad`.
"""

from __future__ import annotations

from functools import reduce

import torch
from torch import Tensor, nn

from cascade_kd.data.encode import IGNORE
from cascade_kd.losses.base import LossTerm, Reads, TeacherFeatures


def _union(reads) -> Reads:
    return reduce(lambda a, b: a | b, [r for r in reads if r is not None], Reads())


def reads_of(terms: list[LossTerm]) -> tuple[Reads, Reads]:
    """What the terms read of the student, and of the stage's teacher (dense guidance included)."""
    return (_union(t.loss.student_reads for t in terms),
            _union([t.loss.teacher_reads for t in terms] + [t.loss.guide_reads for t in terms]))


def weighted_losses(terms: list[LossTerm], student, teacher: TeacherFeatures, batch: dict, scales=None) -> dict[str, Tensor]:
    """{"loss": the weighted sum of the terms, NAME: each term's value}. `scales` (one per term,
    several processes only) turn this process's means into its share of the global batch's, see
    `share_scales`."""
    parts = {}
    total = torch.zeros((), dtype=torch.float32, device=batch["labels"].device)
    for i, term in enumerate(terms):
        value = term.loss.compute(student, teacher, batch)
        parts[term.name] = value
        total = total + term.weight * value * (1.0 if scales is None else scales[i])
    return {"loss": total, **parts}


class DistillationTask(nn.Module):
    """The student, its losses' projections and the weighted `terms`; `teacher`, the frozen side
    (LiveTeacher, CachedTeacher, DenseGuides; None when no loss reads a teacher, and dropped then).

    `logits_at_labels`: the head runs at the labelled positions only (labels != IGNORE: the masked
    pieces of masked-LM text, whose vocabulary-wide head costs most of the compute elsewhere), and
    the losses see those rows, [positions, C], with their labels.
    """

    def __init__(self, student: nn.Module, terms: list[LossTerm], teacher=None, *, logits_at_labels: bool = False):
        super().__init__()
        self.student = student
        self.projections = nn.ModuleDict({key: module for term in terms for key, module in term.loss.projections().items()})
        self.losses = nn.ModuleList([term.loss for term in terms])
        self.terms = list(terms)
        self.student_reads = _union(term.loss.student_reads for term in terms)
        self.direct_reads = _union(term.loss.teacher_reads for term in terms)  # of the stage's teacher
        self.guide_reads = _union(term.loss.guide_reads for term in terms)  # of every guide (dense guidance)
        if isinstance(teacher, nn.Module):  # it would be trained, synchronised and checkpointed
            raise TypeError("pass the teacher as a frozen side (e.g. LiveTeacher(model)), not as a module")
        if self.teacher_reads and teacher is None:
            raise ValueError("distillation losses need a teacher")
        self.teacher = teacher if self.teacher_reads else None
        self.logits_at_labels = logits_at_labels

    @property
    def teacher_reads(self) -> Reads:
        """Everything the losses read of the stage's teacher (what a teacher cache must hold)."""
        return self.direct_reads | self.guide_reads

    def units(self, batch: dict) -> Tensor:
        """How many items each term averages over in `batch`, one entry per term."""
        return torch.stack([term.loss.units(batch) for term in self.terms])

    def forward(self, batch: dict, members=None, step: int = 0, scales=None) -> dict[str, Tensor]:
        """The losses of one batch; `members` (its examples) and `step` (the micro-batch) are the
        frozen side's to use (cache rows, the guides kept), `scales` see `weighted_losses`."""
        positions, labelled = True, batch
        if self.logits_at_labels:
            positions = batch["labels"] != IGNORE
            labelled = {**batch, "labels": batch["labels"][positions]}
        student = self.student_reads.extract(self.student, batch, positions)
        frozen = TeacherFeatures(None)
        if self.teacher is not None:
            with torch.no_grad():
                frozen = self.teacher.features(batch, members, step, self.direct_reads, self.guide_reads, positions)
        return weighted_losses(self.terms, student, frozen, labelled, scales)


def share_scales(accelerator, task: DistillationTask, batch: dict, real: bool) -> list[Tensor]:
    """Per-term factors that make data-parallel training compute the one-process loss exactly.

    Each term is a mean over items (tokens, sequences, attention pairs: `Loss.units`). DDP
    averages the N processes' gradients, so process r scales its mean by N * units_r / units_global:
    the average over processes is then the mean over the whole global batch, as on one process,
    whatever the split of tokens between processes.
    """
    local = task.units(batch).float()
    if not real:
        local = torch.zeros_like(local)
    total = accelerator.reduce(local.clone(), reduction="sum")
    return list(accelerator.num_processes * local / total.clamp(min=1))


def unreached_parameters(task: DistillationTask, batch: dict, members) -> list[str]:
    """Names of trainable parameters that get no gradient from the task's loss (probed on one
    batch, in eval mode so no random numbers are drawn)."""
    named = [(n, p) for n, p in task.named_parameters() if p.requires_grad]
    was_training = task.training
    task.eval()
    try:
        loss = task(batch, members)["loss"]
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    finally:
        task.train(was_training)
    return [n for (n, _), g in zip(named, grads) if g is None]
