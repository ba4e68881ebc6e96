"""The cascade's plan, checked from configs alone before anything trains: every student's shape,
every stage's losses, layer maps, guides and cache settings; and the direct baseline's shape."""

from __future__ import annotations

import hashlib
import json

from cascade_kd.config.schema import Recipe, StageConfig, StudentConfig, computing_part, where
from cascade_kd.errors import RecipeError, UserError
from cascade_kd.losses.layer_maps import check_layer_names
from cascade_kd.losses.registry import LOSSES, build_terms, teacher_logit_losses
from cascade_kd.students import FAMILIES, family, family_of, student_config
from cascade_kd.students.anatomy import ffn_attr, layer_list
from cascade_kd.students.hub import check_fits, model_on_meta
from cascade_kd.training.distributed import num_processes
from cascade_kd.training.teacher_cache import CACHED_FEATURES
from cascade_kd.training.trackers import missing_tracker

# how messages name what a loss compares, where the feature's name is not enough
FEATURE_WORDS = {"qkv": "query/key/value states"}


def check_cascade(recipe: Recipe, t_config) -> dict:
    """Build every student's config from its teacher's (all shape checks of build_student), and
    every stage's loss terms (layer maps in range, head counts compatible), from configs alone.
    Returns each student's config by model name (the stages', then "direct" where it trains)."""
    _check_layer_maps(recipe)
    chain = [t_config]  # the teacher's config, then each stage's student's
    stages = recipe.cascade.stages
    for i, stage in enumerate(stages):
        key = ("cascade", "stages", i, "student")
        teacher = chain[recipe.cascade.teacher_of(i)]
        cfg = recipe.stage_train(i)
        uncached = [n for n, c in recipe.stage_losses(stage).items()
                    if c.weight > 0 and LOSSES[n].reads_teacher and LOSSES[n].feature not in CACHED_FEATURES]
        if cfg.teacher_cache != "off" and uncached:
            feature = LOSSES[uncached[0]].feature
            raise RecipeError(f"the teacher cache does not hold the {FEATURE_WORDS.get(feature, feature)} that "
                              f"{uncached[0]} compares", where=_cache_key_where(recipe, i),
                              hint="use teacher_cache: off for this stage")
        if cfg.teacher_cache != "off" and cfg.teacher_sharding == "fsdp":
            # a sharded teacher is a collective (every process runs each batch); the cache runs the
            # teacher on different batches per process
            raise RecipeError("the teacher cache cannot be built by a sharded teacher (teacher_sharding: fsdp)",
                              where=_cache_key_where(recipe, i),
                              hint="use teacher_cache: off with teacher_sharding: fsdp (or teacher_sharding: none)")
        if recipe.task.type == "mlm":
            _check_masked_lm_stage(recipe, i, cfg)
        if stage.student == "previous":
            student = chain[-1]  # the previous stage's student, trained further
        else:
            if stage.student.layers > teacher.num_hidden_layers:
                raise RecipeError(
                    f"stage {stage.name!r} has {stage.student.layers} layers, more than its teacher's {teacher.num_hidden_layers}",
                    where=where(recipe, *key, "layers"), hint="each stage's student must be no deeper than its teacher",
                )
            student, _, _ = student_config(teacher, stage.student, where=where(recipe, *key))
            if family(stage.student.kind).layers_from_teacher:
                _check_layers_found(student, recipe.task.type, where(recipe, *key))
        _check_losses(recipe, i, teacher, student, f"stage {stage.name!r}")
        _check_guides(recipe, i)
        chain.append(student)
    if recipe.cascade.trains_direct and stages[-1].student == "previous":
        raise RecipeError(
            f"the final stage {stages[-1].name!r} trains the previous stage's student further: a direct baseline "
            "would have to repeat the whole staged schedule from the original teacher, which it does not do",
            where=where(recipe, "cascade", "direct"), hint="set direct: false (compare with a separate recipe)")
    if recipe.cascade.trains_direct:  # the final shape, from the original teacher
        spec = direct_spec(final_spec(stages), chain[-1], t_config)
        direct, _, _ = student_config(t_config, spec, where=where(recipe, "cascade", "direct"))
        _check_losses(recipe, len(stages) - 1, t_config, direct, "the direct baseline")
    recipe.teacher_train()  # checked here: else read only when the teacher trains
    check_trackers(recipe)
    configs = {stage.name: config for stage, config in zip(stages, chain[1:])}
    return {**configs, "direct": direct} if recipe.cascade.trains_direct else configs


