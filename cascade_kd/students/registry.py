"""Student families behind one registry: `student.kind` in a recipe names a family, and everything
that differs between families is a question the family answers.

A family is one module that defines a `StudentFamily` subclass and registers an instance of it
(`register(MyFamily())`, at import). `cascade_kd/students/__init__.py` imports the built-in ones:
transformer (any Hugging Face encoder, layer subsets of the teacher), recursive (MiniALBERT) and
bilstm (XtremeDistil). The engine, the cascade and the reports never branch on a kind.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing

from torch import nn

from cascade_kd.config.schema import STUDENT_KINDS
from cascade_kd.errors import RecipeError
from cascade_kd.plugins import load_plugins
from cascade_kd.students.anatomy import base_counts, freeze_embeddings, layer_list


class StudentFamily:
    """What the cascade asks of a kind of student. Subclasses override what differs from a plain
    transformer; `kind` is the recipe's `student.kind`, `model_type` the Hugging Face model type its
    checkpoints carry (None: the teacher's own architecture, as for transformer students)."""

    kind: str = ""
    model_type: str | None = None
    label: str = ""  # how messages name a model of this family ("a BiLSTM teacher")
    masked_lm: bool = True  # can be a masked-LM student (general distillation)
    teaches: tuple[str, ...] | None = None  # the student kinds a model of this family can teach (None: all)
    has_attention: bool = True  # attention maps and query/key/value states, which attention losses read
    # the recipe keys a student section of this kind takes, and their checks: those of the built-in
    # kind named here (config/schema.py: transformer, recursive or bilstm); `spec_defaults` fills
    # keys the recipe leaves out (e.g. {"init": "random"}) before they are checked
    spec_rules: str = "transformer"
    spec_defaults: dict = {}
    # keys of the family's own, which recipes write under `student.options`: a pydantic model whose
    # fields are those keys with their types and defaults (None: the family takes none). The spec
    # a family receives holds them, checked and with defaults filled, in `spec.options` (a dict)
    options_model: type | None = None
    layers_from_teacher: bool = False  # built by copying the teacher's layers: its layer list must be found

    def owns(self, model_or_config) -> bool:
        """Whether a model (or config) is one of this family's."""
        config = getattr(model_or_config, "config", model_or_config)
        return self.model_type is not None and getattr(config, "model_type", None) == self.model_type

    def config(self, t_config, spec, *, where: str):
        """The student's config from its teacher's, with every shape check, before anything trains.
        Returns (config, plan, same_shape): the plan is whatever `build` needs to initialise it."""
        raise NotImplementedError

    def build(self, teacher, spec, *, where: str) -> nn.Module:
        """The student (float32), initialised from `teacher` as `spec` says; the teacher is untouched."""
        raise NotImplementedError

    def direct_spec(self, final, final_config, teacher_config):
        """The spec of the direct baseline: the final student's shape, built from the original teacher."""
        raise NotImplementedError

    def refreeze(self, student, spec) -> None:
        """Freeze again what `spec` froze when it built `student` (a stage with `student: previous`
        trains a copy further, with the same parts fixed)."""
        freeze_embeddings(student, spec.freeze_embeddings)

    def hidden_width(self, config, layer: int) -> int:
        """The width of hidden state `layer` (0: the embedding output); losses project by
        `config.hidden_size`, so a layer of another width cannot be matched."""
        return config.hidden_size

    def shape(self, config) -> str:
        """The model's shape in log lines and reports ("6 layers x 384")."""
        return f"{config.num_hidden_layers} layers x {config.hidden_size}"

    def layers_label(self, config) -> str:
        """The `layers` column of the report."""
        return str(config.num_hidden_layers)

    def applied_layers(self, model) -> list[nn.Module]:
        """The module applied as transformer layer k, at index k - 1 (for query/key/value hooks)."""
        return list(layer_list(model)[1])

    def extra_counts(self, model, total: int) -> dict[str, int]:
        """params_unrolled: what the forward pass applies (= params_total unless layers are shared);
        params_adapters: adapter weights."""
        return {"params_unrolled": total, "params_adapters": 0}


FAMILIES: dict[str, StudentFamily] = {}


def same_definition(a: type, b: type) -> bool:
    """Whether two classes are one definition: the same class, or one module's class imported twice
    (reloaded, or run as __main__ and imported by its name: the same source file)."""
    if a is b:
        return True
    if a.__qualname__ != b.__qualname__:
        return False
    if a.__module__ == b.__module__:
        return True
    if "__main__" in (a.__module__, b.__module__):
        try:
            return inspect.getsourcefile(a) == inspect.getsourcefile(b) is not None
        except TypeError:  # a class without a source file (built in C, or defined interactively)
            return False
    return False


def _plain_option(annotation) -> bool:
    """Whether an options_model field holds what a recipe line can: a scalar (bool, int, float,
    str, a Literal or an Enum), optionally None, or a list or tuple of scalars."""
    scalar = (bool, int, float, str, type(None))
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in scalar or (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        return True
    if origin is typing.Literal:
        return True
    if origin in (typing.Union, types.UnionType):
        return all(_plain_option(a) for a in args)
    if origin in (list, tuple):  # of scalars: a bare or nested list is not one
        return all(a is Ellipsis or (typing.get_origin(a) not in (list, tuple) and _plain_option(a)) for a in args)
    return False


def _check_options_model(family: StudentFamily) -> None:
    """An options_model is a pydantic model of flat keys, each a recipe key by its field name."""
    name, model = type(family).__name__, family.options_model
    fields = getattr(model, "model_fields", None)
    if not isinstance(fields, dict) or not hasattr(model, "model_validate"):
        raise ValueError(f"{name}.options_model is {model!r}: give a pydantic model (a BaseModel subclass whose "
                         "fields are the family's own keys)")
    aliased = [key for key, f in fields.items() if f.alias or f.validation_alias or f.serialization_alias]
    if aliased:  # a key read under one name and written back under another would not read back
        raise ValueError(f"{name}.options_model gives {', '.join(aliased)} an alias: its field names are the recipe "
                         "keys, so leave aliases out")
    odd = [key for key, f in fields.items() if not _plain_option(f.annotation)]
    if odd:  # what a recipe line holds, and what reads back and hashes alike in every process
        raise ValueError(f"{name}.options_model: {', '.join(odd)} must be a bool, int, float, str, Literal or Enum, "
                         "optionally None, or a list of those (not a set, whose order changes between processes, "
                         "nor a nested model: give it flat keys)")


def register(family: StudentFamily, *, replace: bool = False) -> StudentFamily:
    """Add a family under its `kind`, which recipes then name in `student.kind`. A kind already
    taken is refused unless `replace`: a family copied from another with its `kind` left unchanged
    would otherwise silently build every student of that kind."""
    if not isinstance(family.kind, str) or not family.kind.strip():
        raise ValueError(f"{type(family).__name__} needs a kind (the name recipes use in student.kind)")
    if family.kind in FAMILIES and not same_definition(type(FAMILIES[family.kind]), type(family)) and not replace:
        raise ValueError(f"a student family of kind {family.kind!r} is registered already "
                         f"({type(FAMILIES[family.kind]).__name__}): give {type(family).__name__} another kind, "
                         "or register(..., replace=True) to replace it")
    if family.options_model is not None:
        _check_options_model(family)
    if family.spec_rules not in STUDENT_KINDS:
        raise ValueError(f"{type(family).__name__}.spec_rules is {family.spec_rules!r}: name the built-in kind whose "
                         f"recipe keys it takes ({', '.join(STUDENT_KINDS)})")
    FAMILIES[family.kind] = family
    return family


def family(kind: str) -> StudentFamily:
    """The family a recipe's `student.kind` names (an installed plugin's too: cascade_kd/plugins.py)."""
    if kind not in FAMILIES:
        load_plugins()
    try:
        return FAMILIES[kind]
    except KeyError:
        raise RecipeError(f"unknown student kind {kind!r}", where="student.kind",
                          hint=f"use one of {', '.join(sorted(FAMILIES))}") from None


def family_of(model_or_config) -> StudentFamily:
    """The family of a model or config: the one that owns its model type, else transformer."""
    for candidate in FAMILIES.values():
        if candidate.owns(model_or_config):
            return candidate
    return FAMILIES["transformer"]


def check_teacher(t_config, spec, *, where: str) -> None:
    """A student kind that its teacher's family cannot teach (e.g. a transformer from a BiLSTM)."""
    teacher = family_of(t_config)
    if teacher.teaches is not None and spec.kind not in teacher.teaches:
        raise RecipeError(f"a {spec.kind} student cannot be built from a {teacher.label} teacher", where=f"{where}.kind",
                          hint=f"use kind: {teacher.kind} for every stage after a {teacher.kind} one")


def count_parameters(model) -> dict[str, int]:
    """Unique parameters (shared tensors counted once), split into embedding and the rest; trainable
    ones (requires_grad); params_unrolled and params_adapters as the model's family counts them."""
    counts = base_counts(model)
    return {**counts, **family_of(model).extra_counts(model, counts["params_total"])}


def student_config(t_config, spec, *, where: str = "student"):
    """The student's config from its teacher's, with every shape check of its family, before anything
    trains (used both to check a whole cascade from configs and to build the student)."""
    check_teacher(t_config, spec, where=where)
    return family(spec.kind).config(t_config, spec, where=where)


def build_student(teacher, spec, *, where: str = "student") -> nn.Module:
    """A student built from `teacher` as `spec` says (in float32); the teacher is left untouched."""
    check_teacher(teacher.config, spec, where=where)
    return family(spec.kind).build(teacher, spec, where=where)
