"""The recipe: one YAML file that says what to distil, from what, into what.

Every section is a pydantic model with `extra="forbid"`, so a typo is an error, never a silently
ignored key. `load_recipe` reports problems as `RecipeError`s naming the file, the line and the
key, and suggests the nearest valid key for an unknown one. See `examples/` for full recipes.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from cascade_kd.config.messages import short, suggest, to_recipe_error, where
from cascade_kd.config.yaml_lines import parse_yaml, read_text
from cascade_kd.errors import RecipeError
from cascade_kd.fileio import looks_like_path
from cascade_kd.plugins import load_plugins


class _Section(BaseModel):
    # allow_inf_nan=False: `epochs: .inf` would pass gt=0 and crash the step count; NaN and inf are
    # never meant, and would make manifest.json invalid JSON
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TrainConfig(_Section):
    """How one model is trained (the teacher's fine-tuning, or one cascade stage)."""

    epochs: float = Field(3, gt=0)
    lr: float = Field(5e-4, gt=0)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    grad_accum: int = Field(1, ge=1)
    # auto: bf16 autocast where the hardware runs it natively (CPU AMX, recent GPUs), else fp32
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    eval_every_epoch: bool = True
    patience: Optional[int] = Field(None, ge=1)  # early stopping on the dev score, in evaluations
    # full-state checkpoint every N steps (and always after each evaluation), for --resume mid-stage
    checkpoint_every: Optional[int] = Field(200, ge=1)
    # distillation stages: run the teacher once, keep what the losses need on disk in this dtype,
    # read it back every epoch (cascade_kd/training/teacher_cache.py); off = run the teacher on every batch
    teacher_cache: Literal["off", "bf16", "fp16", "fp32"] = "off"
    # gradual: top-down unfreezing (XtremeDistil): the first epoch trains the head (and projections),
    # each further epoch also the next layer down, then the embeddings (unless frozen); none: all at once
    unfreeze: Literal["none", "gradual"] = "none"
    # trainable word embeddings: seen = only the rows of pieces the training data uses get gradients
    # and optimiser state (cascade_kd/students/embedding_rows.py; the rest keep their values); all = every row
    embedding_rows: Literal["seen", "all"] = "seen"
    # on several processes, the frozen teacher (and dense guides): none = a whole copy on each process;
    # fsdp = split between them with FSDP, gathered one layer at a time (cascade_kd/training/sharding.py)
    teacher_sharding: Literal["none", "fsdp"] = "none"
    # training curves (each loss part, learning rate, dev score) to these trackers as well, through
    # accelerate's tracker integration, into RUN_DIR/logs/ where the tracker writes files; none by
    # default (the curves are always in each model's stage.json and the HTML report)
    report_to: list[Literal["tensorboard", "trackio", "wandb", "mlflow"]] = Field(default_factory=list)

    @field_validator("report_to")
    @classmethod
    def _unique_trackers(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("report_to lists each tracker at most once")
        return v


class LossConfig(_Section):
    """One loss term. Which fields apply depends on the loss (see README, 'Losses')."""

    weight: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)  # kl
    layer_map: Union[Literal["top_only", "uniform", "top_aligned", "skip2"], list[list[Union[int, str]]]] = "top_only"
    head_reduction: Literal["none", "mean"] = "none"  # attention losses: "mean" allows unequal heads
    # token tasks: logits compared at labelled positions only (first sub-words) or at every real token
    positions: Literal["labelled", "tokens"] = "labelled"
    # relation_kl (MiniLMv2): relation heads each width is split into (default: the teacher's attention
    # heads; must divide both widths), and which of the q-q, k-k, v-v relations are matched
    relation_heads: Optional[int] = Field(None, ge=1)
    relations: list[Literal["query", "key", "value"]] = Field(default_factory=lambda: ["query", "key", "value"], min_length=1)


    @field_validator("layer_map", mode="before")
    @classmethod
    def _no_boolean_layers(cls, v):
        # YAML reads yes/no/on/off/true/false as booleans, which would otherwise pass for layers 1 and 0
        if isinstance(v, list):
            for pair in v:
                for ref in pair if isinstance(pair, list) else []:
                    if isinstance(ref, bool):
                        raise ValueError(f"layer reference {ref!r} is a boolean (YAML reads yes, no, on, off, true "
                                         "and false so), not a layer: write a layer number, 'embeddings' or 'last'")
        return v

    @field_validator("relations")
    @classmethod
    def _unique_relations(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("relations lists each of query, key, value at most once")
        return v


# the built-in losses (cascade_kd/losses/registry.py registers a class for each; a test pins the two)
LOSS_NAMES = ("kl", "logit_mse", "ce", "hidden_mse", "hidden_cos", "attention_mse", "attention_kl", "relation_kl")


def loss_names(name: str | None = None) -> tuple[str, ...]:
    """The loss names a recipe may use: those registered (losses/registry.py), read without
    importing torch while the registry is not imported and `name` is a built-in one; a `name`
    that is not (a loss added to the registry, a misspelling) imports the registry to find out."""
    registry = sys.modules.get("cascade_kd.losses.registry")
    if name is not None and name not in LOSS_NAMES and (registry is None or name not in registry.LOSSES):
        registry = importlib.import_module("cascade_kd.losses.registry")
        if name not in registry.LOSSES:
            load_plugins()  # an installed package's loss (cascade_kd/plugins.py)
    return tuple(registry.LOSSES) if registry is not None else LOSS_NAMES


# the built-in student kinds, each with the recipe keys it takes (its "rules"); a family registered
# later (students/registry.py) names the built-in kind whose keys and defaults it takes (spec_rules)
STUDENT_KINDS = ("transformer", "recursive", "bilstm")


def kind_rules(kind: str) -> str | None:
    """Which built-in kind's keys and defaults a student section of this `kind` takes (None: no
    family of that kind is registered). Read without importing torch for the built-in kinds."""
    if kind in STUDENT_KINDS:
        return kind
    registry = sys.modules.get("cascade_kd.students.registry")
    if registry is None or kind not in registry.FAMILIES:
        importlib.import_module("cascade_kd.students")  # registers the built-in families (torch)
        registry = sys.modules["cascade_kd.students.registry"]
        if kind not in registry.FAMILIES:
            load_plugins()  # an installed package's family (cascade_kd/plugins.py)
    family = registry.FAMILIES.get(kind)
    return None if family is None else family.spec_rules


def student_kinds() -> tuple[str, ...]:
    """The student kinds a recipe may name (the built-in ones until the registry is imported)."""
    registry = sys.modules.get("cascade_kd.students.registry")
    return tuple(registry.FAMILIES) if registry is not None else STUDENT_KINDS


_STAGE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


InitName = Literal["bottom", "top", "uniform", "random", "mean"]  # student.init's named forms


class StudentConfig(_Section):
    """How a stage's student is built from the stage's teacher.

    kind: recursive builds a MiniALBERT-style student (cascade_kd/students/recursive.py): ONE transformer
    layer applied `recursions` times (which is also its `layers`, the depth layer maps see), with a
    pair of bottleneck adapters per step; its keys: recursions, embedding_size, adapter_reduction,
    train_only, and init mean | layer:K | random (default mean), embeddings auto (default) | copy |
    pca | random.

    kind: bilstm builds an XtremeDistil BiLSTM student (cascade_kd/students/bilstm.py): word-piece embeddings of
    width embedding_size (default min(300, the teacher's)), lstm_layers BiLSTM layers of `hidden`
    units PER DIRECTION (default half the projection width), a GELU projection to projection_size
    (default: the teacher's hidden width) and the head; one layer to layer maps; embeddings auto
    (default: copy when the widths match, else pca) | copy | pca | random; no init key.
    """

    kind: str = "transformer"  # a registered family (students/registry.py)
    layers: int = Field(ge=1)
    # which teacher layers initialise the student: bottom-k (LightMBERT), top-k, evenly spread,
    # an explicit list of teacher layer numbers (1-based), or random; recursive students: the
    # element-wise mean of the teacher's layers, one teacher layer (layer:K, 1-based), or random
    init: Union[InitName, list[int],
                Annotated[str, StringConstraints(pattern=r"^layer:[1-9][0-9]*$")]] = "bottom"
    hidden: Optional[int] = Field(None, ge=1)  # a different width builds a fresh config
    heads: Optional[int] = Field(None, ge=1)
    intermediate: Optional[int] = Field(None, ge=1)
    # copy: the teacher's embeddings (same width); pca: teacher's projected onto its top principal
    # components (other width, XtremeDistil); random
    # auto (recursive and BiLSTM students, their default): copy when the widths match, else pca
    embeddings: Literal["copy", "pca", "random", "auto"] = "copy"
    freeze_embeddings: Union[bool, list[Literal["word", "position", "token_type"]]] = False
    # recursive students only
    recursions: Optional[int] = Field(None, ge=1)  # recursion steps of the shared layer (= layers)
    embedding_size: Optional[int] = Field(None, ge=1)  # embedding width (default: hidden), projected to hidden
    adapter_reduction: Optional[int] = Field(None, ge=1)  # adapter bottleneck = hidden // this (default 16)
    train_only: Optional[Literal["adapters"]] = None  # adapters: train only the adapters and the task head
    # BiLSTM students only (kind: bilstm; `hidden` is then the LSTM's units per direction)
    lstm_layers: Optional[int] = Field(None, ge=1)
    projection_size: Optional[int] = Field(None, ge=1)  # width the BiLSTM output is projected to (default: teacher's)
    # a registered family's own keys, checked by its `options_model` (students/registry.py) and
    # filled with its defaults; built-in kinds take none
    options: Optional[dict[str, Any]] = Field(None, validate_default=True)  # dump(): the values away from defaults

    @field_validator("kind")
    @classmethod
    def _registered(cls, v):
        if kind_rules(v) is None:
            names = student_kinds()
            near = difflib.get_close_matches(v, names, n=1)
            raise ValueError(f"unknown student kind {short(v)} (" + (f"did you mean {near[0]!r}?" if near else
                             f"the kinds: {', '.join(names)}") + ")")
        return v

    @field_validator("options", mode="before")
    @classmethod
    def _family_keys(cls, v, info):
        kind = info.data.get("kind")  # absent when the kind itself was refused
        return v if kind is None else _family_options(kind, v)

    @field_validator("init")
    @classmethod
    def _explicit_layers(cls, v):
        if isinstance(v, list) and (not v or any(i < 1 for i in v)):
            raise ValueError("an explicit init list holds teacher layer numbers starting at 1")
        return v

    @field_validator("init", mode="before")
    @classmethod
    def _layer_k(cls, v):
        if isinstance(v, str) and v.startswith("layer:") and not re.fullmatch(r"layer:[1-9][0-9]*", v):
            raise ValueError(f"init {v!r}: layer:K names one teacher layer by its number, starting at 1 (e.g. layer:6)")
        if isinstance(v, str) and not v.startswith("layer:") and v not in get_args(InitName):
            raise ValueError(f"init {v!r} is none of the forms: {', '.join(get_args(InitName))} (mean: recursive students), "
                             "a list of teacher layer numbers such as [1, 4, 8], or layer:K (one teacher layer, from 1)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data):
        """Each kind's defaults, before the keys are checked: a registered family's own
        (`spec_defaults`), then its rules' (a BiLSTM student is one layer to layer maps, with
        init random and embeddings auto; a recursive student's depth is `recursions`, or `layers`,
        the same number, with init mean); a transformer student's are the fields' own."""
        rules = _rules_of(data)
        if rules is not None and rules != data.get("kind", "transformer"):  # a registered family's defaults first
            data = {**_family_defaults(data["kind"]), **data}
        if rules == "bilstm":
            data = dict(data)
            if data.setdefault("layers", 1) != 1:
                raise ValueError("a BiLSTM student is one layer to layer maps (layers: 1); "
                                 "its LSTM depth is lstm_layers")
            if data.get("init", "random") != "random":  # random: as the recipe is written back (dump)
                raise ValueError("init does not apply to BiLSTM students (their LSTM starts random; "
                                 "embeddings: copy | pca | random says how the embeddings start)")
            data["init"] = "random"
            data.setdefault("embeddings", "auto")
            data.setdefault("lstm_layers", 1)
            return data
        if rules != "recursive":
            return data
        data = dict(data)
        if "recursions" in data and "layers" not in data:
            data["layers"] = data["recursions"]
        elif "layers" in data and "recursions" not in data:
            data["recursions"] = data["layers"]
        elif "layers" not in data:
            raise ValueError("a recursive student needs recursions (how often its one layer is applied)")
        data.setdefault("init", "mean")
        data.setdefault("embeddings", "auto")
        data.setdefault("adapter_reduction", 16)
        return data

    @model_validator(mode="after")
    def _kind_keys(self):
        rules = kind_rules(self.kind)
        if rules != "bilstm":
            for key in ("lstm_layers", "projection_size"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} applies to BiLSTM students only (add kind: bilstm)")
        else:
            for key in ("recursions", "heads", "intermediate", "adapter_reduction", "train_only"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} does not apply to BiLSTM students")
            if isinstance(self.freeze_embeddings, list) and set(self.freeze_embeddings) - {"word"}:
                raise ValueError("a BiLSTM student has word embeddings only (freeze_embeddings: true or [word])")
            return self
        if rules == "transformer":
            for key in ("recursions", "embedding_size", "adapter_reduction", "train_only"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} applies to recursive students only (add kind: recursive)")
            if self.init == "mean" or (isinstance(self.init, str) and self.init.startswith("layer:")):
                raise ValueError(f"init {self.init!r} applies to recursive students only (add kind: recursive)")
            if self.embeddings == "auto":
                raise ValueError("embeddings: auto applies to recursive and BiLSTM students only (use copy, pca or random)")
        else:
            if self.recursions != self.layers:
                raise ValueError(f"a recursive student's layers are its recursions: {self.layers} != {self.recursions}")
            if self.init in ("bottom", "top", "uniform") or isinstance(self.init, list):
                raise ValueError(f"init {self.init!r} is for transformer students; a recursive student takes "
                                 "mean, layer:K (a 1-based teacher layer) or random")
        return self


def _rules_of(data) -> str | None:
    """The rules of a student section before validation (None: not a section of a known kind)."""
    kind = data.get("kind", "transformer") if isinstance(data, dict) else None
    return kind_rules(kind) if isinstance(kind, str) else None


def _family_defaults(kind: str) -> dict:
    """A registered family's defaults for its student section (StudentFamily.spec_defaults)."""
    return dict(sys.modules["cascade_kd.students.registry"].FAMILIES[kind].spec_defaults)


def _family_options(kind: str, given):
    """`options`, a registered family's own keys, checked by its `options_model` (a pydantic
    model whose field names are the keys) and filled with its defaults: the family reads them all from
    `spec.options`. Built-in kinds, and families without an options_model, take none."""
    if kind_rules(kind) == kind:  # a built-in kind: its keys are the section's own
        if given is not None:
            raise ValueError(f"options holds the keys of a student family of your own; kind {kind} takes none "
                             "(its keys go in the student section itself)")
        return None
    model = sys.modules["cascade_kd.students.registry"].FAMILIES[kind].options_model
    if model is None:
        if given is not None:
            raise ValueError(f"student kind {kind!r} takes no options (its family declares no options_model)")
        return None
    if given is not None and not isinstance(given, dict):
        raise ValueError(f"options maps the keys of kind {kind!r} to values, not {short(given)}")
    for key in given or {}:  # whatever the model's own `extra` setting says
        if key not in model.model_fields:
            raise ValueError(f"unknown key {key!r} of kind {kind!r} ({suggest(key, model.model_fields)})")
    try:
        checked = model.model_validate(given or {})
    except ValidationError as err:
        first = err.errors()[0]
        key, *items = first["loc"] or ("",)
        at = repr(str(key)) + "".join(f"[{i}]" for i in items) if key != "" else ""  # quoted: the error points at its line
        raise ValueError(f"{at + ': ' if at else ''}{first['msg']} (kind {kind!r} takes: "
                         f"{', '.join(model.model_fields) or 'no keys'})") from None
    values = _option_values(checked, exclude_defaults=False)
    for key, value in values.items():  # NaN and inf would make manifest.json invalid JSON, as elsewhere
        if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            raise ValueError(f"{key!r}: {value} is not finite (kind {kind!r})")
    return values


def _option_values(checked: BaseModel, *, exclude_defaults: bool) -> dict:
    """A family's options as plain data, without computed fields (not keys a recipe may write)."""
    data = checked.model_dump(mode="json", exclude_defaults=exclude_defaults)
    for name in type(checked).model_computed_fields:
        data.pop(name, None)
    return data


def _options_as_written(kind: str, options: dict) -> dict:
    """A family's options as dump() writes them: those away from their default only, so that a
    plugin release that adds a key (with its default) leaves the recipe's fingerprint and model
    keys as they were, as dump() does for the built-in keys added after recipes were first hashed."""
    model = sys.modules["cascade_kd.students.registry"].FAMILIES[kind].options_model
    return _option_values(model.model_validate(options), exclude_defaults=True)


class StageConfig(_Section):
    """One cascade stage: the student's shape, its losses and train overrides, and its guides.

    guides: "chain" (default) teaches the stage from the previous model of the chain only.
    "dense" is densely guided distillation (DGKD, Son et al., ICCV 2021): the logit losses (kl,
    logit_mse) are computed against every larger model of the chain (the original teacher and each
    earlier stage's student, the immediate teacher included); `ce` is unchanged, and hidden-state
    and attention losses still use only the immediate teacher. Per batch exactly `drop_guides` of
    those guides are dropped uniformly at random (reproducibly, from the stage seed and the step).
    guide_reduction combines the per-guide logit terms of the kept guides: "sum", as in the DGKD
    paper, so the effective weight of the logit losses grows with the number of kept guides; or
    "mean", which averages them so that the weight stays that of a single teacher.
    """

    name: str  # a directory name: see _directory_name
    # how the student is built from the stage's teacher, or "previous": the previous stage's student
    # itself, trained further (XtremeDistil's stages: representation, then logits, then labels)
    student: Union[StudentConfig, Literal["previous"]]
    # previous: the chain's previous model teaches (the cascade); original: the recipe's teacher does
    teacher: Literal["previous", "original"] = "previous"
    losses: Optional[dict[str, LossConfig]] = None  # None: the cascade's default losses
    train: Optional[dict[str, Any]] = None  # overrides of the cascade's train settings
    # dense: logit losses from the teacher and every earlier stage's student (DGKD), not only the previous model
    guides: Literal["chain", "dense"] = "chain"
    drop_guides: int = Field(0, ge=0)  # dense only: exactly this many guides dropped at random per batch
    # dense only. "sum" (the DGKD paper) ADDS the per-guide KD terms, so the effective weight of the
    # logit losses grows with the number of kept guides; "mean" averages them (one teacher's weight)
    guide_reduction: Literal["sum", "mean"] = "sum"

    @field_validator("name")
    @classmethod
    def _directory_name(cls, v):
        # The name is a directory under RUN_DIR/stages/ and RUN_DIR/state/: one plain path component.
        # ".." or "." would point at RUN_DIR itself (whose state directory is removed when the stage is
        # saved), and a leading "." collides with the temporary and backup directories of atomic writes.
        if not _STAGE_NAME.fullmatch(v):
            raise ValueError(
                f"stage name {short(v)} is not a plain directory name (it names RUN_DIR/stages/<name>): "
                "use letters, digits, '_', '-' and '.', not starting with '.'"
            )
        # compared without case: on macOS and Windows, stages/Direct is stages/direct
        for reserved in ("teacher", "direct"):
            if v.casefold() == reserved:
                raise ValueError(f"stage name {v!r} is reserved for the {reserved} model")
        return v

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, v):
        if v is None:
            return v
        for name in v:
            names = loss_names(name)
            if name not in names:
                near = difflib.get_close_matches(name, names, n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"valid losses: {', '.join(names)}"
                raise ValueError(f"unknown loss {short(name)} ({hint})")
        if not any(cfg.weight > 0 for cfg in v.values()):
            raise ValueError("every loss has weight 0: give at least one a positive weight")
        return v


def default_losses() -> dict[str, LossConfig]:
    """Soft logits plus top-layer hidden and attention matches (LightMBERT/CAMeMBERT style)."""
    return {
        "kl": LossConfig(weight=1.0, temperature=2.0),
        "hidden_mse": LossConfig(weight=1.0, layer_map="top_only"),
        "attention_mse": LossConfig(weight=1.0, layer_map="top_only"),
    }


class CascadeConfig(_Section):
    # no stages: the recipe only trains (or loads) and scores the teacher, e.g. fine-tuning a model of
    # an earlier cascade on a task, or pretraining a masked-LM teacher (`cascade-kd pretrain`)
    stages: list[StageConfig] = Field(default_factory=list)
    losses: dict[str, LossConfig] = Field(default_factory=default_losses)
    # direct baseline: the final student's shape distilled straight from the original teacher
    direct: bool = True

    @field_validator("losses")
    @classmethod
    def _known(cls, v):
        return StageConfig._known_losses(v)

    @model_validator(mode="after")
    def _unique_names(self):
        # compared without case: on macOS and Windows, stages/TA3 and stages/ta3 are one directory
        names = [s.name.casefold() for s in self.stages]
        dupes = sorted({s.name for s in self.stages if names.count(s.name.casefold()) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique: {', '.join(dupes)} repeated")
        if self.stages and self.stages[0].student == "previous":
            raise ValueError("the first stage has no previous student: give it a student section")
        return self

    @property
    def trains_direct(self) -> bool:
        """Whether a direct baseline is trained: with one stage, that stage is itself distilled
        straight from the teacher, so there is no chain to compare it with."""
        return self.direct and len(self.stages) > 1

    def teacher_of(self, index: int) -> int:
        """Which model of the chain teaches stage `index`: 0 the original teacher (teacher: original),
        else the previous stage's student (index, counting the teacher as 0)."""
        return 0 if self.stages[index].teacher == "original" else index

    def model_names(self) -> list[str]:
        """The run's models in training order: teacher, each stage, direct where trained."""
        return ["teacher", *(s.name for s in self.stages), *(["direct"] if self.trains_direct else [])]


class TeacherConfig(_Section):
    """Where the teacher comes from: a model (hub name or path) or a config trained from scratch."""

    model: Optional[str] = None
    config: Optional[dict[str, Any]] = None  # e.g. {model_type: bert, num_hidden_layers: 4, ...}
    tokenizer: Optional[str] = None  # defaults to `model`
    # auto: fine-tune unless the checkpoint already has a head for exactly these labels
    finetune: Literal["auto", "always", "never"] = "auto"
    train: Optional[dict[str, Any]] = None
    trust_remote_code: bool = False

    def trains(self, has_head: bool) -> bool:
        """Whether the run trains this teacher: a saved model unless `never`, or `auto` with a head
        that already fits the labels (`has_head`); one built from its config unless `never`."""
        if self.model is None:
            return self.finetune != "never"
        return self.finetune == "always" or (self.finetune == "auto" and not has_head)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.model is None) == (self.config is None):
            raise ValueError("give exactly one of teacher.model (a hub name or path) or teacher.config")
        if self.config is not None and self.tokenizer is None:
            raise ValueError("a teacher trained from teacher.config needs teacher.tokenizer")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("teacher.config needs model_type (e.g. bert, xlm-roberta, distilbert)")
        return self


class TaskConfig(_Section):
    """What the models learn. `mlm` is general (task-agnostic) distillation or pretraining: plain
    text (data.format: text), presented as masked-LM inputs to models with a masked-LM head; `ce`
    is then the masked-LM loss and kl/logit_mse compare the teacher's masked-LM logits, both at the
    masked positions only (cascade_kd/data/masking.py)."""

    type: Literal["sequence", "pair", "token", "mlm"]
    max_length: int = Field(128, ge=8)
    labels: Optional[list[str]] = None
    labels_file: Optional[str] = None
    # token tasks: label the first sub-word of each word (others ignored) or every sub-word
    label_all_subwords: bool = False
    # mlm only: the share of real tokens chosen per sequence (80% [MASK], 10% random, 10% kept);
    # dynamic draws new masks every epoch, static once (needed by train.teacher_cache)
    mask_probability: float = Field(0.15, gt=0, lt=1)
    masking: Literal["dynamic", "static"] = "dynamic"

    @model_validator(mode="after")
    def _mlm_keys(self):
        if self.type == "mlm":
            for key in ("labels", "labels_file"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} does not apply to type: mlm (masked-LM labels are the masked pieces)")
        else:
            for key in ("mask_probability", "masking"):
                if key in self.model_fields_set:
                    raise ValueError(f"{key} applies to type: mlm only")
        return self

    @field_validator("labels")
    @classmethod
    def _labels(cls, v):
        if v is not None:
            if len(v) < 2:
                raise ValueError("a task needs at least 2 labels")
            if len(set(v)) != len(v):
                raise ValueError("labels must be unique")
        return v


class HubDataConfig(_Section):
    """A Hugging Face dataset (needs network and `pip install datasets`)."""

    path: str
    name: Optional[str] = None  # may contain {lang}
    splits: dict[str, str] = Field(default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"})
    data_files: Optional[dict[str, str]] = None  # for local 'json'/'csv' builders; may contain {lang}


class DataConfig(_Section):
    # the evaluation languages: every model is scored on each of them
    languages: list[str] = Field(min_length=1)
    # the languages with labelled training data (default: all of `languages`); the other evaluation
    # languages are zero-shot: the models see no labelled example of them (fine-tune on English,
    # use in 40 languages); only these need data.train files (docs/cross-lingual.md)
    train_languages: Optional[list[str]] = Field(None, min_length=1)
    # whose dev sets select models: train_languages (the XTREME protocol: no dev data of a zero-shot
    # language is used) or all (every evaluation language's dev set, zero-shot ones included)
    select_on: Literal["train_languages", "all"] = "train_languages"
    # text: one example per non-blank line, no labels (task type mlm)
    format: Literal["tsv", "conll", "jsonl", "hf", "text"] = "tsv"
    # a path template with {lang}, or a mapping lang -> path; relative paths are relative to the recipe
    train: Optional[Union[str, dict[str, str]]] = None
    dev: Optional[Union[str, dict[str, str]]] = None
    test: Optional[Union[str, dict[str, str]]] = None
    hf: Optional[HubDataConfig] = None
    encoding: str = "utf-8"
    header: Optional[bool] = None
    # tsv fields: none = taken as they are (quotes are text); csv = a field wrapped in double quotes,
    # with "" for a quote inside (what Python's csv module and pandas write, e.g. SIB-200), is unquoted
    quoting: Literal["none", "csv"] = "none"
    text_column: Optional[Union[str, int]] = None
    text_pair_column: Optional[Union[str, int]] = None
    label_column: Optional[Union[str, int]] = None
    max_train_per_language: Optional[int] = Field(None, ge=1)
    max_eval_per_language: Optional[int] = Field(None, ge=1)
    # how the max_*_per_language caps choose: first = the file's first N; sample = N drawn at random
    # (the same on every run and seed), kept in file order: for files sorted by label (SIB-200's test)
    cap: Literal["first", "sample"] = "first"
    # unlabelled text scored by the teacher (XtremeDistil's transfer set), added to the training data
    # of every stage with a teacher loss: plain text, one example per line; a template with {lang}
    # (data.languages) or a mapping lang -> path (any languages, labelled or not)
    transfer: Optional[Union[str, dict[str, str]]] = None
    # how the transfer files are written: text (one example per line) or a labelled format read
    # with this section's column settings and its labels dropped (e.g. the train files of the
    # zero-shot languages: conll). Either way a sentence met before in its language is left out: a
    # repeat, a labelled training, dev or test example (distilling on scored text flatters scores)
    transfer_format: Literal["text", "tsv", "conll", "jsonl"] = "text"
    # counts the sentences kept, after those left out
    max_transfer_per_language: Optional[int] = Field(None, ge=1)
    # no test files (e.g. PAN-X here): hold out this fraction of each language's dev as test
    holdout_from_dev: Optional[float] = Field(None, gt=0, lt=1)
    # mix the training languages by temperature: an epoch draws language l in proportion to
    # n_l^alpha (0.3 in XLM-R, 0.7 in mBERT; 0 = equal shares; None = as the data comes)
    language_alpha: Optional[float] = Field(None, ge=0, le=1)

    @field_validator("train_languages")
    @classmethod
    def _trained_languages_are_evaluated(cls, v, info):
        if v is None:
            return v
        if len(set(v)) != len(v):
            raise ValueError("data.train_languages has duplicates")
        evaluated = info.data.get("languages")  # absent when data.languages itself was invalid
        missing = [lang for lang in v if evaluated is not None and lang not in evaluated]
        if missing:
            raise ValueError(f"{', '.join(map(repr, missing))} {'is' if len(missing) == 1 else 'are'} not among "
                             "data.languages (the evaluation languages): add "
                             f"{'it' if len(missing) == 1 else 'them'} there, every training language is evaluated too")
        return v

    @property
    def training_languages(self) -> list[str]:
        """The languages with labelled training data, in the order of `languages`."""
        trained = set(self.train_languages or self.languages)
        return [lang for lang in self.languages if lang in trained]

    @property
    def zero_shot_languages(self) -> list[str]:
        """The evaluation languages without labelled training data (empty unless train_languages is given)."""
        trained = set(self.training_languages)
        return [lang for lang in self.languages if lang not in trained]

    @property
    def selection_languages(self) -> list[str]:
        """The languages whose dev sets select models (the best epoch of each training)."""
        return self.training_languages if self.select_on == "train_languages" else list(self.languages)

    @model_validator(mode="after")
    def _sources(self):
        if len(set(self.languages)) != len(self.languages):
            raise ValueError("data.languages has duplicates")
        if self.format == "hf":
            if self.hf is None:
                raise ValueError("format: hf needs an hf: section (path, name, splits)")
        else:
            if self.train is None:
                raise ValueError("data.train is required (a path template with {lang}, or lang: path)")
            if self.dev is None:
                raise ValueError("data.dev is required: models are selected on dev, never on test")
        if self.holdout_from_dev and (self.test is not None or self.format == "hf"):
            raise ValueError("holdout_from_dev carves a test split out of dev: give it or data.test, not both")
        if self.quoting == "csv" and self.format != "tsv":
            raise ValueError(f"data.quoting: csv unquotes tsv fields; format {self.format!r} has none")
        return self


# keys that say how results are shown or published, not what is computed: a resumed run may change them
PRESENTATION_KEYS = ("license", "train.report_to")


class Recipe(_Section):
    name: str = "cascade"
    seed: int = Field(0, ge=0, lt=2**32)  # torch.manual_seed refuses seeds past 64 bits; 32 is the usual range
    # the saved models' licence, written into their model cards (README.md); None: "unknown", said so there.
    # An SPDX-style identifier as the Hugging Face Hub lists them (apache-2.0, mit, cc-by-4.0, other, ...)
    license: Optional[str] = Field(None, min_length=1)
    task: TaskConfig
    data: DataConfig
    teacher: TeacherConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)

    # where the recipe file lives: relative data paths are resolved against it (not a YAML key)
    _base_dir: Path = Path(".")
    _source: str = "<recipe>"
    _lines: dict = {}
    _names: dict = {}  # key -> the flag that set it, for a recipe a command built (`messages.place`)

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def model_path(self, name: str | None) -> str | None:
        """A model/tokenizer reference: a path relative to the recipe's base_dir if one exists there or
        the name can only be a path (`fileio.looks_like_path`: then a missing one is reported at its
        place under base_dir, never looked up in the current folder), else a hub name."""
        if name is None:
            return None
        try:
            local = Path(name).expanduser()
            local = local if local.is_absolute() else self._base_dir / local
            return str(local) if local.exists() or looks_like_path(name) else name
        except (OSError, RuntimeError, ValueError):  # ~unknown-user, a name too long for a path: not a local file
            return name

    def teacher_train(self) -> TrainConfig:
        """The settings the teacher trains with: train, with teacher.train's overrides."""
        return self.train_for(self.teacher.train, "teacher.train")

    def stage_train(self, index: int) -> TrainConfig:
        """The settings stage `index` (and a direct baseline beside it) trains with."""
        return self.train_for(self.cascade.stages[index].train, f"cascade.stages[{index}].train")

    def train_for(self, overrides: dict | None, where: str) -> TrainConfig:
        """The global train settings with a section's overrides applied (and validated)."""
        merged = self.train.model_dump()
        # the section's key path ("cascade.stages[0].train" -> cascade, stages, 0, train), for line numbers
        keys = tuple(int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", where))
        lines = getattr(self, "_lines", {})
        for key, value in (overrides or {}).items():
            if key not in merged:
                raise RecipeError(f"unknown key {short(key)}", where=_key_where(self, *keys, key),
                                  hint=suggest(key, merged))
            merged[key] = value
        try:
            return TrainConfig(**merged)
        except ValidationError as err:
            sub_lines = {k[len(keys):]: v for k, v in lines.items() if k[:len(keys)] == keys}
            raise to_recipe_error(err, sub_lines, self._source, prefix=where, root=TrainConfig,
                                  names=self._names) from None

    def stage_losses(self, stage: StageConfig) -> dict[str, LossConfig]:
        return stage.losses if stage.losses is not None else self.cascade.losses

    def dump(self) -> dict:
        """The recipe as plain data, without the keys added after recipes were first hashed where
        they hold their default (and the dense-guidance keys of chain stages, which are errors
        there): such a recipe reads back as written and hashes as before those keys existed."""
        data = self.model_dump(mode="json")
        for key in ("teacher_cache", "unfreeze", "embedding_rows", "teacher_sharding", "report_to"):
            if data["train"][key] == _default(TrainConfig, key):
                del data["train"][key]
        if data["license"] is None:
            del data["license"]
        for key in ("train_languages", "transfer", "max_transfer_per_language", "language_alpha", "quoting", "cap",
                    "select_on", "transfer_format"):
            if data["data"][key] == _default(DataConfig, key):
                del data["data"][key]
        if data["task"]["type"] != "mlm":
            del data["task"]["mask_probability"], data["task"]["masking"]
        for losses in [data["cascade"]["losses"]] + [stage["losses"] or {} for stage in data["cascade"]["stages"]]:
            for cfg in losses.values():  # relation_kl's keys, absent from every other loss
                if cfg["relation_heads"] is None and cfg["relations"] == _default(LossConfig, "relations"):
                    del cfg["relation_heads"], cfg["relations"]
        for stage in data["cascade"]["stages"]:
            if stage["guides"] == _default(StageConfig, "guides"):
                del stage["guides"], stage["drop_guides"], stage["guide_reduction"]
            if stage["teacher"] == _default(StageConfig, "teacher"):  # likewise the stage teacher key
                del stage["teacher"]
            rules = kind_rules(stage["student"]["kind"]) if isinstance(stage["student"], dict) else None
            if rules is not None:  # a family's own keys: those away from their defaults, if any
                options = stage["student"].pop("options")
                kept = _options_as_written(stage["student"]["kind"], options) if options is not None else {}
                if kept:
                    stage["student"]["options"] = kept
            if rules is not None and rules != "bilstm":  # and BiLSTM keys
                for key in ("lstm_layers", "projection_size"):
                    del stage["student"][key]
            if rules == "transformer":  # and recursive keys (and the default kind)
                for key in ("recursions", "embedding_size", "adapter_reduction", "train_only"):
                    del stage["student"][key]
                if stage["student"]["kind"] == "transformer":
                    del stage["student"]["kind"]
        return data

    def fingerprint(self) -> str:
        """A hash of what the recipe computes: a resumed run must use the same recipe. The
        presentation keys (PRESENTATION_KEYS: the licence, the trackers) are left out, so adding a
        tracker or a licence to a run's recipe neither blocks its resume nor redoes a model."""
        text = json.dumps(computing_part(self.dump()), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------------------------------
    # Reading a recipe

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Recipe":
        """Read and validate a recipe file. Relative paths in it are resolved against its folder.
        Every problem is a RecipeError naming the file, the line and the key."""
        path = Path(path)
        return cls.from_text(read_text(path), source=str(path), base_dir=path.resolve().parent)

    @classmethod
    def from_text(cls, text: str, *, source: str = "<recipe>", base_dir: str | Path | None = None) -> "Recipe":
        """A recipe from YAML text; `source` names it in errors, `base_dir` resolves relative paths."""
        data, lines = parse_yaml(text, source)
        return cls._validated(data, lines, source, base_dir)

    @classmethod
    def from_dict(cls, data: dict, *, base_dir: str | Path = ".", source: str = "<dict>",
                  names: dict[str, str] | None = None) -> "Recipe":
        """A recipe from plain data (the YAML file's content as a dict); errors name the key path, or
        for a recipe built from a command's flags, the flag: `names` maps a dotted key to it
        ({"train.lr": "--lr"}; a key's nearest named parent counts)."""
        return cls._validated(data, {}, source, base_dir, names or {})

    @classmethod
    def _validated(cls, data, lines: dict, source: str, base_dir, names: dict | None = None) -> "Recipe":
        if not isinstance(data, dict):
            raise RecipeError("a recipe is a YAML mapping (key: value lines)", where=source)
        try:
            # not Recipe(**data): a key such as `1:` or `~:` is then an unknown key, not a TypeError
            recipe = cls.model_validate(data)
        except ValidationError as err:
            raise to_recipe_error(err, lines, source, root=cls, names=names) from None
        except TypeError as exc:  # e.g. non-string keys
            raise RecipeError(f"malformed recipe: {exc}", where=source) from None
        recipe._base_dir = Path(base_dir).resolve() if base_dir is not None else Path(".").resolve()
        recipe._source = source
        recipe._lines = lines
        recipe._names = dict(names or {})
        return recipe


def load_recipe(path: str | Path | Recipe) -> Recipe:
    """Read and validate a recipe file (`Recipe.from_yaml`); a Recipe is returned as it is."""
    return path if isinstance(path, Recipe) else Recipe.from_yaml(path)


def recipe_name(recipe: str | Path | Recipe) -> str:
    """How reports name the recipe used: its path, or where a Recipe object came from."""
    return recipe._source if isinstance(recipe, Recipe) else str(recipe)


def parse_recipe(text: str, *, source: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Validate recipe text (`Recipe.from_text`)."""
    return Recipe.from_text(text, source=source, base_dir=base_dir)


def _default(section: type[BaseModel], key: str):
    """A section key's default as `model_dump(mode="json")` writes it (a list, not a tuple)."""
    return json.loads(json.dumps(section.model_fields[key].get_default(call_default_factory=True)))


def computing_part(dump: dict) -> dict:
    """A recipe dump without its presentation keys (in every train section and override)."""
    data = json.loads(json.dumps(dump))
    sections = [data.get("train"), (data.get("teacher") or {}).get("train")]
    sections += [stage.get("train") for stage in (data.get("cascade") or {}).get("stages", [])]
    for key in PRESENTATION_KEYS:
        section, _, name = key.rpartition(".")
        if not section:
            data.pop(name, None)
        elif section == "train":  # in the run's train section and in every override of it
            for train in sections:
                if isinstance(train, dict):
                    train.pop(name, None)
        else:
            raise ValueError(f"PRESENTATION_KEYS: {key!r} is neither a top-level nor a train key")
    return data


_key_where = where  # for methods of Recipe, where a parameter is called `where`
