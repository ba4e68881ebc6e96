"""The cascade: teacher -> assistant -> ... -> student, each stage's student the next one's teacher.

`run_recipe` is the whole job behind `cascade-kd run`:
  1. read and check everything (data, labels, stage shapes, layer maps) before any training;
  2. get the teacher (load it, fine-tune it, or train it from a config) and save it;
  3. for each stage, build the student from the stage's teacher, distil, keep the best dev
     checkpoint, save it; with `direct: true`, distil the final shape straight from the teacher;
  4. score every model on every language and write metrics.json and report.md.
A finished model is never recomputed on `--resume` (its directory holds a `stage.json` marker
written last, with the recipe fingerprint).

Dense stages (`guides: dense`, DGKD, Son et al. ICCV 2021): stage i is taught by all i+1 larger
models of the chain at once, the original teacher and every earlier stage's student (loaded from
disk when those stages were done before a `--resume`). Its logit losses (kl, logit_mse) are
computed against each guide and summed (the paper's choice: the effective weight grows with the
number of guides) or averaged (`guide_reduction: mean`) over the guides kept in the batch, where
exactly `drop_guides` are dropped per batch, reproducibly from the stage seed and the step. `ce`
is unchanged; hidden-state and attention losses still use only the immediate teacher. The direct
baseline is never dense: it learns from the original teacher alone.
"""

from __future__ import annotations

import copy
import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cascade_kd import __version__
from cascade_kd.data.encode import IGNORE, Encoded, encode
from cascade_kd.data.masking import Masker, masker_for
from cascade_kd.data.sampling import epoch_indices
from cascade_kd.data.task import TaskData, load_task_data
from cascade_kd.training.distributed import barrier, is_main, main_say, num_processes, on_main, process_state
from cascade_kd.training.loop import (
    ATTENTION_LOSSES,
    HIDDEN_LOSSES,
    LOGIT_LOSSES,
    LossTerm,
    build_loss_terms,
    resolve_precision,
    train,
)
from cascade_kd.students.bilstm import check_loss as check_bilstm_loss
from cascade_kd.errors import RecipeError, UserError
from cascade_kd.fileio import atomic_write
from cascade_kd.evaluation.scoring import evaluate_languages, metric_for, summarise
from cascade_kd.losses.functions import HardLabelCE
from cascade_kd.students.anatomy import (
    build_student,
    config_labels,
    count_parameters,
    create_model,
    freeze_embeddings,
    position_offset,
    load_checkpoint,
    load_model,
    load_tokenizer,
    ffn_attr,
    save_checkpoint,
    student_config,
    use_attention_outputs,
)
from cascade_kd.config.schema import Recipe, StageConfig, StudentConfig, where
from cascade_kd.students.recursive import freeze_all_but_adapters
from cascade_kd.evaluation.report import write_outputs
from cascade_kd.training.teacher_cache import CacheRequest, TeacherCache, build_shards, cache_key, finish_cache, plan_cache

MARKER = "stage.json"


@dataclass
class Job:
    """Everything the stages share: the recipe, the tokenizer and the encoded splits."""

    recipe: Recipe
    out: Path
    tokenizer: object
    data: TaskData
    encoded: dict  # split -> lang -> (examples, encoded)
    say: callable
    transfer: dict = field(default_factory=dict)  # lang -> (examples, encoded): unlabelled transfer text
    masker: Masker | None = None  # masked-LM text (task type mlm): draws the masks

    @property
    def masked_lm(self) -> bool:
        return self.data.task == "mlm"

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0

    def state_dir(self, name: str) -> Path:
        """Where a model's full training state lives while it trains (removed once it is saved)."""
        return self.out / "state" / name

    def train_set(self):
        return self.training_data()[0]

    def training_data(self, with_transfer: bool = False) -> tuple[list, list[tuple[str, int]]]:
        """The training examples (with the transfer set, for stages that learn from a teacher) and
        their language blocks [(lang, count), ...] in order, for language sampling."""
        parts = [self.encoded["train"]] + ([self.transfer] if with_transfer else [])
        return ([e for part in parts for _, enc in part.values() for e in enc],
                [(lang, len(enc)) for part in parts for lang, (_, enc) in part.items()])

    def train_options(self, train_data: list, blocks: list[tuple[str, int]], seed: int) -> dict:
        """What the engine needs beyond the losses: masked-LM mode and dynamic masks; language sampling."""
        options = {"masked_lm": self.masked_lm}
        if self.masked_lm and self.recipe.task.masking == "dynamic":
            options["batch_transform"] = lambda batch, members, epoch, slots: self.masker.mask_batch(
                batch, train_data, members, epoch, slots, stream=seed)
        alpha = self.recipe.data.language_alpha
        if alpha is not None:
            options["epoch_draw"] = lambda epoch: epoch_indices(blocks, alpha, seed=seed, epoch=epoch)
        return options

    def dev_score(self, model, cfg) -> float:
        scores = evaluate_languages(model, self.encoded["dev"], self.data.task, self.data.labels,
                                    batch_size=cfg.eval_batch_size, pad_id=self.pad_id,
                                    bf16=resolve_precision(cfg.precision) == "bf16")
        return sum(scores.values()) / len(scores)  # select on the macro average over languages


