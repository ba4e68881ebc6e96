"""What every distillation loss declares, and the helpers the loss modules share.

A loss is one `Loss` subclass, registered under the name recipes use (losses/registry.py). It says:

* what it reads: `student_reads` and `teacher_reads`, each a `Reads` (logits; the hidden states,
  attention maps or query/key/value states of given layers, in the one layer numbering of
  students/features.py); `teacher_reads` is None for a loss that reads no teacher;
* what it averages over: `units(batch)`, the denominator of its mean in that batch (tokens,
  sequences, attention pairs, labelled positions), which data-parallel training weights by;
* what it needs of the two models: `check(cfg, teacher_config, student_config, where=...)`, from
  their configs, before anything trains (registry.build_terms calls it, after refusing a loss with
  `feature` attention or qkv between models of which one has no attention: a BiLSTM);
* how it is built from its recipe section: `from_config(...)`, with any projection it owns
  (`projections()`: trainable, so kept in the stage's trainable module and its checkpoint);
* optionally `pairs`, the (teacher layer, student layer) pairs it compares: stage.json and the
  model card list them;
* its formula on tensors (`forward`: inputs, masks, formula and source in its docstring, tested
  against values computed by hand), and how the formula is applied to a stage's features
  (`compute(student, teacher, batch)`, written once per family: logits, hidden states, ...).

Conventions shared by every formula:

* Masks are bool tensors; True marks a position that counts (a real token, or for token tasks the
  first sub-word of a word). `None` means every position counts.
* Inputs are cast to float32 before any arithmetic, so callers may run under bf16 autocast.
* Every formula returns a float32 scalar. When no position counts it returns 0 that is still
  connected to the student input (so `backward()` works), never NaN.
* Teacher tensors are expected without `requires_grad`; nothing here detaches them for you.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from cascade_kd.data.encode import IGNORE
from cascade_kd.students.features import Features, extract_features

IGNORE_INDEX = IGNORE  # the Hugging Face / PyTorch convention for labels that do not count


@dataclass(frozen=True)
class Reads:
    """What a loss reads of one model's forward pass, in the layer numbering of features.py:
    logits, hidden states 0..L, attention maps 1..L, query/key/value states of layers 1..L."""

    logits: bool = False
    hidden: tuple[int, ...] = ()
    attention: tuple[int, ...] = ()
    qkv: tuple[int, ...] = ()

    def __post_init__(self):
        # no negative numbers (features.py's -1, the last layer): the teacher cache stores layers by
        # these numbers, so a loss resolves "last" against its model's config when it is built
        for kind, first in (("hidden", 0), ("attention", 1), ("qkv", 1)):
            wrong = [layer for layer in getattr(self, kind) if layer < first]
            if wrong:
                raise ValueError(f"Reads.{kind} numbers layers from {first}, not {wrong[0]}: for the last layer "
                                 "use the model's config.num_hidden_layers")

    def __or__(self, other: Reads | None) -> Reads:
        if other is None:
            return self
        merge = lambda a, b: tuple(sorted(set(a) | set(b)))  # noqa: E731
        return Reads(self.logits or other.logits, merge(self.hidden, other.hidden),
                     merge(self.attention, other.attention), merge(self.qkv, other.qkv))

    def __bool__(self) -> bool:
        return bool(self.logits or self.hidden or self.attention or self.qkv)

    def extract(self, model, batch: dict, positions=True) -> Features:
        """Run `model` on `batch` for exactly these features. `positions`: where logits are wanted
        (True: everywhere; a bool mask [B, T]: those positions only, as extract_features says)."""
        return extract_features(model, batch, hidden=bool(self.hidden), attentions=bool(self.attention),
                                qkv_layers=self.qkv, logits=positions if self.logits else False)


@dataclass
class TeacherFeatures:
    """The frozen side's features for one batch: the stage's teacher (None when dense guidance
    dropped it and no loss needs more than its logits), and with dense guidance the kept guides."""

    teacher: Features | None
    guides: list[Features] | None = field(default=None)


class Loss(nn.Module):
    """A distillation loss (see the module docstring). Subclasses set `name` and implement
    `forward` (the formula), `compute`, `units` and `from_config`."""

    name: ClassVar[str] = ""
    # what the loss compares, for messages and for checks that read only the recipe (e.g. what a
    # teacher cache holds): "logits", "hidden", "attention" or "qkv"
    feature: ClassVar[str] = ""
    reads_teacher: ClassVar[bool] = True
    # the LossConfig keys it reads besides `weight`: another key a recipe sets on it (to other than
    # its default) is refused before training (plan.py); None: not declared, nothing is refused
    options: ClassVar[tuple[str, ...] | None] = None

    student_reads: Reads = Reads()
    teacher_reads: Reads | None = None
    guide_reads: Reads | None = None  # read from every kept guide (dense guidance, losses/guides.py)

    @classmethod
    def check(cls, cfg, teacher_config, student_config, *, where: str) -> None:
        """Refuse (RecipeError / UserError at `where`.losses.NAME...) what the two models cannot do."""

    @classmethod
    def from_config(cls, cfg, teacher_config, student_config, *, where: str) -> Loss:
        """The loss a recipe's `losses.NAME` section describes, between these two models (checked)."""
        raise NotImplementedError

    def units(self, batch: dict) -> Tensor:
        """How many items this loss averages over in `batch` (its mean's denominator)."""
        raise NotImplementedError

    def compute(self, student: Features, teacher: TeacherFeatures, batch: dict) -> Tensor:
        """The loss of one batch, from the student's and the frozen side's features."""
        raise NotImplementedError

    def projections(self) -> dict[str, nn.Module]:
        """Trainable modules this loss owns, by checkpoint key (they live in the trainable module)."""
        return {}


@dataclass
class LossTerm:
    """One weighted loss of a stage."""

    weight: float
    loss: Loss

    @property
    def name(self) -> str:
        return self.loss.name


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
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


def check_same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher {what} must have the same shape, "
            f"got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def real_tokens(batch: dict) -> Tensor:
    """The number of real (non-padding) tokens of a batch."""
    return batch["attention_mask"].sum()
