"""Model builders: load or create the teacher, and build each stage's student from its teacher.

Works on any Hugging Face encoder with a *ForSequenceClassification / *ForTokenClassification
head (BERT, mBERT, XLM-R, DistilBERT, ...). The transformer layers are found generically as the
ModuleList whose length is the config's layer count, so layer-subset initialisation does not
depend on one architecture's attribute names.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
from torch import nn

from cascade_kd.errors import RecipeError
from cascade_kd.fileio import atomic_directory
from cascade_kd.config.schema import StudentConfig

# ---------------------------------------------------------------------------------------------
# Loading and creating


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


def masked_lm_parts(model):
    """(encoder, head) of a masked-LM model, so that the head (a vocabulary-wide projection: most of
    the compute with mBERT's 119,547 pieces) runs at the masked positions only; None for a model
    whose head is not known here (its full logits are computed and then indexed), and for a sharded
    teacher (FSDP gathers the weights that no layer group holds, the embeddings among them, in the
    forward of the whole model only)."""
    from cascade_kd.training.sharding import is_sharded

    if is_sharded(model):
        return None
    # BERT/mBERT; RoBERTa, XLM-R, CamemBERT; recursive (MiniALBERT) students
    for body, head in (("bert", "cls"), ("roberta", "lm_head"), ("recursive", "lm_head")):
        if hasattr(model, body) and hasattr(model, head):
            return getattr(model, body), getattr(model, head)
    if hasattr(model, "distilbert") and hasattr(model, "vocab_projector"):
        def head(h):
            return model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(h))))
        return model.distilbert, head
    return None


def use_attention_outputs(model, needed: bool) -> None:
    """Attention probabilities are only returned by the eager implementation in transformers 5."""
    model.set_attn_implementation("eager" if needed else "sdpa")


# ---------------------------------------------------------------------------------------------
# Anatomy: where the layers and the embeddings are


def num_layers(model) -> int:
    return model.config.num_hidden_layers


def layer_list(model) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer layers (e.g. 'bert.encoder.layer')."""
    wanted = num_layers(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == wanted and re.search(r"layers?$", name):
            return name, module
    raise ValueError(f"cannot find the {wanted} transformer layers of {type(model).__name__}")


def embedding_parameters(model) -> dict[str, nn.Parameter]:
    """Parameters of the embedding block (word, position, token type, their LayerNorm)."""
    word = model.get_input_embeddings().weight
    out = {}
    for name, p in model.named_parameters():
        if p is word or ".embeddings." in f".{name}":
            out[name] = p
    return out


def _embedding_kind(name: str, param, word) -> str | None:
    if param is word or "word_embeddings" in name:
        return "word"
    if "position_embeddings" in name:
        return "position"
    if "token_type_embeddings" in name:
        return "token_type"
    return None


def position_offset(config) -> int:
    """Position ids a model uses before its first token (RoBERTa-style models start after padding_idx)."""
    return (config.pad_token_id or 0) + 1 if any(n in config.model_type for n in ("roberta", "camembert")) else 0


def freeze_embeddings(model, which: bool | list[str]) -> list[str]:
    """Freeze word/position/token-type embeddings (True = all three). Returns the frozen names."""
    if not which:
        return []
    kinds = {"word", "position", "token_type"} if which is True else set(which)
    word = model.get_input_embeddings().weight
    frozen = []
    for name, p in embedding_parameters(model).items():
        if _embedding_kind(name, p, word) in kinds:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def count_parameters(model) -> dict[str, int]:
    """Unique parameters (shared tensors counted once), split into embedding and the rest; trainable
    ones (requires_grad); params_unrolled: what the forward pass applies (a recursive student's
    shared layer once per recursion step; = params_total otherwise); params_adapters."""
    from cascade_kd.students.recursive import compute_counts

    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    emb = sum(p.numel() for p in {id(p): p for p in embedding_parameters(model).values()}.values())
    return {"params_total": total, "params_embedding": emb, "params_trainable": trainable, **compute_counts(model, total)}


# ---------------------------------------------------------------------------------------------
# Students


def select_layers(init, teacher_layers: int, student_layers: int, where: str) -> list[int] | None:
    """0-based teacher layer indices that initialise the student, or None for random init."""
    if init == "random":
        return None
    if init == "bottom":
        return list(range(student_layers))
    if init == "top":
        return list(range(teacher_layers - student_layers, teacher_layers))
    if init == "uniform":  # evenly spread, always keeping the last layer
        return [round((k + 1) * teacher_layers / student_layers) - 1 for k in range(student_layers)]
    chosen = [i - 1 for i in init]  # explicit, 1-based in the recipe
    if len(chosen) != student_layers:
        raise RecipeError(f"init lists {len(chosen)} layers but the student has {student_layers}", where=where)
    if max(chosen) >= teacher_layers:
        raise RecipeError(f"init names layer {max(chosen) + 1} but the teacher has {teacher_layers}", where=where)
    return chosen


def ffn_attr(config) -> str:
    """The config attribute holding the feed-forward width (DistilBERT calls it hidden_dim)."""
    return "hidden_dim" if getattr(config, "model_type", "") == "distilbert" else "intermediate_size"


def student_config(t_config, spec: StudentConfig, *, where: str = "student"):
    """The student's config and the teacher layers that initialise it, with every shape check.

    Used both before training (to check a whole cascade from configs alone) and to build the
    student, so a recipe that cannot be built is refused before the teacher trains.
    Returns (config, chosen 0-based teacher layers or None, whether layers have the teacher's shape);
    for a recursive student (kind: recursive) see cascade_kd.students.recursive.recursive_config.
    """
    from cascade_kd.students.bilstm import bilstm_config, is_bilstm
    from cascade_kd.students.recursive import is_recursive, recursive_config

    if spec.kind == "bilstm":  # XtremeDistil: cascade_kd/bilstm.py
        return bilstm_config(t_config, spec, where=where)
    if is_bilstm(t_config):
        raise RecipeError(f"a {spec.kind} student cannot be built from a BiLSTM teacher", where=f"{where}.kind",
                          hint="use kind: bilstm for every stage after a BiLSTM one")
    if spec.kind == "recursive":
        return recursive_config(t_config, spec, where=where)
    if is_recursive(t_config):
        raise RecipeError("a transformer student cannot be built from a recursive teacher", where=f"{where}.kind",
                          hint="use kind: recursive for every stage after a recursive one")
    t_layers, ffn = t_config.num_hidden_layers, ffn_attr(t_config)
    if spec.layers > t_layers:
        raise RecipeError(
            f"the student has {spec.layers} layers, more than its teacher's {t_layers}",
            where=f"{where}.layers",
            hint="each stage's student must be smaller than that stage's teacher",
        )
    config = copy.deepcopy(t_config)
    config.num_hidden_layers = spec.layers
    width_changes = spec.hidden is not None and spec.hidden != t_config.hidden_size
    if width_changes:
        config.hidden_size = spec.hidden
        config.num_attention_heads = spec.heads or max(1, t_config.num_attention_heads * spec.hidden // t_config.hidden_size)
        setattr(config, ffn, spec.intermediate or 4 * spec.hidden)
    else:
        config.num_attention_heads = spec.heads or t_config.num_attention_heads
        setattr(config, ffn, spec.intermediate or getattr(t_config, ffn))
    if config.hidden_size % config.num_attention_heads:
        raise RecipeError(f"hidden {config.hidden_size} is not a multiple of heads {config.num_attention_heads}",
                          where=f"{where}.heads")
    config.architectures = None
    # weight shapes depend on the widths only: a new head count still lets layers be copied
    same_shape = (config.hidden_size, getattr(config, ffn)) == (t_config.hidden_size, getattr(t_config, ffn))
    chosen = select_layers(spec.init, t_layers, spec.layers, f"{where}.init")
    if chosen is not None and not same_shape:
        raise RecipeError(
            "the student's layers have another shape than the teacher's, so they cannot be copied",
            where=f"{where}.init",
            hint="use init: random with a new hidden/heads/intermediate",
        )
    if spec.embeddings == "copy" and width_changes:
        raise RecipeError(
            f"embeddings cannot be copied into a student of width {spec.hidden} (teacher {t_config.hidden_size})",
            where=f"{where}.embeddings",
            hint="use embeddings: pca (the teacher's projected to the new width) or random",
        )
    return config, chosen, same_shape


def build_student(teacher, spec: StudentConfig, *, where: str = "student"):
    """A student built from `teacher` as `spec` says (in float32); the teacher is left untouched."""
    if spec.kind == "bilstm":
        from cascade_kd.students.bilstm import build_bilstm_student

        return build_bilstm_student(teacher, spec, where=where)
    if spec.kind == "recursive":
        from cascade_kd.students.recursive import build_recursive_student

        return build_recursive_student(teacher, spec, where=where)
    config, chosen, same_shape = student_config(teacher.config, spec, where=where)
    student = type(teacher)(config).float()
    # init: random starts the head (and pooler) fresh too: only the embeddings may come from the teacher
    _initialise(student, teacher, chosen, spec.embeddings, copy_rest=same_shape and chosen is not None)
    freeze_embeddings(student, spec.freeze_embeddings)
    return student


@torch.no_grad()
def _initialise(student, teacher, chosen: list[int] | None, embeddings: str, copy_rest: bool) -> None:
    t_prefix, _ = layer_list(teacher)
    s_prefix, _ = layer_list(student)
    t_state = teacher.state_dict()
    s_emb = set(embedding_parameters(student))
    layer_key = re.compile(rf"^{re.escape(s_prefix)}\.(\d+)\.(.*)$")
    for key, value in student.state_dict().items():
        match = layer_key.match(key)
        if match:
            if chosen is None:
                continue
            source = f"{t_prefix}.{chosen[int(match.group(1))]}.{match.group(2)}"
        elif key in s_emb or ".embeddings." in f".{key}":
            if embeddings != "copy":
                continue
            source = key
        elif copy_rest:  # head, pooler, final norms: same shapes, so start from the teacher's
            source = key
        else:
            continue
        if source in t_state and t_state[source].shape == value.shape:
            value.copy_(t_state[source])
    if embeddings == "pca":
        _pca_embeddings(student, teacher)


@torch.no_grad()
def pca_axes(t_word: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean [1, D_T] and top `width` principal axes [D_T, width] of an embedding matrix."""
    t_word = t_word.float()
    mean = t_word.mean(0, keepdim=True)
    # right singular vectors of the centred matrix are the principal axes
    _, _, v = torch.linalg.svd(t_word - mean, full_matrices=False)
    return mean, v[:width].T


@torch.no_grad()
def _pca_embeddings(student, teacher) -> None:
    """XtremeDistil: project the teacher's embeddings onto their top principal components."""
    t_word = teacher.get_input_embeddings().weight.float()
    mean, axes = pca_axes(t_word, student.config.hidden_size)  # [D_T, D_S]
    t_emb = embedding_parameters(teacher)
    word = student.get_input_embeddings().weight
    word.copy_(((t_word - mean) @ axes).to(word.dtype))
    for name, p in embedding_parameters(student).items():
        if p is word or p.dim() != 2 or name not in t_emb:
            continue
        source = t_emb[name].float()  # position / token type tables share the word axes, uncentred
        p.copy_((source @ axes).to(p.dtype))


# ---------------------------------------------------------------------------------------------
# Saving: plain transformers checkpoints, written atomically


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
