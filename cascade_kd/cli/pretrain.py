"""`cascade-kd pretrain`: a masked-LM teacher trained from scratch, for machines with no pretrained weights.

It is not a second pipeline: the flags become a recipe with task type mlm, a teacher built from a
config and no cascade stages, which `run_recipe` runs like any other (checkpoints, --resume, the
report with per-language masked-token accuracy). RUN_DIR/recipe.yaml keeps that recipe, so the
run can be repeated or edited; RUN_DIR/teacher is the model, which general-distillation recipes
name as `teacher.model`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cascade_kd.errors import UserError
from cascade_kd.config.schema import Recipe, parse_recipe


def recipe_text(args) -> str:
    """The recipe the flags describe (YAML), so that every check and message is the recipe's own."""
    spec = {
        "name": "pretrain", "seed": args.seed,
        "task": {"type": "mlm", "max_length": args.max_length, "mask_probability": args.mask_probability},
        "data": {"languages": list(args.languages), "format": "text", "train": args.text, "dev": args.dev},
        "teacher": {"tokenizer": args.tokenizer, "config": {
            "model_type": args.model_type, "num_hidden_layers": args.layers, "hidden_size": args.hidden,
            "num_attention_heads": args.heads, "intermediate_size": args.intermediate or 4 * args.hidden,
            "max_position_embeddings": max(512, args.max_length + 2)}},
        "train": {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size},
    }
    if args.language_alpha is not None:
        spec["data"]["language_alpha"] = args.language_alpha
    if args.max_per_language is not None:
        spec["data"]["max_train_per_language"] = args.max_per_language
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


def check_shape(args) -> None:
    """The model's shape flags, checked before anything runs (the recipe checks everything else)."""
    for flag in ("layers", "hidden", "heads", "intermediate", "max_length"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} {value} is not a positive number")
    if args.hidden % args.heads:
        raise UserError(f"--hidden {args.hidden} is not a multiple of --heads {args.heads}",
                        hint="each attention head gets hidden / heads dimensions")


def recipe_from_args(args) -> Recipe:
    """Validated like a recipe file; errors name the recipe key the flag sets (e.g. `train.lr` for --lr)."""
    check_shape(args)
    return parse_recipe(recipe_text(args), source="cascade-kd pretrain (flags)", base_dir=Path.cwd())
