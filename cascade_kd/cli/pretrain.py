"""`cascade-kd pretrain`: a masked-LM teacher trained from scratch, for machines with no pretrained weights.

The flags become the recipe `cascade_kd.config.pretrain` builds (task type mlm, a teacher built from
a config, no cascade stages), which `run_recipe` runs like any other (checkpoints, --resume, the
report with per-language masked-token accuracy). RUN_DIR/recipe.yaml keeps that recipe, so the
run can be repeated or edited; RUN_DIR/teacher is the model, which general-distillation recipes
name as `teacher.model`.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from cascade_kd.config.pretrain import check_shape, pretrain_spec
from cascade_kd.config.schema import Recipe, parse_recipe
from cascade_kd.errors import UserError

SOURCE = "cascade-kd pretrain (flags)"
# the recipe key each flag sets, for messages that name a key of the recipe the user never wrote
FLAG_OF_KEY = {"data.train": "--text", "data.dev": "--dev", "data.languages": "--languages",
               "data.language_alpha": "--language-alpha", "data.max_train_per_language": "--max-per-language",
               "teacher.tokenizer": "--tokenizer", "teacher.config.model_type": "--model-type",
               "teacher.config.num_hidden_layers": "--layers", "teacher.config.hidden_size": "--hidden",
               "teacher.config.num_attention_heads": "--heads", "teacher.config.intermediate_size": "--intermediate",
               "teacher.config.max_position_embeddings": "--max-length",
               "task.max_length": "--max-length", "task.mask_probability": "--mask-probability",
               "train.epochs": "--epochs", "train.lr": "--lr", "train.batch_size": "--batch-size", "seed": "--seed"}
SHAPE = ("model_type", "layers", "hidden", "heads", "intermediate", "max_length", "epochs", "lr", "batch_size",
         "mask_probability", "language_alpha", "max_per_language", "seed")


def recipe_text(args) -> str:
    """The recipe the flags describe (YAML), so that every check and message is the recipe's own."""
    spec = pretrain_spec(args.text, args.dev, args.languages, args.tokenizer,
                         **{key: getattr(args, key) for key in SHAPE})
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


def recipe_from_args(args) -> Recipe:
    """Validated like a recipe file; its errors name the recipe key a flag sets, which the command
    turns into the flag (`as_flag_error`)."""
    check_shape({key: getattr(args, key) for key in SHAPE}, name=lambda key: "--" + key.replace("_", "-"))
    return parse_recipe(recipe_text(args), source=SOURCE, base_dir=Path.cwd())


def as_flag_error(err: UserError) -> UserError:
    """The same error, speaking of the flags instead of the generated recipe: '--lr' for
    'cascade-kd pretrain (flags):25: train.lr', the current folder for the recipe's, and no advice
    about recipe keys the command has no flag for (data.train_languages)."""
    def flag(match: re.Match) -> str:
        key = match.group(1)
        for cut in range(key.count(".") + 1):  # the longest key the flags set: teacher.config.x.y -> x
            name = key.rsplit(".", cut)[0] if cut else key
            if name in FLAG_OF_KEY:
                return FLAG_OF_KEY[name]
        return key

    def rewrite(text: str | None) -> str | None:
        if text is None or text in FLAG_OF_KEY:  # a message placed at a bare key (teacher.tokenizer)
            return FLAG_OF_KEY.get(text)
        text = re.sub(re.escape(SOURCE) + r"(?::\d+)?: (\w+(?:\.\w+)*)", flag, text)
        text = text.replace("relative paths start from the recipe's folder", "relative paths start from the current folder")
        return re.sub(r"; or, if .*? in data\.train_languages", "", text)

    return type(err)(rewrite(err.message), where=rewrite(err.where), hint=rewrite(err.hint))
