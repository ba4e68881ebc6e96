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

from cascade_kd.errors import RecipeError
from cascade_kd.students.anatomy import layer_list, masked_lm_parts
from cascade_kd.students.recursive import is_recursive

LayerRef = int | str


def resolve_layer(ref: LayerRef, num_layers: int, *, feature: str = "hidden", where: str = "layer") -> int:
    """Turn a symbolic layer reference into a layer number in 0..L (hidden) or 1..L (attention)."""
    if isinstance(ref, bool):  # bool is an int subclass: reject it explicitly
        raise RecipeError(f"layer reference {ref!r} is not a layer", where=where)
    if isinstance(ref, str):
        name = ref.strip().lower()
        if name in ("embeddings", "emb", "embedding"):
            index = 0
        elif name in ("last", "top"):
            index = num_layers
        else:
            try:
                index = int(name)
            except ValueError:
                raise RecipeError(
                    f"unknown layer reference {ref!r}",
                    where=where,
                    hint="use an integer, a negative index, 'embeddings' or 'last'",
                ) from None
            return resolve_layer(index, num_layers, feature=feature, where=where)
    elif isinstance(ref, int):
        index = num_layers + 1 + ref if ref < 0 else ref
    else:
        raise RecipeError(f"layer reference {ref!r} is neither an integer nor a name", where=where)
    lowest = 0 if feature == "hidden" else 1
    if index == 0 and feature == "attention":
        raise RecipeError(
            f"attention layer {ref!r} does not exist: the embeddings (layer 0) have no attention map "
            f"(attention layers are 1 to {num_layers})",
            where=where,
            hint="pair the embeddings in a hidden-state loss (hidden_mse, hidden_cos) instead",
        )
    if not lowest <= index <= num_layers:
        what = "hidden states 0 (embeddings) to" if feature == "hidden" else "attention layers 1 to"
        raise RecipeError(
            f"layer {ref!r} is out of range: the model has {num_layers} layers ({what} {num_layers})",
            where=where,
        )
    return index


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
    if is_recursive(model):
        return [model.base_model.shared_layer] * model.config.num_hidden_layers
    return list(layer_list(model)[1])


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


# ----------------------------------------------------------------------------------------------
# Layer maps: which student layer learns from which teacher layer.
# A map is a list of (teacher_layer, student_layer) pairs in the numbering above.


def layer_pairs(
    strategy: str | list,
    teacher_layers: int,
    student_layers: int,
    *,
    feature: str = "hidden",
    where: str = "layer_map",
) -> list[tuple[int, int]]:
    """Resolve a layer-map strategy (or an explicit list of [teacher, student] pairs).

    top_only     last <-> last (LightMBERT, MiniLM)
    uniform      student k <-> teacher round(k * L_T / L_S), k = 1..L_S (TinyBERT's i <-> i*k,
                 generalised with rounding when L_T is not a multiple of L_S); hidden maps also
                 pair the embeddings 0 <-> 0
    top_aligned  student k <-> teacher L_T - L_S + k (XtremeDistilTransformers: the student's
                 states against the teacher's top L_S+1 states); for hidden, k = 0..L_S
    skip2        student k <-> teacher 2k (MiniALBERT)
    """
    if isinstance(strategy, list):
        pairs = []
        for i, pair in enumerate(strategy):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise RecipeError(
                    f"entry {i} is {pair!r}, expected a [teacher_layer, student_layer] pair", where=where
                )
            t = resolve_layer(pair[0], teacher_layers, feature=feature, where=f"{where}[{i}][0] (teacher)")
            s = resolve_layer(pair[1], student_layers, feature=feature, where=f"{where}[{i}][1] (student)")
            pairs.append((t, s))
        if not pairs:
            raise RecipeError("an explicit layer map needs at least one pair", where=where)
        return pairs

    first = 0 if feature == "hidden" else 1
    if strategy == "top_only":
        return [(teacher_layers, student_layers)]
    if strategy == "uniform":
        pairs = [(round(k * teacher_layers / student_layers), k) for k in range(1, student_layers + 1)]
        return ([(0, 0)] if feature == "hidden" else []) + pairs
    if strategy == "top_aligned":
        if student_layers > teacher_layers:
            raise RecipeError(
                f"top_aligned needs a student no deeper than its teacher "
                f"({student_layers} > {teacher_layers} layers)",
                where=where,
            )
        offset = teacher_layers - student_layers
        return [(offset + k, k) for k in range(first, student_layers + 1)]
    if strategy == "skip2":
        if 2 * student_layers > teacher_layers:
            raise RecipeError(
                f"skip2 maps student layer k to teacher layer 2k: a {student_layers}-layer student "
                f"needs a teacher with at least {2 * student_layers} layers, not {teacher_layers}",
                where=where,
            )
        return ([(0, 0)] if feature == "hidden" else []) + [(2 * k, k) for k in range(1, student_layers + 1)]
    raise RecipeError(
        f"unknown layer map {strategy!r}",
        where=where,
        hint="use top_only, uniform, top_aligned, skip2 or a list of [teacher, student] pairs",
    )
