"""`cascade-kd pretrain`: a masked-LM teacher trained from scratch, for machines with no pretrained weights.

The flags become the recipe `cascade_kd.config.pretrain` builds (task type mlm, a teacher built from
a config, no cascade stages), which `run_recipe` runs like any other (checkpoints, --resume, the
report with per-language masked-token accuracy). RUN_DIR/recipe.yaml keeps that recipe, so the
run can be repeated or edited; RUN_DIR/teacher is the model, which general-distillation recipes
name as `teacher.model`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cascade_kd.config.pretrain import check_shape, pretrain_spec
from cascade_kd.config.schema import Recipe, parse_recipe

SHAPE = ("model_type", "layers", "hidden", "heads", "intermediate", "max_length", "epochs", "lr", "batch_size",
         "mask_probability", "language_alpha", "max_per_language", "seed")


def recipe_text(args) -> str:
    """The recipe the flags describe (YAML), so that every check and message is the recipe's own."""
    spec = pretrain_spec(args.text, args.dev, args.languages, args.tokenizer,
                         **{key: getattr(args, key) for key in SHAPE})
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


def recipe_from_args(args) -> Recipe:
    """Validated like a recipe file; errors name the recipe key the flag sets (e.g. `train.lr` for --lr)."""
    check_shape({key: getattr(args, key) for key in SHAPE}, name=lambda key: "--" + key.replace("_", "-"))
    return parse_recipe(recipe_text(args), source="cascade-kd pretrain (flags)", base_dir=Path.cwd())