def prepare(recipe: Recipe, out: Path, say=print) -> Job:
    """Load tokenizer and data and check the whole cascade; raises UserError on any bad input."""
    teacher_cfg = recipe.teacher
    tokenizer = load_tokenizer(recipe.model_path(teacher_cfg.tokenizer or teacher_cfg.model), trust_remote_code=teacher_cfg.trust_remote_code)
    data = load_task_data(recipe)
    if "dev" not in data.splits:
        raise RecipeError("no dev data: models are selected on dev", where=where(recipe, "data", "dev"))
    t_config = _teacher_config(recipe)
    checkpoint_labels = config_labels(t_config) if teacher_cfg.model is not None else []
    if checkpoint_labels and set(checkpoint_labels) == set(data.labels):
        data.labels = checkpoint_labels  # a fine-tuned teacher's head: keep its label order
    _check_positions(recipe, t_config)
    check_cascade(recipe, t_config)
    _check_processes(recipe)
    say(f"data: {len(data.languages)} languages, " + ("masked-LM text" if data.task == "mlm" else f"labels {len(data.labels)}") + "; "
        + ", ".join(f"{s} {sum(n.values())}" for s, n in data.sizes().items()))
    for warning in data.warnings:
        say(f"WARNING: {warning}")

    def encoded_per_language(per_lang):  # lang -> (examples, encoded)
        return {lang: (examples, encode(examples, tokenizer, task=data.task, label2id=data.label2id,
                                        max_length=recipe.task.max_length, label_all_subwords=recipe.task.label_all_subwords))
                for lang, examples in per_lang.items()}

    if data.task == "mlm" and tokenizer.mask_token_id is None:  # before the corpus is tokenised
        raise RecipeError("the tokenizer has no mask token, which masked-LM inputs need",
                          where=where(recipe, "teacher", "tokenizer" if teacher_cfg.tokenizer else "model"),
                          hint="use the tokenizer the model was pretrained with (BERT-style tokenizers have [MASK])")
    encoded = {split: encoded_per_language(per_lang) for split, per_lang in data.splits.items()}
    masker = None
    if data.task == "mlm":
        masker = masker_for(tokenizer, probability=recipe.task.mask_probability, seed=recipe.seed)
        # dev and test masks are drawn once, so every model is scored on the same masked pieces; train
        # masks too with masking: static, else the engine draws them per epoch (Job.train_options)
        for split, per_lang in encoded.items():
            for lang, (examples, items) in per_lang.items():
                per_lang[lang] = (examples, masker.mask_encoded(items, f"{split}:{lang}")
                                  if split != "train" or recipe.task.masking == "static"
                                  else [Encoded(x.input_ids, x.token_type_ids, [IGNORE] * len(x)) for x in items])
    return Job(recipe, out, tokenizer, data, encoded, say, encoded_per_language(data.transfer), masker)