def check_trackers(recipe: Recipe) -> None:
    """Every tracker that a train section names (train.report_to) is installed."""
    sections = [(("train",), recipe.train.model_dump())]
    sections += [(("teacher", "train"), recipe.teacher.train or {})]
    sections += [(("cascade", "stages", i, "train"), s.train or {}) for i, s in enumerate(recipe.cascade.stages)]
    for keys, section in sections:
        for name in section.get("report_to") or []:
            problem = missing_tracker(name)
            if problem:
                raise RecipeError(f"train.report_to names {name}, but {problem}", where=where(recipe, *keys, "report_to"),
                                  hint=f"pip install {name}, or remove it from report_to")


def check_teacher(recipe: Recipe, t_config, task: str) -> None:
    """The teacher's config builds a model for this task, and that model fits in memory (see
    students.hub.check_fits): before any weight is allocated."""
    t = recipe.teacher
    at = where(recipe, "teacher", "config" if t.config is not None else "model")
    model = check_fits(t_config, task, trains=t.finetune != "never", where=at, what="the teacher")
    if recipe.cascade.stages and family_of(t_config).layers_from_teacher:  # students copy this teacher's layers
        for name in ("num_hidden_layers", "hidden_size", "num_attention_heads", ffn_attr(t_config)):
            try:  # what a student's config is made from (T5's config, for one, has no intermediate_size)
                getattr(t_config, name)
            except AttributeError:
                raise RecipeError(f"model type {t_config.model_type!r} has no {name} in its config, which students are "
                                  "built from", where=at, hint="use an encoder such as bert, xlm-roberta, distilbert"
                                  ) from None
        try:  # students are built from the teacher's layers (and layer maps read them): they must be found
            layer_list(model)
        except ValueError as exc:
            raise RecipeError(f"{exc}: students are built from the teacher's own layers", where=at,
                              hint="use a teacher whose layers are a list of separate modules (BERT, XLM-R, "
                                   "DistilBERT...); ALBERT shares one layer") from None


def _check_layers_found(config, task: str, at: str) -> None:
    """A transformer student is built by copying teacher layers into its own layer list: that list
    must be found in the model its config builds (on the meta device: no weights)."""
    try:
        layer_list(model_on_meta(config, task, where=at))
    except ValueError as exc:
        raise RecipeError(f"{exc}: a transformer student is built from its teacher's layers", where=at,
                          hint="use a teacher whose layers are a list of separate modules (BERT, XLM-R, DistilBERT...)"
                          ) from None


def _check_layer_maps(recipe: Recipe) -> None:
    """A layer map belongs to a loss that compares layers, and names layers the numbering knows,
    in every loss section (also one no stage uses, and a loss of weight 0)."""
    sections = [(("cascade",), recipe.cascade.losses)]
    sections += [(("cascade", "stages", i), stage.losses) for i, stage in enumerate(recipe.cascade.stages) if stage.losses]
    for section, losses in sections:
        for name, cfg in (losses or {}).items():
            if "layer_map" not in cfg.model_fields_set or cfg.layer_map == "top_only":
                continue  # the default (a recipe as run, RUN_DIR/recipe.yaml, spells every default out)
            at = where(recipe, *section, "losses", name, "layer_map")
            if name in LOSSES and LOSSES[name].feature == "logits":  # a loss that compares no layers
                raise RecipeError(f"{name} compares {'labels' if name == 'ce' else 'logits'}, not layers: a layer_map "
                                  "does not apply to it", where=at,
                                  hint="remove layer_map here, or put it on a hidden-state, attention or relation loss")
            check_layer_names(cfg.layer_map, where=at)
    for section, losses in sections:
        for name, cfg in (losses or {}).items():
            _check_options(recipe, section, name, cfg)


