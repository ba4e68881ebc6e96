"""Model anatomy, for any Hugging Face encoder: where the layers, the embeddings and the masked-LM
parts are, what to freeze, how many parameters a model has.

The transformer layers are found generically as the ModuleList whose length is the config's layer
count, so nothing here depends on one architecture's attribute names.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from cascade_kd.training.sharding import is_sharded


def masked_lm_parts(model):
    """(encoder, head) of a masked-LM model, so that the head (a vocabulary-wide projection: most of
    the compute with mBERT's 119,547 pieces) runs at the masked positions only; None for a model
    whose head is not known here (its full logits are computed and then indexed), and for a sharded
    teacher (FSDP gathers the weights that no layer group holds, the embeddings among them, in the
    forward of the whole model only)."""
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

def base_counts(model) -> dict[str, int]:
    """Unique parameters (shared tensors counted once), split into embedding and the rest, and the
    trainable ones (requires_grad). See registry.count_parameters for the family's own counts."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    emb = sum(p.numel() for p in {id(p): p for p in embedding_parameters(model).values()}.values())
    return {"params_total": total, "params_embedding": emb, "params_trainable": trainable}


def ffn_attr(config) -> str:
    """The config attribute holding the feed-forward width (DistilBERT calls it hidden_dim)."""
    return "hidden_dim" if getattr(config, "model_type", "") == "distilbert" else "intermediate_size"


@torch.no_grad()
def pca_axes(t_word: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean [1, D_T] and top `width` principal axes [D_T, width] of an embedding matrix.

    The axes are the top eigenvectors of the D_T x D_T covariance, summed in float64 over row chunks:
    the SVD's axes of the centred matrix (up to sign), without decomposing a 250,000 x 384 matrix
    (XLM-R's vocabulary: about 5x faster, see benchmarks/teachers/README.md). Each axis's sign is
    fixed (its largest entry positive), so that the projection is reproducible."""
    t_word = t_word.detach().float()
    mean = t_word.mean(0, keepdim=True)
    cov = torch.zeros(t_word.shape[1], t_word.shape[1], dtype=torch.float64)
    for chunk in t_word.split(32768):
        centred = chunk - mean
        cov += (centred.T @ centred).double()  # float32 products per chunk, summed in float64
    _, vectors = torch.linalg.eigh(cov)  # eigenvalues ascending
    axes = vectors.flip(1)[:, :width]
    signs = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
    return mean, (axes * signs).float()
