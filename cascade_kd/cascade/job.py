"""A job: the recipe with its tokenizer and encoded data, checked as a whole before any training."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cascade_kd.cascade.plan import check_cascade, check_processes, check_teacher
from cascade_kd.cascade.rundir import recipe_model_keys
from cascade_kd.config.schema import Recipe, where
from cascade_kd.data.encode import IGNORE, Encoded, encode
from cascade_kd.data.masking import Masker, mask_split, masker_for
from cascade_kd.data.sampling import epoch_indices
from cascade_kd.data.task import TaskData, load_task_data
from cascade_kd.errors import RecipeError
from cascade_kd.evaluation.scoring import evaluate_languages
from cascade_kd.plugins import PluginError
from cascade_kd.students.anatomy import position_offset
from cascade_kd.students.hub import (auto_config, config_from_spec, config_labels, first_line, has_task_head,
                                     label_config, load_tokenizer, local_path_missing, refuse_damaged)
from cascade_kd.training.data import StageData
from cascade_kd.training.distributed import is_main
from cascade_kd.training.progress import RunProgress, StageMonitor
from cascade_kd.training.setup import resolve_precision
from cascade_kd.training.trackers import Trackers


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
    progress: RunProgress | None = None  # the whole run's position and time left (run_recipe sets it)
    configs: dict = field(default_factory=dict)  # model name -> config, as checked before training (teacher first)
    teacher_head: bool = False  # a saved teacher already has a head for these labels (finetune: auto keeps it)

    @cached_property
    def model_keys(self) -> dict[str, str]:
        """Per model, the key of the recipe part its training reads (stage.json's model_key): a
        resume with an edited recipe keeps a finished model while its key is unchanged."""
        return recipe_model_keys(self.recipe)

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

    def stage_data(self, train_data: list, blocks: list[tuple[str, int]], seed: int) -> StageData:
        """A stage's training data, with its epochs' draws (language sampling) and, for masked-LM
        text with masking: dynamic, each batch's fresh masks."""
        transform = draw = None
        if self.masked_lm and self.recipe.task.masking == "dynamic":
            transform = lambda batch, members, epoch, slots: self.masker.mask_batch(  # noqa: E731
                batch, train_data, members, epoch, slots, stream=seed)
        alpha = self.recipe.data.language_alpha
        if alpha is not None:
            draw = lambda epoch: epoch_indices(blocks, alpha, seed=seed, epoch=epoch)  # noqa: E731
        return StageData(train_data, pad_id=self.pad_id, seed=seed, epoch_draw=draw, batch_transform=transform)

    @property
    def selection_dev(self) -> dict:
        """The dev sets that select models: those of the training languages (data.select_on:
        train_languages, the XTREME protocol) or of every evaluation language (select_on: all)."""
        return {lang: self.encoded["dev"][lang] for lang in self.recipe.data.selection_languages}

    def monitor(self, name: str, cfg) -> StageMonitor:
        """What watches model `name` train: the run's progress, and the trackers of cfg.report_to
        (on the main process, logging into RUN_DIR/logs)."""
        trackers = None
        if cfg.report_to and is_main():
            config = {"model": name, "seed": self.recipe.seed, "recipe": self.recipe.fingerprint(),
                      "train": cfg.model_dump(exclude={"report_to"})}
            trackers = Trackers(cfg.report_to, logs_dir=self.out / "logs", project=self.recipe.name, run_name=name,
                                config=config)
        return StageMonitor(name, run=self.progress, trackers=trackers)

    def dev_score(self, model, cfg) -> float:
        scores = evaluate_languages(model, self.selection_dev, self.data.task, self.data.labels,
                                    batch_size=cfg.eval_batch_size, pad_id=self.pad_id,
                                    bf16=resolve_precision(cfg.precision) == "bf16")
        return sum(scores.values()) / len(scores)  # select on the macro average over those languages


def prepare(recipe: Recipe, out: Path, say=print) -> Job:
    """Load tokenizer and data and check the whole cascade; raises UserError on any bad input."""
    teacher_cfg = recipe.teacher
    if teacher_cfg.model is not None and local_path_missing(recipe.model_path(teacher_cfg.model)):
        raise RecipeError(f"no teacher at {teacher_cfg.model!r}: no such directory",
                          where=where(recipe, "teacher", "model"),
                          hint=f"give a saved model's directory (relative paths start from {recipe.base_dir}), "
                               "or a hub name when online")
    tokenizer = load_tokenizer(recipe.model_path(teacher_cfg.tokenizer or teacher_cfg.model),
                               trust_remote_code=teacher_cfg.trust_remote_code,  # teacher.model when no tokenizer is named
                               where=where(recipe, "teacher", "tokenizer" if teacher_cfg.tokenizer else "model"))
    data = load_task_data(recipe)
    if "dev" not in data.splits:
        raise RecipeError("no dev data: models are selected on dev", where=where(recipe, "data", "dev"))
    t_config = _teacher_config(recipe, data, tokenizer)
    checkpoint_labels = config_labels(t_config) if teacher_cfg.model is not None else []
    if checkpoint_labels and set(checkpoint_labels) == set(data.labels):
        data.labels = checkpoint_labels  # a fine-tuned teacher's head: keep its label order
    classifier_checkpoint = teacher_cfg.model is not None and data.task != "mlm"  # a saved teacher, a head by labels
    teacher_head = classifier_checkpoint and has_task_head(t_config, data.task, data.labels)
    if classifier_checkpoint and teacher_cfg.finetune == "never" and not teacher_head:
        raise RecipeError(f"finetune: never uses the teacher as it is, but {teacher_cfg.model!r} has no "
                          f"{data.task}-classification head for the data's {len(data.labels)} labels "
                          f"({', '.join(data.labels[:8])}{', ...' if len(data.labels) > 8 else ''}): it would score "
                          "with a head at random", where=where(recipe, "teacher", "finetune"),
                          hint="use finetune: auto (it fine-tunes a teacher whose head does not fit), or a teacher "
                               "fine-tuned on these labels")
    if classifier_checkpoint and config_labels(t_config) != list(data.labels):
        # the teacher is loaded with a new head for the data's labels: check (and count) that model
        t_config = copy.deepcopy(t_config)
        t_config.update(label_config(data.labels))
    check_teacher(recipe, t_config, data.task)  # builds on the meta device, fits in memory
    _check_positions(recipe, t_config)
    configs = {"teacher": t_config, **check_cascade(recipe, t_config)}
    check_processes(recipe)
    say(f"data: {len(data.languages)} languages, " + ("masked-LM text" if data.task == "mlm" else f"labels {len(data.labels)}") + "; "
        + ", ".join(f"{s} {sum(n.values())}" for s, n in data.sizes().items()))
    if data.zero_shot_languages:
        zero_shot = data.zero_shot_languages
        say(f"data: labelled training data in {', '.join(data.train_languages)}; {len(zero_shot)} zero-shot "
            f"language(s) ({', '.join(zero_shot[:12])}{' ...' if len(zero_shot) > 12 else ''}); models selected on the "
            + ("dev sets of the training languages" if recipe.data.select_on == "train_languages"
               else "dev sets of every language, zero-shot ones included (data.select_on: all)"))
    for note in data.notes:
        say(f"data: {note}")
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
        # masks too with masking: static, else the engine draws them per epoch (Job.stage_data)
        for split, per_lang in encoded.items():
            if split != "train" or recipe.task.masking == "static":
                encoded[split] = mask_split(masker, split, per_lang)
            else:
                encoded[split] = {lang: (examples, [Encoded(x.input_ids, x.token_type_ids, [IGNORE] * len(x)) for x in items])
                                  for lang, (examples, items) in per_lang.items()}
    return Job(recipe, out, tokenizer, data, encoded, say, encoded_per_language(data.transfer), masker,
               configs=configs, teacher_head=teacher_head)


def _teacher_config(recipe: Recipe, data: TaskData, tokenizer):
    """The teacher's config, read without loading weights: from teacher.config (with the
    tokenizer's vocabulary and the task's labels), or from the checkpoint's config.json."""
    t = recipe.teacher
    if t.config is not None:
        return config_from_spec(t.config, data.task, data.labels, len(tokenizer), tokenizer.pad_token_id,
                                where=lambda key=None: where(recipe, "teacher", "config", *([key] if key else [])))
    if os.path.isdir(recipe.model_path(t.model)):  # damaged or pickled weights: said now, not after RUN_DIR is made
        refuse_damaged(Path(recipe.model_path(t.model)), where(recipe, "teacher", "model"), RecipeError)
    try:
        return auto_config(recipe.model_path(t.model), trust_remote_code=t.trust_remote_code)
    except PluginError:
        raise  # a plugin the teacher's model type needs: its own one-line error
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, a strict config field: the checkpoint's config
        raise RecipeError(f"cannot load the teacher {t.model!r}: {first_line(exc)}",
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