def _teacher_config(recipe: Recipe):
    """The teacher's config, read without loading weights."""
    from transformers import AutoConfig

    t = recipe.teacher
    if t.config is not None:
        spec = dict(t.config)
        try:
            return AutoConfig.for_model(spec.pop("model_type"), **spec)
        except (ValueError, TypeError) as exc:
            raise RecipeError(f"invalid teacher.config: {exc}", where=where(recipe, "teacher", "config")) from None
    try:
        return AutoConfig.from_pretrained(recipe.model_path(t.model), trust_remote_code=t.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise RecipeError(f"cannot load the teacher {t.model!r}: {str(exc).splitlines()[0]}",
                          where=where(recipe, "teacher", "model")) from None


def _check_positions(recipe: Recipe, config) -> None:
    """Sequences must fit the position table (RoBERTa-style models start positions after padding_idx)."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return
    offset = position_offset(config)
    if recipe.task.max_length + offset > limit:
        raise RecipeError(
            f"max_length {recipe.task.max_length} does not fit the teacher's {limit} position embeddings"
            + (f" (this model type uses {offset} of them before the first token)" if offset else ""),
            where=where(recipe, "task", "max_length"), hint=f"use max_length <= {limit - offset}",
        )


def check_cascade(recipe: Recipe, t_config) -> None:
    """Build every student's config from its teacher's (all shape checks of build_student), and
    every stage's loss terms (layer maps in range, head counts compatible), from configs alone."""
    config = t_config  # the previous model of the chain
    stages = recipe.cascade.stages
    for i, stage in enumerate(stages):
        key = ("cascade", "stages", i, "student")
        teacher = t_config if stage.teacher == "original" else config
        cfg = recipe.train_for(stage.train, f"cascade.stages[{i}].train")
        if cfg.teacher_cache != "off" and any(n == "relation_kl" and c.weight > 0 for n, c in recipe.stage_losses(stage).items()):
            raise RecipeError("the teacher cache does not hold the query/key/value states that relation_kl compares",
                              where=_cache_key_where(recipe, i), hint="use teacher_cache: off for this stage")
        if cfg.teacher_cache != "off" and cfg.teacher_sharding == "fsdp":
            # a sharded teacher is a collective (every process runs each batch); the cache runs the
            # teacher on different batches per process
            raise RecipeError("the teacher cache cannot be built by a sharded teacher (teacher_sharding: fsdp)",
                              where=_cache_key_where(recipe, i),
                              hint="use teacher_cache: off with teacher_sharding: fsdp (or teacher_sharding: none)")
        if recipe.task.type == "mlm":
            _check_masked_lm_stage(recipe, i, cfg)
        if stage.student == "previous":
            student = config  # the previous stage's student, trained further
        else:
            if stage.student.layers > teacher.num_hidden_layers:
                raise RecipeError(
                    f"stage {stage.name!r} has {stage.student.layers} layers, more than its teacher's {teacher.num_hidden_layers}",
                    where=where(recipe, *key, "layers"), hint="each stage's student must be no deeper than its teacher",
                )
            student, _, _ = student_config(teacher, stage.student, where=where(recipe, *key))
        _check_losses(recipe, i, teacher, student, f"stage {stage.name!r}")
        _check_guides(recipe, i)
        config = student
    if recipe.cascade.direct and len(stages) > 1 and stages[-1].student == "previous":
        raise RecipeError(
            f"the final stage {stages[-1].name!r} trains the previous stage's student further: a direct baseline "
            "would have to repeat the whole staged schedule from the original teacher, which it does not do",
            where=where(recipe, "cascade", "direct"), hint="set direct: false (compare with a separate recipe)")
    if recipe.cascade.direct and len(stages) > 1:  # the final shape, from the original teacher
        spec = direct_spec(final_spec(stages), config, t_config)
        direct, _, _ = student_config(t_config, spec, where=where(recipe, "cascade", "direct"))
        _check_losses(recipe, len(stages) - 1, t_config, direct, "the direct baseline")
    recipe.train_for(recipe.teacher.train, "teacher.train")  # else read only when the teacher trains


def _cache_key_where(recipe: Recipe, i: int) -> str:
    """Where stage i's teacher_cache setting comes from: its own train section, or the recipe's."""
    stage = recipe.cascade.stages[i]
    own = stage.train and "teacher_cache" in stage.train
    return where(recipe, "cascade", "stages", i, "train", "teacher_cache") if own else where(recipe, "train", "teacher_cache")


def _check_masked_lm_stage(recipe: Recipe, i: int, cfg) -> None:
    """General distillation (task type mlm): transformer students, and a teacher cache only where it holds."""
    stage, key = recipe.cascade.stages[i], ("cascade", "stages", i)
    if stage.student != "previous" and stage.student.kind == "bilstm":
        raise RecipeError("general distillation (task type mlm) has transformer and recursive students, not bilstm",
                          where=where(recipe, *key, "student", "kind"),
                          hint="distil a BiLSTM student on a task, from a model of this chain")
    for name, loss in recipe.stage_losses(stage).items():
        if name in LOGIT_LOSSES and "positions" in loss.model_fields_set and loss.positions == "tokens":
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
    if any(name in LOGIT_LOSSES and c.weight > 0 for name, c in recipe.stage_losses(stage).items()):
        raise RecipeError("the teacher cache does not hold masked-LM logits (one value per vocabulary piece and "
                          "masked position)", where=at, hint="use teacher_cache: off for stages with kl or logit_mse")


def _check_processes(recipe: Recipe) -> None:
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
    losses = recipe.stage_losses(stage)
    if not any(name in ("kl", "logit_mse") and cfg.weight > 0 for name, cfg in losses.items()):
        raise RecipeError(
            f"stage {stage.name!r} uses guides: dense, which guides the logit losses, but it has neither kl nor logit_mse",
            where=where(recipe, *key, "guides"), hint="add a kl (or logit_mse) loss with a positive weight",
        )


def _check_losses(recipe: Recipe, i: int, teacher, student, what: str) -> None:
    """Build a stage's loss terms; an error names the line of the loss it comes from."""
    own = recipe.cascade.stages[i].losses is not None
    section = ("cascade", "stages", i) if own else ("cascade",)  # else the cascade's, shared by the stages
    for name, cfg in recipe.stage_losses(recipe.cascade.stages[i]).items():
        # build_loss_terms appends ".losses.NAME" to `where`: give it the prefix, with the loss's line
        prefix = where(recipe, *section, "losses", name).removesuffix(f".losses.{name}")
        try:
            check_bilstm_loss(name, cfg, teacher, student, where=prefix)  # no attention maps in a BiLSTM
            build_loss_terms({name: cfg}, teacher, student, where=prefix)
        except UserError as err:  # say which model, as the cascade's losses serve every stage
            raise type(err)(f"{err.message}, for {what}", where=err.where, hint=err.hint) from None


def final_spec(stages: list[StageConfig]) -> StudentConfig:
    """How the final student was built: the last stage that built one (later ones trained it further)."""
    return next(s.student for s in reversed(stages) if s.student != "previous")


def direct_spec(final: StudentConfig, final_config, teacher_config) -> StudentConfig:
    """The final student's shape, built straight from the original teacher."""
    if final.kind == "bilstm":  # the same LSTM, embedding and projection widths; embeddings as they fit
        return final.model_copy(update={
            "hidden": final_config.lstm_hidden_size, "embedding_size": final_config.embedding_size,
            "projection_size": final_config.hidden_size,
            "embeddings": "random" if final.embeddings == "random" else "auto"})
    spec = final.model_copy(update={
        "hidden": final_config.hidden_size,
        "heads": final_config.num_attention_heads,
        "intermediate": getattr(final_config, ffn_attr(final_config)),
    })
    if final.kind == "recursive":  # the same embedding width; embeddings copied or projected as they fit
        spec = spec.model_copy(update={"embedding_size": final_config.embedding_size,
                                       "embeddings": "random" if final.embeddings == "random" else "auto"})
    if final_config.hidden_size != teacher_config.hidden_size:
        # other width: teacher layers cannot be copied, embeddings are projected instead
        spec = spec.model_copy(update={"init": "random", "embeddings": "random" if final.embeddings == "random"
                                       else "auto" if final.kind == "recursive" else "pca"})
    elif isinstance(final.init, list):
        spec = spec.model_copy(update={"init": "bottom"})
    return spec


# ---------------------------------------------------------------------------------------------


def _done(directory: Path, fingerprint: str) -> dict | None:
    marker = directory / MARKER
    if not marker.is_file():
        return None
    info = json.loads(marker.read_text())
    return info if info.get("recipe") == fingerprint else None


def _save_model(job: Job, model, directory: Path, info: dict, projections=None) -> None:
    """Save a finished model (main process only) and drop its training state, which it supersedes."""
    info["params"] = count_parameters(model)  # now, while requires_grad says what this model trained
    if not is_main():
        return
    extra = {MARKER: json.dumps(info, indent=2).encode()}
    if projections is not None and len(projections):
        from safetensors.torch import save

        extra["projections.safetensors"] = save({k: v.detach().cpu().contiguous() for k, v in projections.state_dict().items()})
    save_checkpoint(model, job.tokenizer, directory, extra_files=extra)
    shutil.rmtree(job.state_dir(directory.name), ignore_errors=True)


def get_teacher(job: Job):
    """Load, fine-tune or train the teacher; saved to RUN_DIR/teacher."""
    recipe, out = job.recipe, job.out / "teacher"
    fingerprint = recipe.fingerprint()
    info = _done(out, fingerprint)
    if info is not None:
        job.say("teacher: already trained, loading it (resume)")
        return load_checkpoint(out, job.data.task), info
    t = recipe.teacher
    torch.manual_seed(recipe.seed)
    if t.model is not None:
        model, has_head = load_model(recipe.model_path(t.model), job.data.task, job.data.labels, trust_remote_code=t.trust_remote_code)
        finetune = t.finetune == "always" or (t.finetune == "auto" and not has_head)
    else:
        model = create_model(t.config, job.data.task, job.data.labels, len(job.tokenizer), job.tokenizer.pad_token_id)
        finetune = t.finetune != "never"
    info = {"recipe": fingerprint, "role": "teacher", "trained": finetune}
    if finetune:
        cfg = recipe.train_for(t.train, "teacher.train")
        use_attention_outputs(model, False)
        terms = [LossTerm("ce", 1.0, HardLabelCE())]
        train_data, blocks = job.training_data()
        job.say(f"teacher: training {model.config.num_hidden_layers} layers x {model.config.hidden_size} "
                f"for {cfg.epochs:g} epochs on {len(train_data)} examples"
                + (" (masked-LM)" if job.masked_lm else ""))
        result = train(model, train_data, cfg, terms=terms, evaluate=lambda m: job.dev_score(m, cfg),
                       pad_id=job.pad_id, seed=recipe.seed, desc="teacher", state_dir=job.state_dir("teacher"),
                       **job.train_options(train_data, blocks, recipe.seed))
        info.update(dev=result.best_score, best_epoch=result.best_epoch, wall_time_s=result.wall_time_s,
                    tokens_per_s=result.tokens_per_s, history=result.history)
    _save_model(job, model, out, info)
    return model, info


def distil_stage(job: Job, name: str, stage: StageConfig, teacher, index: int, *, spec: StudentConfig | None = None,
                 guides: list | None = None, previous=None):
    """Build the student from `teacher` (or continue `previous`, the chain's previous model, with
    `student: previous`), distil it, save the best dev checkpoint. With `guides` (a dense stage: the
    chain's models up to `teacher`), the logit losses learn from all of them."""
    recipe = job.recipe
    out = job.out / "stages" / name
    info = _done(out, recipe.fingerprint())
    if info is not None:
        job.say(f"{name}: already distilled, loading it (resume)")
        return load_checkpoint(out, job.data.task), info
    stage_where = where(recipe, "cascade", "stages", index)
    torch.manual_seed(recipe.seed + index + 1)
    if spec is None and stage.student == "previous":
        # the previous stage's student, trained further (its saved copy stays as it was), with the
        # parameters frozen that the spec which built it froze
        student = copy.deepcopy(previous).float().requires_grad_(True)
        built_by = final_spec(recipe.cascade.stages[:index])
        if built_by.kind == "recursive" and built_by.train_only == "adapters":
            freeze_all_but_adapters(student)
        else:
            freeze_embeddings(student, built_by.freeze_embeddings)
    else:
        student = build_student(teacher, spec or stage.student, where=f"{stage_where}.student")
    cfg = recipe.train_for(stage.train, f"cascade.stages[{index}].train")
    terms, projections = build_loss_terms(recipe.stage_losses(stage), teacher.config, student.config, where=stage_where)
    needs_attn = any(t.name.startswith("attention") for t in terms)
    use_attention_outputs(teacher, needs_attn)
    use_attention_outputs(student, needs_attn)
    params = count_parameters(student)
    def shape(config):  # a BiLSTM is one layer to layer maps, but is not a transformer layer
        return (f"BiLSTM x {config.hidden_size}" if config.model_type == "cascade_kd_bilstm"
                else f"{config.num_hidden_layers} layers x {config.hidden_size}")

    job.say(f"{name}: {shape(student.config)} from {shape(teacher.config)}; losses "
            + ", ".join(f"{t.name}*{t.weight:g}" for t in terms)
            + f"; {params['params_trainable']:,} of {params['params_total']:,} parameters trainable"
            + (f"; dense guidance from {len(guides)} models, {stage.drop_guides} dropped per batch, "
               f"{'summed' if stage.guide_reduction == 'sum' else 'averaged'}" if guides else ""))
    dense = {"guides": guides, "drop_guides": stage.drop_guides, "guide_reduction": stage.guide_reduction} if guides else {}
    with_transfer = bool(job.transfer) and any(t.name != "ce" for t in terms)  # the teacher labels the transfer text
    train_data, blocks = job.training_data(with_transfer)
    if with_transfer:
        job.say(f"  {name}: + {sum(len(enc) for _, enc in job.transfer.values()):,} unlabelled transfer examples "
                f"({', '.join(job.transfer)}), labelled by the teacher")
    cache = teacher_cache(job, teacher, terms, cfg, train_data) if cfg.teacher_cache != "off" else None
    # a stage with no task-output loss (representation only, XtremeDistil's first stage) leaves the
    # head untrained: its dev score says nothing, so the last epoch is kept instead of the best one
    selects = any(t.name == "ce" or t.name in LOGIT_LOSSES for t in terms)
    if not selects:
        job.say(f"  {name}: no logit or label loss: the last epoch's weights are kept (no selection on dev)")
    result = train(student, train_data, cfg, terms=terms, projections=projections, teacher=teacher, **dense,
                   evaluate=(lambda m: job.dev_score(m, cfg)) if selects else None, pad_id=job.pad_id, seed=recipe.seed + index + 1, desc=name,
                   state_dir=job.state_dir(name), teacher_cache=cache,
                   **job.train_options(train_data, blocks, recipe.seed + index + 1))
    use_attention_outputs(student, False)
    use_attention_outputs(teacher, False)
    info = {"recipe": recipe.fingerprint(), "role": "direct" if name == "direct" else "stage",
            "teacher": teacher.config.num_hidden_layers, "dev": result.best_score, "best_epoch": result.best_epoch,
            "wall_time_s": result.wall_time_s, "tokens_per_s": result.tokens_per_s, "steps": result.steps,
            "history": result.history}
    _save_model(job, student, out, info, projections)
    return student, info


def teacher_cache(job: Job, teacher, terms: list[LossTerm], cfg, train_data) -> TeacherCache:
    """The stage teacher's outputs on `train_data`, built (or completed) in RUN_DIR/cache/<key>.

    The main process computes the key and checks the disk; every process then builds its share of
    the missing shards; the main process marks the cache complete."""
    precision = resolve_precision(cfg.precision)
    request = CacheRequest(
        logits=any(t.name in LOGIT_LOSSES for t in terms),
        hidden=tuple(sorted({p for t in terms if t.name in HIDDEN_LOSSES for p, _ in t.pairs})),
        attention=tuple(sorted({p for t in terms if t.name in ATTENTION_LOSSES for p, _ in t.pairs})),
        dtype=cfg.teacher_cache, precision={"no": "fp32"}.get(precision, precision),
    )
    token_task = job.data.task == "token"

    def plan():
        directory = job.out / "cache" / cache_key(teacher, train_data, request)
        return directory, plan_cache(teacher.config, [len(x) for x in train_data], request, directory,
                                     token_task=token_task, say=job.say)

    directory, missing = on_main(plan)
    state = process_state()
    build_shards(teacher, train_data, request, directory, missing[state.process_index :: state.num_processes],
                 token_task=token_task, pad_id=job.pad_id, batch_size=cfg.eval_batch_size, device=state.device)
    barrier()  # every process's shards are written
    if is_main() and not (directory / "meta.json").is_file():
        finish_cache(directory, request, len(train_data))
    barrier()
    return TeacherCache(directory, request, teacher.config, token_task)


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    """Dotted key paths whose values differ between two recipe dumps."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + [k for k in new if k not in old]
        return [c for k in keys for c in _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in _changed_keys(a, b, f"{prefix}{i}.")]
    return [] if old == new else [prefix.rstrip(".")]


def prepare_run_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Check RUN_DIR on every process, then let the main one change it: every process checks the
    directory as the user left it (so all fail alike), none sees it half-changed."""
    if out.exists() and not out.is_dir():
        raise UserError("RUN_DIR exists and is not a directory", where=str(out))
    if out.is_dir() and any(out.iterdir()) and not (resume or overwrite):
        raise UserError(
            "RUN_DIR is not empty", where=str(out),
            hint="pass --resume to continue that run, --overwrite to replace it, or choose another --out",
        )
    if overwrite and out.is_dir() and any(out.iterdir()) and not resume:
        if not (out / "manifest.json").is_file():  # never delete a directory that is not a run
            raise UserError(
                "--overwrite replaces an earlier cascade-kd run, but this directory holds no manifest.json",
                where=str(out), hint="choose an empty or new --out",
            )
    barrier()
    if is_main():
        if overwrite and out.is_dir() and not resume:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)


