"""The recipe of a masked-LM teacher trained from scratch (`cascade-kd pretrain`, `pretrain_recipe`).

Pretraining is not a second pipeline: it is a recipe with task type mlm, a teacher built from a
config and no cascade stages, which `run_recipe` runs like any other (checkpoints, resume, the
report with per-language masked-token accuracy). This module builds that recipe from a model shape
and the text files, without importing torch, so the command line checks its flags at once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cascade_kd.config.schema import Recipe
from cascade_kd.errors import UserError


def pretrain_spec(text: str | Path, dev: str | Path, languages: list[str], tokenizer: str | Path, *,
                  model_type: str = "bert", layers: int = 4, hidden: int = 256, heads: int = 4,
                  intermediate: int | None = None, max_length: int = 128, epochs: float = 3, lr: float = 5e-4,
                  batch_size: int = 32, mask_probability: float = 0.15, language_alpha: float | None = None,
                  max_per_language: int | None = None, seed: int = 0) -> dict:
    """The pretraining recipe as plain data (the content of its YAML file); see `pretrain_recipe`."""
    spec = {
        "name": "pretrain", "seed": seed,
        "task": {"type": "mlm", "max_length": max_length, "mask_probability": mask_probability},
        "data": {"languages": list(languages), "format": "text", "train": str(text), "dev": str(dev)},
        "teacher": {"tokenizer": str(tokenizer), "config": {
            "model_type": model_type, "num_hidden_layers": layers, "hidden_size": hidden,
            "num_attention_heads": heads, "intermediate_size": intermediate or 4 * hidden,
            # room for the longest example plus [CLS] and [SEP], and never below BERT's usual 512
            "max_position_embeddings": max(512, max_length + 2)}},
        "train": {"epochs": epochs, "lr": lr, "batch_size": batch_size},
    }
    if language_alpha is not None:
        spec["data"]["language_alpha"] = language_alpha
    if max_per_language is not None:
        spec["data"]["max_train_per_language"] = max_per_language
    return spec


def check_shape(shape: dict, name: Callable[[str], str] = str) -> None:
    """The model's shape (layers, hidden, heads, intermediate, max_length; None: the default), checked
    before anything runs (the recipe checks everything else). `name` spells a key in the message
    (the command line names its flags)."""
    for key in ("layers", "hidden", "heads", "intermediate", "max_length"):
        value = shape.get(key)
        if value is not None and value < 1:
            raise UserError(f"{name(key)} {value} is not a positive number")
    hidden, heads = shape.get("hidden"), shape.get("heads")
    if hidden is not None and heads is not None and hidden % heads:
        raise UserError(f"{name('hidden')} {hidden} is not a multiple of {name('heads')} {heads}",
                        hint="each attention head gets hidden / heads dimensions")


def pretrain_recipe(text: str | Path, dev: str | Path, languages: list[str], tokenizer: str | Path, *,
                    base_dir: str | Path = ".", **shape) -> Recipe:
    """The recipe `cascade-kd pretrain` runs: a masked-LM encoder (`model_type`, default bert) of
    `layers` x `hidden` with `heads` heads trained from scratch on plain text, one example per line.

    `text` and `dev` are path templates with `{lang}` (e.g. "corpus/train-{lang}.txt"), filled with
    each of `languages`; `tokenizer` is a tokenizer directory or hub name; relative paths are
    resolved against `base_dir`. The keywords and their defaults are the command's flags:
    `model_type="bert"`, `layers=4`, `hidden=256`, `heads=4`, `intermediate=None` (4 x hidden),
    `max_length=128`, `epochs=3`, `lr=5e-4`, `batch_size=32`, `mask_probability=0.15`,
    `language_alpha=None` (temperature sampling of languages, e.g. 0.3), `max_per_language=None`,
    `seed=0`. Returns a validated `Recipe`; run it with `run(recipe, run_dir)`, and the model lands in
    RUN_DIR/teacher, which general-distillation recipes name as `teacher.model`:

        recipe = ckd.pretrain_recipe("text/train-{lang}.txt", "text/dev-{lang}.txt", ["en", "de"],
                                     "tokenizers/mbert-cased", layers=4, hidden=128, language_alpha=0.3)
        ckd.run(recipe, "runs/pretrain", resume=True)

    A bad value raises a `UserError` (a `RecipeError` naming the recipe key, e.g. `train.lr`)."""
    check_shape(shape)
    return Recipe.from_dict(pretrain_spec(text, dev, languages, tokenizer, **shape), base_dir=base_dir,
                            source="pretrain_recipe")