def _check_options(recipe: Recipe, section: tuple, name: str, cfg) -> None:
    """A key set on a loss that does not read it (temperature on hidden_mse) would be ignored
    without a word: refused. A key at its default passes (RUN_DIR/recipe.yaml spells them out)."""
    options = LOSSES[name].options if name in LOSSES else None
    if options is None:
        return
    for key, field in type(cfg).model_fields.items():
        if key != "weight" and key not in options and getattr(cfg, key) != field.get_default(call_default_factory=True):
            takes = ", ".join(options) if options else "no option but weight"
            raise RecipeError(f"{key} does not apply to {name}, which takes {takes}",
                              where=where(recipe, *section, "losses", name, key),
                              hint=f"remove {key} here, or set it on a loss that reads it")


def _cache_key_where(recipe: Recipe, i: int) -> str:
    """Where stage i's teacher_cache setting comes from: its own train section, or the recipe's."""
    stage = recipe.cascade.stages[i]
    own = stage.train and "teacher_cache" in stage.train
    return where(recipe, "cascade", "stages", i, "train", "teacher_cache") if own else where(recipe, "train", "teacher_cache")


def _check_masked_lm_stage(recipe: Recipe, i: int, cfg) -> None:
    """General distillation (task type mlm): transformer students, and a teacher cache only where it holds."""
    stage, key = recipe.cascade.stages[i], ("cascade", "stages", i)
    if stage.student != "previous" and not family(stage.student.kind).masked_lm:
        able = ", ".join(k for k, f in FAMILIES.items() if f.masked_lm)
        raise RecipeError(f"general distillation (task type mlm) has {able} students, not {stage.student.kind}",
                          where=where(recipe, *key, "student", "kind"),
                          hint="distil a BiLSTM student on a task, from a model of this chain")
    for name, loss in recipe.stage_losses(stage).items():
        if name in teacher_logit_losses() and "positions" in loss.model_fields_set and loss.positions == "tokens":
            own = stage.losses is not None
            raise RecipeError("masked-LM logits are compared at the masked positions only",
                              where=where(recipe, *(key if own else ("cascade",)), "losses", name, "positions"),
                              hint="remove positions from this loss")
    if cfg.teacher_cache == "off":
        return
    at = _cache_key_where(recipe, i)
    if recipe.task.masking == "dynamic":
        raise RecipeError("the teacher cache holds the teacher's outputs on fixed inputs, but masking: dynamic draws "
                          "new masks every epoch", where=at, hint="set task.masking: static, or teacher_cache: off")
    logit_losses = teacher_logit_losses()
    if any(name in logit_losses and c.weight > 0 for name, c in recipe.stage_losses(stage).items()):
        raise RecipeError("the teacher cache does not hold masked-LM logits (one value per vocabulary piece and "
                          "masked position)", where=at, hint=f"use teacher_cache: off for stages with {' or '.join(logit_losses)}")


def check_processes(recipe: Recipe) -> None:
    """Under a launcher, every batch_size (the global batch, split between processes) must give
    each process at least one example."""
    n = num_processes()
    if n == 1:
        return
    sections = [("teacher.train", ("teacher", "train"), recipe.teacher.train)]
    sections += [(f"cascade.stages[{i}].train", ("cascade", "stages", i, "train"), stage.train)
                 for i, stage in enumerate(recipe.cascade.stages)]
    for dotted, keys, overrides in sections:
        cfg = recipe.train_for(overrides, dotted)
        if cfg.batch_size < n:
            key = (*keys, "batch_size") if overrides and "batch_size" in overrides else ("train", "batch_size")
            raise RecipeError(f"batch_size {cfg.batch_size} is smaller than the {n} processes launched",
                              where=where(recipe, *key),
                              hint=f"batch_size is the global batch, split between processes: use at least {n}")


