"""One place that turns any encoder's outputs into named features.

Hugging Face returns `hidden_states` with L+1 entries (index 0 = embeddings) and `attentions`
with L entries (index 0 = the first layer). Mixing the two up is the classic off-by-one of
distillation code (a "layer 11 <-> layer 5" match that pairs the penultimate hidden state with the
last attention map). Here every layer reference lives in ONE numbering:

    0 or "embeddings"        the embedding output (hidden states only)
    1 .. L                   the output / attention of transformer layer k (1-based)
    "last" or -1             layer L; -2 is layer L-1, and so on

`Features.hidden(ref)`, `Features.attention(ref)` and `Features.relation_states(ref)` all take
that numbering, so "layer 6" is the same layer whichever feature is asked for.

Query / key / value states (for MiniLMv2's relation loss) are not model outputs: `extract_features`
captures them with forward hooks on the projections of the layers asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cascade_kd.losses.layer_maps import LayerRef, resolve_layer
from cascade_kd.students.anatomy import masked_lm_parts
from cascade_kd.students.registry import family_of

@dataclass
class Features:
    """The named outputs of one forward pass.

    logits:          [B, C] (sequence tasks) or [B, T, C] (token tasks); [positions, C] when asked
                     for selected positions (masked-LM); None when not computed
    hidden_states:   L+1 tensors [B, T, D]; entry 0 is the embedding output
    attentions:      L tensors [B, H, T, T] of attention probabilities, or None if not computed
    attention_mask:  [B, T] bool, True for real tokens
    qkv:             layer k (1..L) -> {"query", "key", "value"} -> [B, T, D] projection outputs,
                     for the layers captured (see `extract_features(qkv_layers=...)`), or None
    depth:           L, recorded with `qkv` so its layer refs resolve without hidden states
    """

    logits: torch.Tensor | None
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None
    attention_mask: torch.Tensor
    qkv: dict[int, dict[str, torch.Tensor]] | None = None
    depth: int | None = None

    @property
    def num_layers(self) -> int:
        if self.hidden_states is not None:
            return len(self.hidden_states) - 1
        if self.attentions is not None:
            return len(self.attentions)
        if self.depth is not None:
            return self.depth
        raise ValueError("these features hold neither hidden states nor attentions")

    def hidden(self, ref: LayerRef) -> torch.Tensor:
        if self.hidden_states is None:
            raise ValueError("hidden states were not computed for this forward pass")
        return self.hidden_states[resolve_layer(ref, self.num_layers, feature="hidden")]

    def attention(self, ref: LayerRef) -> torch.Tensor:
        if self.attentions is None:
            raise ValueError("attentions were not computed (they need attn_implementation='eager')")
        return self.attentions[resolve_layer(ref, self.num_layers, feature="attention") - 1]

    def relation_states(self, ref: LayerRef) -> dict[str, torch.Tensor]:
        """{"query", "key", "value"} -> [B, T, D] of transformer layer `ref` (1..L, "last", -1)."""
        if not self.qkv:
            raise ValueError("query/key/value states were not captured (pass qkv_layers to extract_features)")
        index = resolve_layer(ref, self.num_layers, feature="attention")
        if index not in self.qkv:
            raise ValueError(
                f"query/key/value states of layer {index} were not captured (captured: {sorted(self.qkv)})"
            )
        return self.qkv[index]


def extract_features(model, batch: dict, *, hidden: bool, attentions: bool, qkv_layers=(), logits=True) -> Features:
    """Run `model` on a batch and return its Features. Works for any HF *For*Classification model,
    and for *ForMaskedLM models.

    `qkv_layers`: layer refs (1..L, "last", -1, ...) whose query / key / value projection outputs
    are captured into `Features.qkv`, by forward hooks that live only for this forward pass.
    `logits`: True, the head's logits at every position; False, none needed: a masked-LM head (a
    projection onto the whole vocabulary) is skipped; a bool mask [B, T], logits at those positions
    only, as [positions, C]: a masked-LM head runs there alone (masked-LM training and scoring).
    """
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    layers, wanted, depth, calls, handles = [], [], None, {}, []
    if qkv_layers:
        layers = attention_layers(model)
        depth = len(layers)
        wanted = sorted({resolve_layer(ref, depth, feature="attention", where="qkv_layers") for ref in qkv_layers})
    try:
        # One hook per projection module: a recursive student's shared layer gets hooked once and
        # fires once per recursion step, so its k-th call is step k.
        for module in {id(layers[k - 1]): layers[k - 1] for k in wanted}.values():
            for kind, proj in qkv_projections(module, model).items():
                store = calls.setdefault((id(module), kind), [])
                handles.append(proj.register_forward_hook(lambda _m, _args, output, store=store: store.append(output)))
        parts = masked_lm_parts(model) if logits is not True else None
        if parts is not None:  # the encoder alone, then the vocabulary head where it is wanted
            body, head = parts
            out = body(**inputs, output_hidden_states=hidden, output_attentions=attentions, return_dict=True)
            out_logits = None if logits is False else head(out.last_hidden_state[logits])
        else:
            out = model(**inputs, output_hidden_states=hidden, output_attentions=attentions, return_dict=True)
            out_logits = out.logits[logits] if isinstance(logits, torch.Tensor) else out.logits
    finally:
        for handle in handles:
            handle.remove()
    qkv = {}
    for k in wanted:
        module = layers[k - 1]
        call = sum(m is module for m in layers[: k - 1])  # earlier layers that are this same module
        qkv[k] = {}
        for kind in QKV_KINDS:
            outputs = calls[(id(module), kind)]
            if call >= len(outputs):
                raise ValueError(
                    f"the {kind} projection of layer {k} of {type(model).__name__} ran {len(outputs)} "
                    f"time(s) in the forward pass, not the {call + 1} expected"
                )
            qkv[k][kind] = outputs[call]
    return Features(
        logits=out_logits,
        hidden_states=tuple(out.hidden_states) if hidden else None,
        attentions=tuple(out.attentions) if attentions else None,
        attention_mask=batch["attention_mask"].bool(),
        qkv=qkv or None,
        depth=depth,
    )


# ----------------------------------------------------------------------------------------------
# Query / key / value projections: where each layer's are.

QKV_KINDS = ("query", "key", "value")
# The names families give the three projections: BERT / XLM-R / ELECTRA / recursive students,
# DistilBERT, and the q_proj style of newer encoders.
QKV_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"),
             ("query_proj", "key_proj", "value_proj"))  # the last: DeBERTa-v2 / mDeBERTa


def attention_layers(model) -> list[nn.Module]:
    """The module applied as transformer layer k, at index k - 1 (L entries). A recursive student's
    one shared layer appears r times."""
    return family_of(model).applied_layers(model)


def qkv_projections(layer: nn.Module, model=None) -> dict[str, nn.Module]:
    """{"query", "key", "value"} -> the projection modules inside one transformer layer (the first
    match, i.e. the self-attention's, should the layer also hold cross-attention)."""
    for names in QKV_NAMES:
        found = {}
        for name, module in layer.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in names:
                found.setdefault(leaf, module)
        if len(found) == 3:
            return {kind: found[name] for kind, name in zip(QKV_KINDS, names)}
    owner = type(model if model is not None else layer).__name__
    raise ValueError(
        f"cannot find the query/key/value projections of {owner}: its layers have no submodules named "
        + " / ".join("/".join(names) for names in QKV_NAMES)
    )
