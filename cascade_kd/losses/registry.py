"""The losses recipes can name: `LOSSES` maps each name to its class, and `build_terms` turns a
stage's `losses:` section into weighted, checked loss terms.

A new loss is one `Loss` subclass (losses/base.py says what it declares) passed to `register`;
config/schema.py accepts the names registered here (it reads them without importing torch, and
lists the built-in ones for recipes read before this module is imported: a test pins the two).
"""

from __future__ import annotations

from cascade_kd.losses.attention import AttentionKL, AttentionMSE, check_has_attention
from cascade_kd.losses.base import Loss, LossTerm
from cascade_kd.losses.hidden import HiddenCosine, HiddenMSE
from cascade_kd.losses.logits import HardLabelCE, LogitMSE, SoftLogitKL
from cascade_kd.losses.relations import RelationKL
from cascade_kd.students.registry import same_definition

LOSSES: dict[str, type[Loss]] = {}


def register(cls: type[Loss], *, replace: bool = False) -> type[Loss]:
    """Add a loss class under its `name` (usable as a decorator). A name already taken is refused
    unless `replace`: a copied class whose name was left unchanged would otherwise silently stand
    in for the loss it was copied from."""
    if not cls.name or cls.name == "loss":  # "loss" is the total in DistillationTask's output
        raise ValueError(f"{cls.__name__} needs a name other than {cls.name!r}")
    if cls.name in LOSSES and not same_definition(LOSSES[cls.name], cls) and not replace:
        raise ValueError(f"a loss named {cls.name!r} is registered already ({LOSSES[cls.name].__name__}): give "
                         f"{cls.__name__} another name, or register(..., replace=True) to replace it")
    LOSSES[cls.name] = cls
    return cls


for _cls in (SoftLogitKL, LogitMSE, HardLabelCE, HiddenMSE, HiddenCosine, AttentionMSE, AttentionKL, RelationKL):
    register(_cls)


def build_terms(losses: dict, teacher_config, student_config, *, where: str) -> list[LossTerm]:
    """The weighted loss terms of a stage's `losses:` section (name -> LossConfig) between two
    models, each checked against both configs (by the engine, not left to each loss: a loss on
    attention between models of which one has none is refused here, then the loss's own `check`);
    weight-0 losses are left out. Errors point at `where`.losses.NAME."""
    terms = []
    for name, cfg in losses.items():
        if cfg.weight == 0:
            continue
        cls = LOSSES[name]
        if cls.feature in ("attention", "qkv"):
            check_has_attention(cls, teacher_config, student_config, where=where)
        cls.check(cfg, teacher_config, student_config, where=where)
        terms.append(LossTerm(cfg.weight, cls.from_config(cfg, teacher_config, student_config, where=where)))
    return terms


def teacher_logit_losses() -> list[str]:
    """The names of the losses between the student's and the teacher's logits (those dense
    guidance applies to every guide)."""
    return [name for name, cls in LOSSES.items() if cls.feature == "logits" and cls.reads_teacher]