def _check_guides(recipe: Recipe, i: int) -> None:
    """Dense guidance settings of stage i, which has i+1 possible guides (teacher + i earlier students)."""
    stage, key = recipe.cascade.stages[i], ("cascade", "stages", i)
    if stage.guides == "chain":
        for name in ("drop_guides", "guide_reduction"):
            if name in stage.model_fields_set and (name == "guide_reduction" or stage.drop_guides > 0):
                raise RecipeError(f"{name} applies to dense guidance only, but stage {stage.name!r} has guides: chain",
                                  where=where(recipe, *key, name), hint="add guides: dense to the stage, or remove " + name)
        return
    if stage.drop_guides >= i + 1:
        raise RecipeError(
            f"stage {stage.name!r} has {i + 1} guide(s) (the teacher and the {i} stage(s) before it): "
            f"dropping {stage.drop_guides} per batch would leave none",
            where=where(recipe, *key, "drop_guides"), hint=f"use drop_guides <= {i}",
        )
    losses, logit_losses = recipe.stage_losses(stage), teacher_logit_losses()
    if not any(name in logit_losses and cfg.weight > 0 for name, cfg in losses.items()):
        raise RecipeError(
            f"stage {stage.name!r} uses guides: dense, which guides the logit losses, but it has neither "
            + " nor ".join(logit_losses), where=where(recipe, *key, "guides"),
            hint=f"add a {logit_losses[0]} (or {', '.join(logit_losses[1:])}) loss with a positive weight",
        )


def _check_losses(recipe: Recipe, i: int, teacher, student, what: str) -> None:
    """Build a stage's loss terms, each checked against both models' configs (losses/base.py:
    `Loss.check`); an error names the line of the loss it comes from."""
    own = recipe.cascade.stages[i].losses is not None
    section = ("cascade", "stages", i) if own else ("cascade",)  # else the cascade's, shared by the stages
    for name, cfg in recipe.stage_losses(recipe.cascade.stages[i]).items():
        # build_terms appends ".losses.NAME" to `where`: give it the prefix, with the loss's line
        prefix = where(recipe, *section, "losses", name).removesuffix(f".losses.{name}")
        try:
            build_terms({name: cfg}, teacher, student, where=prefix)
        except UserError as err:  # say which model, as the cascade's losses serve every stage
            raise type(err)(f"{err.message}, for {what}", where=err.where, hint=err.hint) from None


def learns_from_teacher(recipe: Recipe, stage: StageConfig) -> bool:
    """Whether a stage has a loss on its teacher's outputs: such a stage also trains on the transfer
    text (unlabelled, the teacher labels it); one on the labels alone (ce) does not."""
    return any(c.weight > 0 and LOSSES[n].reads_teacher for n, c in recipe.stage_losses(stage).items())


def final_spec(stages: list[StageConfig]) -> StudentConfig:
    """How the final student was built: the last stage that built one (later ones trained it further)."""
    return next(s.student for s in reversed(stages) if s.student != "previous")


def direct_spec(final: StudentConfig, final_config, teacher_config) -> StudentConfig:
    """The final student's shape, built straight from the original teacher (as its family says)."""
    return family(final.kind).direct_spec(final, final_config, teacher_config)


def model_keys(dump: dict) -> dict[str, str]:
    """Per model of a run (teacher, each stage, direct), a hash of the part of a recipe dump that
    its training reads: the teacher everything but the cascade section; stage i the cascade's shared
    keys and stages 0..i (its teacher, guides and streams come from those); the direct baseline the
    whole cascade. A resume with an edited recipe keeps the finished models whose key is unchanged.
    The recipe's name is left out (it trains nothing)."""
    data = computing_part(dump)
    data.pop("name", None)
    cascade = data.pop("cascade", None) or {}
    stages = cascade.get("stages") or []
    shared = {k: v for k, v in cascade.items() if k not in ("stages", "direct")}

    def digest(part: dict) -> str:
        return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]

    keys = {"teacher": digest(data)}
    for i, stage in enumerate(stages):
        keys[stage["name"]] = digest({**data, "cascade": {**shared, "stages": stages[: i + 1]}})
    if cascade.get("direct", True) and len(stages) > 1:  # CascadeConfig.trains_direct, on a dump
        keys["direct"] = digest({**data, "cascade": cascade})
    return keys
