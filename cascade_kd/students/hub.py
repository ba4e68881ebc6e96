"""Models in and out: load a tokenizer or a pretrained model, create one from a config, save and
reload checkpoints (safetensors, written atomically) with the plain transformers Auto classes."""

from __future__ import annotations

from pathlib import Path

import torch

from cascade_kd.errors import RecipeError
from cascade_kd.fileio import atomic_directory


def auto_class(task: str):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoModelForTokenClassification

    if task == "mlm":  # general distillation / pretraining: the encoder with its masked-LM head
        return AutoModelForMaskedLM
    return AutoModelForTokenClassification if task == "token" else AutoModelForSequenceClassification

def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise RecipeError(
            f"cannot load the tokenizer {name_or_path!r}: {str(exc).splitlines()[0]}",
            where="teacher.tokenizer",
            hint="give a local directory with tokenizer files, or a hub name when online",
        ) from None

def label_config(labels: list[str]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": {i: label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
    }

def config_labels(config) -> list[str]:
    """A checkpoint's label names in id order ([] when it has none)."""
    id2label = getattr(config, "id2label", None) or {}
    return [id2label[i] for i in sorted(id2label)]

def load_model(name_or_path: str, task: str, labels: list[str], *, trust_remote_code: bool = False):
    """A pretrained encoder or a fine-tuned task model. Returns (model, has_matching_head)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise RecipeError(
            f"cannot load the model {name_or_path!r}: {str(exc).splitlines()[0]}",
            where="teacher.model",
            hint="give a local directory with config.json and weights, or a hub name when online",
        ) from None
    if task == "mlm":  # a masked-LM head is there when the checkpoint filled every weight of one
        model, info = auto_class(task).from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                                       dtype=torch.float32, output_loading_info=True)
        return model, not info.get("missing_keys")
    head = "ForTokenClassification" if task == "token" else "ForSequenceClassification"
    has_head = any(a.endswith(head) for a in (config.architectures or [])) and config_labels(config) == list(labels)
    model = auto_class(task).from_pretrained(
        name_or_path, trust_remote_code=trust_remote_code, dtype=torch.float32,
        ignore_mismatched_sizes=not has_head, **label_config(labels)
    )
    return model, has_head

def create_model(config_spec: dict, task: str, labels: list[str], vocab_size: int, pad_token_id: int | None):
    """A randomly initialised model from a config spec (for machines without pretrained weights)."""
    from transformers import AutoConfig

    spec = dict(config_spec)
    model_type = spec.pop("model_type")
    spec.setdefault("vocab_size", vocab_size)
    if pad_token_id is not None:
        spec.setdefault("pad_token_id", pad_token_id)
    try:
        config = AutoConfig.for_model(model_type, **spec, **(label_config(labels) if task != "mlm" else {}))
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"invalid teacher.config: {exc}", where="teacher.config") from None
    if config.vocab_size < vocab_size:
        raise RecipeError(
            f"teacher.config.vocab_size {config.vocab_size} is smaller than the tokenizer's {vocab_size}",
            where="teacher.config.vocab_size",
        )
    try:
        return auto_class(task).from_config(config)
    except (ValueError, TypeError) as exc:  # e.g. a width that the head count does not divide, no such head
        raise RecipeError(f"invalid teacher.config: {str(exc).splitlines()[0]}", where="teacher.config") from None

def use_attention_outputs(model, needed: bool) -> None:
    """Attention probabilities are only returned by the eager implementation in transformers 5."""
    model.set_attn_implementation("eager" if needed else "sdpa")

def save_checkpoint(model, tokenizer, directory: Path, extra_files: dict[str, bytes] | None = None) -> None:
    """save_pretrained into a temporary sibling directory, then swap it in with a rename."""
    with atomic_directory(directory) as tmp:
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)

def load_checkpoint(directory: Path, task: str):
    """Reload a saved model (safetensors only) with the plain Auto classes."""
    model = auto_class(task).from_pretrained(directory, use_safetensors=True, dtype=torch.float32)
    model.eval()
    return model
