"""`cascade-kd pretrain`: a masked-LM teacher trained from scratch, for machines with no pretrained weights.

The flags become the recipe `cascade_kd.config.pretrain` builds (task type mlm, a teacher built from
a config, no cascade stages), which `run_recipe` runs like any other (checkpoints, --resume, the
report with per-language masked-token accuracy). RUN_DIR/recipe.yaml keeps that recipe, so the
run can be repeated or edited; RUN_DIR/teacher is the model, which general-distillation recipes
name as `teacher.model`.
"""

from __future__ import annotations

from pathlib import Path

from cascade_kd.config.pretrain import check_shape, pretrain_spec
from cascade_kd.config.schema import Recipe

SOURCE = "cascade-kd pretrain"  # names keys no flag sets (the recipe is the flags')
# the recipe key each flag sets: messages name the flag, not a key of a recipe the user never wrote
FLAG_OF_KEY = {"data.train": "--text", "data.dev": "--dev", "data.languages": "--languages",
               "data.language_alpha": "--language-alpha", "data.max_train_per_language": "--max-per-language",
               "teacher.tokenizer": "--tokenizer", "teacher.config": "--model-type/--layers/--hidden/--heads/--intermediate",
               "teacher.config.model_type": "--model-type",
               "teacher.config.num_hidden_layers": "--layers", "teacher.config.hidden_size": "--hidden",
               "teacher.config.num_attention_heads": "--heads", "teacher.config.intermediate_size": "--intermediate",
               "teacher.config.max_position_embeddings": "--max-length",
               "task.max_length": "--max-length", "task.mask_probability": "--mask-probability",
               "train.epochs": "--epochs", "train.lr": "--lr", "train.batch_size": "--batch-size", "seed": "--seed"}
SHAPE = ("model_type", "layers", "hidden", "heads", "intermediate", "max_length", "epochs", "lr", "batch_size",
         "mask_probability", "language_alpha", "max_per_language", "seed")


def recipe_from_args(args) -> Recipe:
    """Validated like a recipe file, but built from the flags: every error names the flag that set
    the key (`names`), and relative paths start from the current folder."""
    shape = {key: getattr(args, key) for key in SHAPE}
    check_shape(shape, name=lambda key: "--" + key.replace("_", "-"))
    spec = pretrain_spec(args.text, args.dev, args.languages, args.tokenizer, **shape)
    return Recipe.from_dict(spec, source=SOURCE, base_dir=Path.cwd(), names=FLAG_OF_KEY)