def run_recipe(recipe: Recipe, out: Path, *, resume: bool = False, overwrite: bool = False, say=print) -> dict:
    """Run a whole recipe; returns the metrics written to RUN_DIR/metrics.json."""
    out = Path(out)
    say = main_say(say)
    job = prepare(recipe, out, say)  # every input check happens before RUN_DIR is touched
    if resume and (out / "manifest.json").is_file():
        manifest = json.loads((out / "manifest.json").read_text())
        if manifest.get("recipe_fingerprint") != recipe.fingerprint():
            changed = _changed_keys(manifest.get("recipe", {}), recipe.dump())
            raise UserError(
                "the recipe changed since this run started"
                + (f": {', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''} differ" if changed else ""),
                where=str(out / "manifest.json"), hint="resume with the original recipe, or start a new --out",
            )
    prepare_run_dir(out, resume=resume, overwrite=overwrite)
    if is_main():
        _write_manifest(job)
    barrier()  # the others read RUN_DIR (finished stages, training state) only once it is ready
    started = time.perf_counter()

    teacher, teacher_info = get_teacher(job)
    models = [("teacher", "teacher", teacher, teacher_info, out / "teacher")]
    chain = [teacher]  # the teacher, then each stage's student (loaded too when done before a resume)
    stages = recipe.cascade.stages
    for i, stage in enumerate(stages):
        guides = chain[: i + 1] if stage.guides == "dense" else None
        stage_teacher = chain[0] if stage.teacher == "original" else chain[i]
        student, info = distil_stage(job, stage.name, stage, stage_teacher, i, guides=guides, previous=chain[i])
        role = "student" if i == len(stages) - 1 else "assistant"
        models.append((stage.name, role, student, info, out / "stages" / stage.name))
        chain.append(student)
    current = chain[-1]
    if recipe.cascade.direct and len(stages) > 1:
        final = stages[-1]
        spec = direct_spec(final_spec(stages), current.config, teacher.config)
        student, info = distil_stage(job, "direct", final, teacher, len(stages) - 1, spec=spec)
        models.append(("direct", "direct", student, info, out / "stages" / "direct"))

    metrics = score_models(job, models)
    metrics["wall_time_s"] = time.perf_counter() - started
    if is_main():
        write_outputs(out, metrics)
        if (out / "state").is_dir() and not any((out / "state").iterdir()):
            (out / "state").rmdir()  # every model finished: no training state is left to resume from
    barrier()
    return metrics


def score_models(job: Job, models, split: str | None = None) -> dict:
    """Score every model on the report split (default: test if present, else dev) and on dev."""
    data = job.data
    split = split or ("test" if "test" in job.encoded else "dev")
    bf16 = resolve_precision(job.recipe.train.precision) == "bf16"
    rows, teacher_scores = [], None
    for name, role, model, info, directory in models:
        per_lang = evaluate_languages(model, job.encoded[split], data.task, data.labels,
                                      batch_size=job.recipe.train.eval_batch_size, pad_id=job.pad_id, bf16=bf16)
        dev = per_lang if split == "dev" else evaluate_languages(
            model, job.encoded["dev"], data.task, data.labels, batch_size=job.recipe.train.eval_batch_size,
            pad_id=job.pad_id, bf16=bf16)
        if role == "teacher":
            teacher_scores = per_lang
        summary = summarise(per_lang, teacher_scores)
        rows.append({
            "name": name, "role": role, "path": str(directory.relative_to(job.out)),
            "kind": {"cascade_kd_recursive": "recursive", "cascade_kd_bilstm": "bilstm"}.get(
                getattr(model.config, "model_type", ""), "transformer"),
            "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size,
            "heads": model.config.num_attention_heads, **{**count_parameters(model), **info.get("params", {})},
            "per_language": per_lang, "average": summary["average"], "worst": summary["worst"],
            "worst_language": summary["worst_language"], "retention": summary["retention"],
            "retention_per_language": summary["retention_per_language"],
            "dev_average": sum(dev.values()) / len(dev),
            "wall_time_s": info.get("wall_time_s"), "train_tokens_per_s": info.get("tokens_per_s"),
        })
    return {
        "name": job.recipe.name, "task": data.task, "metric": metric_for(data.task, data.labels),
        "split": split, "languages": data.languages, "labels": data.labels, "models": rows,
    }


def _write_manifest(job: Job) -> None:
    import transformers

    manifest = {
        "recipe_fingerprint": job.recipe.fingerprint(), "cascade_kd": __version__, "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "seed": job.recipe.seed, "data_sizes": job.data.sizes(), "labels": job.data.labels,
        "recipe": job.recipe.dump(),
    }
    atomic_write(job.out / "manifest.json", json.dumps(manifest, indent=2))
    atomic_write(job.out / "recipe.yaml", _recipe_text(job.recipe))


def _recipe_text(recipe: Recipe) -> str:
    """The recipe as run, with relative paths made absolute so it works from RUN_DIR too."""
    import yaml

    data = recipe.dump()

    def absolute(p):
        return p if p is None or Path(p).is_absolute() else str((recipe.base_dir / p).resolve())

    for split in ("train", "dev", "test"):
        spec = data["data"][split]
        data["data"][split] = {k: absolute(v) for k, v in spec.items()} if isinstance(spec, dict) else absolute(spec)
    data["task"]["labels_file"] = absolute(data["task"]["labels_file"])
    for key in ("model", "tokenizer"):
        data["teacher"][key] = recipe.model_path(data["teacher"][key])
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def evaluate_run(recipe: Recipe, run_dir: Path, *, split: str = "test", out: Path | None = None, say=print,
                 parallel: dict | None = None) -> dict:
    """Re-score every saved model of a finished run on the data `recipe` names, without training.
    With `parallel` ({lang: (sentences, english sentences)}, see retrieval.py), also measure each
    model's cross-lingual sentence retrieval and its retention against the teacher."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise UserError("no metrics.json: not a finished cascade-kd run", where=str(run_dir))
    job = prepare(recipe, run_dir, say)
    if split not in job.encoded:
        raise RecipeError(f"the recipe names no {split} data", where=where(recipe, "data", split))
    job.encoded = {s: job.encoded[s] for s in ("dev", split)}
    target = Path(out) if out else run_dir / f"eval-{split}"
    if target.resolve() == run_dir.resolve():
        raise UserError("eval would overwrite the run's own metrics.json and report.md", where=str(target),
                        hint="give another --out (default RUN_DIR/eval-SPLIT)")
    previous = json.loads(metrics_path.read_text())
    models = []
    for row in previous["models"]:
        directory = run_dir / row["path"]
        if not (directory / "config.json").is_file():
            raise UserError(f"model {row['name']!r} is missing", where=str(directory))
        marker = directory / MARKER
        info = json.loads(marker.read_text()) if marker.is_file() else {}
        models.append((row["name"], row["role"], load_checkpoint(directory, job.data.task), info, directory))
    metrics = score_models(job, models, split=split)
    if parallel:
        from cascade_kd.evaluation.retrieval import evaluate_retrieval, retention_table

        per_model = {}
        for name, _, model, _, _ in models:
            say(f"retrieval: {name} on {len(parallel)} language pair(s)")
            per_model[name] = evaluate_retrieval(model, job.tokenizer, parallel, max_length=recipe.task.max_length,
                                                 batch_size=recipe.train.eval_batch_size)
        metrics["retrieval"] = {"per_model": per_model, "summary": retention_table(per_model, teacher=models[0][0])}
    write_outputs(target, metrics)
    return metrics
