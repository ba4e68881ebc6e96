"""Recursive students (MiniALBERT, Nouriborji et al., EACL 2023): one transformer layer applied r times.

A recursive student is a Hugging Face `PreTrainedModel` family of its own (model_type
`cascade_kd_recursive`), registered with the Auto classes when `cascade_kd.students` is imported, so a
saved student reloads with `AutoModelForTokenClassification.from_pretrained(path)` (or
`...ForSequenceClassification`) once `import cascade_kd.students` has run (`import cascade_kd`
alone loads nothing: its names load on first use).

Forward pass (`RecursiveModel`):

    x_0 = P(E(ids))              E: word + position + token-type tables of width `embedding_size`,
                                 LayerNorm, dropout; P: Linear(embedding_size -> hidden) when the
                                 widths differ, else the identity. x_0 is hidden state 0.
    for step i = 1 .. r (r = num_hidden_layers, the recursion steps):
        x = AttAdapter_i(x)                    # per step, before the attention block
        x = LN_a(x + Attn(x))                  # SHARED self-attention block (BERT post-LN)
        x = FfnAdapter_i(x)                    # per step, before the feed-forward block
        x = LN_f(x + FFN(x))                   # SHARED feed-forward block
        x_i = x                                # hidden state i; Attn's probabilities are attention i

    Adapter(x) = LayerNorm(x + W2 GELU(W1 x)),  W1: hidden -> hidden // adapter_reduction, W2 back.

This is MiniALBERT's placement (nlpie-research/MiniALBERT, minialbert_modeling.py): the adapters
sit on the input of each sub-block, before the shared weights, and each adapter has its own
residual and LayerNorm. W2 starts at zero, so a fresh adapter is LayerNorm(x).

Outputs follow the Hugging Face convention that `cascade_kd.students.features` reads: `hidden_states` has
r + 1 entries (entry 0 the projected embedding output) and `attentions` r entries, so a recursion
step is "layer i" in every layer map. The shared layer's parameter names are BERT's
(`attention.self.query`, `attention.output.LayerNorm`, `intermediate.dense`, `output.dense`, ...),
which makes initialising it from a BERT/XLM-R layer a copy.

Shared weights are one module (`recursive.shared_layer`), so the state dict holds them once and
save_pretrained / from_pretrained need nothing special.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as hf_init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from cascade_kd.errors import RecipeError
from cascade_kd.students.anatomy import _embedding_kind, embedding_parameters, ffn_attr, freeze_embeddings, layer_list, pca_axes
from cascade_kd.students.heads import classification_output
from cascade_kd.students.registry import StudentFamily, register

MODEL_TYPE = "cascade_kd_recursive"
DEFAULT_ADAPTER_REDUCTION = 16  # MiniALBERT's reduction factor

# ---------------------------------------------------------------------------------------------
# Config


class RecursiveConfig(PreTrainedConfig):
    """A MiniALBERT-style recursive encoder. `num_hidden_layers` is the number of recursion steps r
    (the shared layer is applied r times); `embedding_size` may be narrower than `hidden_size`."""

    model_type = MODEL_TYPE

    vocab_size: int = 30522
    embedding_size: int = 128
    hidden_size: int = 768
    num_hidden_layers: int = 6  # recursion steps
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    adapter_reduction: int = DEFAULT_ADAPTER_REDUCTION  # adapter bottleneck = hidden_size // adapter_reduction
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    # RoBERTa-family tables start real positions after the padding index: position of token t = t + offset
    position_offset: int = 0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    classifier_dropout: float | int | None = None
    tie_word_embeddings: bool = True  # the masked-LM decoder is the word-embedding table (as BERT's)

    @property
    def adapter_size(self) -> int:
        return max(1, self.hidden_size // self.adapter_reduction)

    @property
    def recursions(self) -> int:
        return self.num_hidden_layers


# ---------------------------------------------------------------------------------------------
# Modules


class RecursiveEmbeddings(nn.Module):
    """Word + position + token-type tables of width embedding_size, LayerNorm, dropout."""

    def __init__(self, config: RecursiveConfig):
        super().__init__()
        width = config.embedding_size
        self.word_embeddings = nn.Embedding(config.vocab_size, width, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, width)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, width)
        self.LayerNorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.position_offset = config.position_offset

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None):
        embeds = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        length = embeds.shape[1]
        if position_ids is None:
            position_ids = torch.arange(length, device=embeds.device).unsqueeze(0) + self.position_offset
        if token_type_ids is None:
            token_type_ids = torch.zeros(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        x = embeds + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


def eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Explicit softmax attention; returns ([B, T, H, d] output, [B, H, T, T] probabilities).
    `attention_mask` is boolean [B, 1, 1|T, T], True where a key may be attended to."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


class RecursiveSelfAttention(nn.Module):
    """BERT's self-attention (same parameter names), through transformers' attention interface, so
    `set_attn_implementation("eager" | "sdpa")` applies; probabilities are always computed eagerly
    when they are asked for."""

    def __init__(self, config: RecursiveConfig):
        super().__init__()
        self.config = config
        self.head_size = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_size**-0.5
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.is_causal = False

    def forward(self, x, attention_mask=None, output_attentions: bool = False):
        shape = (*x.shape[:-1], -1, self.head_size)
        q, k, v = (proj(x).view(shape).transpose(1, 2) for proj in (self.query, self.key, self.value))
        implementation = self.config._attn_implementation or "eager"
        interface = eager_attention if output_attentions else ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention)
        out, probs = interface(self, q, k, v, attention_mask, scaling=self.scaling,
                               dropout=self.dropout.p if self.training else 0.0, is_causal=False)
        return out.reshape(*x.shape[:-1], -1), probs


class RecursiveSelfOutput(nn.Module):
    def __init__(self, config: RecursiveConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h, x):
        return self.LayerNorm(self.dropout(self.dense(h)) + x)


class RecursiveAttentionBlock(nn.Module):
    """LN(x + Dense(SelfAttention(x))), as BertAttention."""

    def __init__(self, config: RecursiveConfig):
        super().__init__()
        self.self = RecursiveSelfAttention(config)
        self.output = RecursiveSelfOutput(config)

    def forward(self, x, attention_mask=None, output_attentions: bool = False):
        h, probs = self.self(x, attention_mask, output_attentions)
        return self.output(h, x), probs


class RecursiveIntermediate(nn.Module):
    def __init__(self, config: RecursiveConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.intermediate_act_fn(self.dense(x))


class RecursiveOutput(nn.Module):
    def __init__(self, config: RecursiveConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h, x):
        return self.LayerNorm(self.dropout(self.dense(h)) + x)


class RecursiveLayer(nn.Module):
    """The shared transformer layer: BERT's post-LN layer, with the same parameter names."""

    def __init__(self, config: RecursiveConfig):
        super().__init__()
        self.attention = RecursiveAttentionBlock(config)
        self.intermediate = RecursiveIntermediate(config)
        self.output = RecursiveOutput(config)


class ZeroInitLinear(nn.Linear):
    """A Linear that starts at zero (an adapter's up-projection)."""


class BottleneckAdapter(nn.Module):
    """LayerNorm(x + W2 GELU(W1 x)); W1: hidden -> hidden // reduction, W2: back (zero at init)."""

    def __init__(self, config: RecursiveConfig):
        super().__init__()
        self.down = nn.Linear(config.hidden_size, config.adapter_size)
        self.up = ZeroInitLinear(config.adapter_size, config.hidden_size)
        self.act = ACT2FN["gelu"]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(x + self.up(self.act(self.down(x))))


class RecursivePooler(nn.Module):
    """tanh(Dense(h_[CLS])), as BERT's pooler (for sequence classification)."""

    def __init__(self, config: RecursiveConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, h):
        return self.activation(self.dense(h[:, 0]))


class RecursivePreTrainedModel(PreTrainedModel):
    config: RecursiveConfig
    config_class = RecursiveConfig
    base_model_prefix = "recursive"
    _no_split_modules = ["RecursiveEmbeddings", "RecursiveLayer", "BottleneckAdapter"]  # noqa: RUF012
    _supports_sdpa = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, ZeroInitLinear):  # a fresh adapter is LayerNorm(x)
            hf_init.zeros_(module.weight)
            hf_init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class RecursiveModel(RecursivePreTrainedModel):
    """Embeddings (+ projection), one shared layer applied r times, 2 adapters per step."""

    def __init__(self, config: RecursiveConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = RecursiveEmbeddings(config)
        self.embedding_projection = (
            nn.Linear(config.embedding_size, config.hidden_size) if config.embedding_size != config.hidden_size else None
        )
        self.shared_layer = RecursiveLayer(config)
        self.attention_adapters = nn.ModuleList(BottleneckAdapter(config) for _ in range(config.num_hidden_layers))
        self.ffn_adapters = nn.ModuleList(BottleneckAdapter(config) for _ in range(config.num_hidden_layers))
        self.pooler = RecursivePooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        output_attentions = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        output_hidden_states = bool(output_hidden_states if output_hidden_states is not None
                                    else getattr(self.config, "output_hidden_states", False))
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        if self.embedding_projection is not None:
            x = self.embedding_projection(x)
        # boolean [B, 1, 1, T]: True where a key is a real token (None: every key is)
        mask = attention_mask[:, None, None, :].bool() if attention_mask is not None else None
        hidden_states = (x,) if output_hidden_states else None
        attentions = () if output_attentions else None
        layer = self.shared_layer
        for step in range(self.config.num_hidden_layers):
            x = self.attention_adapters[step](x)
            x, probs = layer.attention(x, mask, output_attentions)
            x = self.ffn_adapters[step](x)
            x = layer.output(layer.intermediate(x), x)
            if output_hidden_states:
                hidden_states += (x,)
            if output_attentions:
                attentions += (probs,)
        pooled = self.pooler(x) if self.pooler is not None else None
        out = BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=pooled,
                                         hidden_states=hidden_states, attentions=attentions)
        return out if return_dict is not False else out.to_tuple()


class RecursiveForSequenceClassification(RecursivePreTrainedModel):
    def __init__(self, config: RecursiveConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.recursive = RecursiveModel(config, add_pooling_layer=True)
        drop = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(drop)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        out = self.recursive(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(out.pooler_output))
        return classification_output(logits, labels, self.num_labels, out.hidden_states, out.attentions, return_dict,
                                     token=False)


class RecursiveForTokenClassification(RecursivePreTrainedModel):
    def __init__(self, config: RecursiveConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.recursive = RecursiveModel(config, add_pooling_layer=False)
        drop = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(drop)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        out = self.recursive(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        return classification_output(logits, labels, self.num_labels, out.hidden_states, out.attentions, return_dict,
                                     token=True)


class RecursiveLMHead(nn.Module):
    """The masked-LM head (BERT's, at the embedding width): dense hidden -> embedding_size, GELU,
    LayerNorm, then the word-embedding table (tied) and a bias per piece."""

    def __init__(self, config: RecursiveConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.embedding_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, h):
        return self.decoder(self.LayerNorm(self.act(self.dense(h))))


class RecursiveForMaskedLM(RecursivePreTrainedModel):
    """A recursive encoder with a masked-LM head (general distillation, MiniALBERT's pretraining
    objective); the decoder is the word-embedding table."""

    _tied_weights_keys = {"lm_head.decoder.weight": "recursive.embeddings.word_embeddings.weight",  # noqa: RUF012
                          "lm_head.decoder.bias": "lm_head.bias"}

    def __init__(self, config: RecursiveConfig):
        super().__init__(config)
        self.recursive = RecursiveModel(config, add_pooling_layer=False)
        self.lm_head = RecursiveLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings
        self.lm_head.bias = new_embeddings.bias

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        out = self.recursive(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:  # the masked pieces (-100 elsewhere)
            loss = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))
        output = MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)
        return output if return_dict is not False else output.to_tuple()


AutoConfig.register(MODEL_TYPE, RecursiveConfig, exist_ok=True)
AutoModel.register(RecursiveConfig, RecursiveModel, exist_ok=True)
AutoModelForSequenceClassification.register(RecursiveConfig, RecursiveForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(RecursiveConfig, RecursiveForTokenClassification, exist_ok=True)
AutoModelForMaskedLM.register(RecursiveConfig, RecursiveForMaskedLM, exist_ok=True)


# ---------------------------------------------------------------------------------------------
# Anatomy and counting


def is_recursive(model_or_config) -> bool:
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None) == MODEL_TYPE


def _unique_numel(params) -> int:
    return sum(p.numel() for p in {id(p): p for p in params}.values())


def freeze_all_but_adapters(model) -> list[str]:
    """Adapter tuning (MiniALBERT's trainAdaptersOnly): freeze everything but the adapters and the task
    head (`classifier`); embeddings, projection, shared layer and pooler stay fixed. Returns the
    names left trainable."""
    trainable = []
    for name, p in model.named_parameters():
        keep = "_adapters." in name or name.startswith("classifier.")
        p.requires_grad_(keep)
        if keep:
            trainable.append(name)
    return trainable


# ---------------------------------------------------------------------------------------------
# Building a recursive student from a teacher

# teacher families whose layers can initialise the shared layer (their layer names are BERT's, or mapped)
BERT_LAYOUT = ("bert", "roberta", "xlm-roberta", "camembert")
_DISTILBERT_NAMES = {
    "attention.q_lin.": "attention.self.query.", "attention.k_lin.": "attention.self.key.",
    "attention.v_lin.": "attention.self.value.", "attention.out_lin.": "attention.output.dense.",
    "sa_layer_norm.": "attention.output.LayerNorm.", "ffn.lin1.": "intermediate.dense.",
    "ffn.lin2.": "output.dense.", "output_layer_norm.": "output.LayerNorm.",
}
LAYER_INIT_FAMILIES = BERT_LAYOUT + ("distilbert", MODEL_TYPE)


def _teacher_embedding_width(t_config) -> int:
    return getattr(t_config, "embedding_size", None) or t_config.hidden_size


def _position_offset(t_config) -> int:
    if getattr(t_config, "model_type", "") == MODEL_TYPE:
        return t_config.position_offset
    if any(name in t_config.model_type for name in ("roberta", "camembert")):
        return (t_config.pad_token_id or 0) + 1
    return 0


def parse_init(init) -> tuple[str, int | None]:
    """'mean' -> ('mean', None); 'layer:3' -> ('layer', 3) (1-based); 'random' -> ('random', None)."""
    if isinstance(init, str) and init.startswith("layer:"):
        return "layer", int(init.split(":", 1)[1])
    return init, None


def recursive_config(t_config, spec, *, where: str = "student"):
    """The recursive student's config from its teacher's, with every shape check (before training).
    Returns (config, plan, same_shape): plan = {'init', 'layer', 'embeddings'} with the embedding
    choice resolved (auto -> copy or pca); same_shape: the shared layer has the teacher layers' shape."""
    t_hidden, t_heads = t_config.hidden_size, t_config.num_attention_heads
    t_ffn = getattr(t_config, ffn_attr(t_config))
    t_layers, t_type = t_config.num_hidden_layers, getattr(t_config, "model_type", "")
    hidden = spec.hidden or t_hidden
    width_changes = hidden != t_hidden
    heads = spec.heads or (max(1, t_heads * hidden // t_hidden) if width_changes else t_heads)
    intermediate = spec.intermediate or (4 * hidden if width_changes else t_ffn)
    t_width = _teacher_embedding_width(t_config)
    # default: the teacher's embedding width at the teacher's hidden width (so they copy), else hidden
    embedding_size = spec.embedding_size or (hidden if width_changes else t_width)
    reduction = spec.adapter_reduction or DEFAULT_ADAPTER_REDUCTION
    if hidden % heads:
        raise RecipeError(f"hidden {hidden} is not a multiple of heads {heads}", where=f"{where}.heads")
    if hidden // reduction < 1:
        raise RecipeError(f"adapter_reduction {reduction} leaves no adapter width at hidden {hidden}",
                          where=f"{where}.adapter_reduction", hint=f"use adapter_reduction <= {hidden}")
    same_shape = (hidden, intermediate) == (t_hidden, t_ffn)
    kind, k = parse_init(spec.init)
    if kind not in ("mean", "layer", "random"):
        raise RecipeError(f"init {spec.init!r} is for transformer students", where=f"{where}.init",
                          hint="a recursive student takes init: mean, layer:K (1-based teacher layer) or random")
    if kind != "random":
        if t_type not in LAYER_INIT_FAMILIES:
            raise RecipeError(f"cannot initialise the shared layer from a {t_type!r} teacher's layers",
                              where=f"{where}.init", hint=f"use init: random (layer init supports {', '.join(LAYER_INIT_FAMILIES)})")
        if kind == "layer" and not 1 <= k <= t_layers:
            raise RecipeError(f"init names layer {k} but the teacher has {t_layers}", where=f"{where}.init")
        if not same_shape:
            raise RecipeError(
                f"the shared layer ({hidden} wide, feed-forward {intermediate}) has another shape than the teacher's "
                f"layers ({t_hidden}, {t_ffn}), so they cannot be copied",
                where=f"{where}.init", hint="use init: random with a new hidden/heads/intermediate",
            )
    embeddings = spec.embeddings
    if embeddings == "auto":
        embeddings = "copy" if embedding_size == t_width else "pca"
    if embeddings == "copy" and embedding_size != t_width:
        raise RecipeError(f"embeddings cannot be copied into width {embedding_size} (teacher {t_width})",
                          where=f"{where}.embeddings",
                          hint="use embeddings: pca (the teacher's projected to the new width) or random")
    if embeddings == "pca" and embedding_size > min(t_width, t_config.vocab_size):
        raise RecipeError(f"pca keeps at most the teacher's {t_width} embedding components, not {embedding_size}",
                          where=f"{where}.embedding_size", hint=f"use embedding_size <= {t_width}")
    config = RecursiveConfig(
        vocab_size=t_config.vocab_size, embedding_size=embedding_size, hidden_size=hidden,
        num_hidden_layers=spec.layers, num_attention_heads=heads, intermediate_size=intermediate,
        adapter_reduction=reduction,
        hidden_act=getattr(t_config, "hidden_act", None) or getattr(t_config, "activation", "gelu"),
        hidden_dropout_prob=getattr(t_config, "hidden_dropout_prob", getattr(t_config, "dropout", 0.1)),
        attention_probs_dropout_prob=getattr(t_config, "attention_probs_dropout_prob", getattr(t_config, "attention_dropout", 0.1)),
        max_position_embeddings=t_config.max_position_embeddings,
        type_vocab_size=getattr(t_config, "type_vocab_size", 2) or 2,
        position_offset=_position_offset(t_config),
        initializer_range=getattr(t_config, "initializer_range", 0.02),
        layer_norm_eps=getattr(t_config, "layer_norm_eps", 1e-12),
        pad_token_id=t_config.pad_token_id,
        num_labels=t_config.num_labels,
        **({"id2label": dict(t_config.id2label), "label2id": dict(t_config.label2id)} if t_config.id2label else {}),
    )
    return config, {"init": kind, "layer": k, "embeddings": embeddings}, same_shape


def teacher_layer_states(teacher) -> list[dict[str, torch.Tensor]]:
    """Each teacher layer's tensors under the shared layer's (BERT) names; a recursive teacher's
    layers are its one shared layer, r times."""
    t_type = teacher.config.model_type
    if t_type == MODEL_TYPE:
        return [teacher.base_model.shared_layer.state_dict()] * teacher.config.num_hidden_layers
    _, layers = layer_list(teacher)
    states = [layer.state_dict() for layer in layers]
    if t_type == "distilbert":
        rename = re.compile("^(" + "|".join(re.escape(k) for k in _DISTILBERT_NAMES) + ")")
        states = [{rename.sub(lambda m: _DISTILBERT_NAMES[m.group(1)], k): v for k, v in s.items()} for s in states]
    return states


def build_recursive_student(teacher, spec, *, where: str = "student"):
    """A recursive student (float32) initialised from `teacher` as `spec` says; the teacher is untouched."""
    config, plan, _ = recursive_config(teacher.config, spec, where=where)
    name = type(teacher).__name__
    cls = (RecursiveForMaskedLM if name.endswith("ForMaskedLM") else RecursiveForTokenClassification
           if name.endswith("ForTokenClassification") else RecursiveForSequenceClassification)
    student = cls(config).float()
    initialise_from_teacher(student, teacher, plan, where=where)
    freeze_embeddings(student, spec.freeze_embeddings)
    if spec.train_only == "adapters":
        freeze_all_but_adapters(student)
    return student


@torch.no_grad()
def initialise_from_teacher(student, teacher, plan: dict, *, where: str = "student") -> None:
    base = student.base_model
    # the shared layer: one teacher layer, the mean of all of them, or random
    if plan["init"] != "random":
        states = teacher_layer_states(teacher)
        if plan["init"] == "layer" or is_recursive(teacher):  # a recursive teacher's layers are all one
            source = states[0 if is_recursive(teacher) else plan["layer"] - 1]
        else:
            source = {k: torch.stack([s[k].float() for s in states]).mean(0) for k in states[0]}
        for key, value in base.shared_layer.state_dict().items():
            if key not in source or source[key].shape != value.shape:
                raise RecipeError(f"the teacher's layers have no tensor {key!r} of shape {tuple(value.shape)}",
                                  where=f"{where}.init", hint="use init: random")
            value.copy_(source[key])
    _initialise_embeddings(student, teacher, plan["embeddings"])
    t_state = teacher.state_dict()
    s_state = student.state_dict()
    if is_recursive(teacher):  # a recursive teacher of the same shape passes on its adapters and projection
        t_prefix = teacher.base_model_prefix
        for key, value in s_state.items():
            if "_adapters." in key or "embedding_projection." in key:
                source = t_state.get(f"{t_prefix}.{key.split('.', 1)[1]}")
                if source is not None and source.shape == value.shape:
                    value.copy_(source)
    # the head and the pooler, when they have the teacher's shapes (as for transformer students)
    pooler = {k.rsplit(".pooler.", 1)[1]: v for k, v in t_state.items() if ".pooler." in k}
    lm_head = _masked_lm_head(t_state)
    for key, value in s_state.items():
        if key.startswith("classifier."):
            source = t_state.get(key)
        elif key.startswith("lm_head.") and not key.startswith("lm_head.decoder."):  # the decoder is the embeddings
            source = lm_head.get(key)
        elif ".pooler." in key:
            source = pooler.get(key.rsplit(".pooler.", 1)[1])
        else:
            continue
        if source is not None and source.shape == value.shape:
            value.copy_(source)


# A teacher's masked-LM head under the recursive head's names: BERT/mBERT, RoBERTa/XLM-R, DistilBERT
# and recursive models (whose names are these already)
_LM_HEAD_NAMES = {
    "cls.predictions.transform.dense.": "lm_head.dense.", "cls.predictions.transform.LayerNorm.": "lm_head.LayerNorm.",
    "cls.predictions.bias": "lm_head.bias", "lm_head.layer_norm.": "lm_head.LayerNorm.",
    "vocab_transform.": "lm_head.dense.", "vocab_layer_norm.": "lm_head.LayerNorm.", "vocab_projector.bias": "lm_head.bias",
}


def _masked_lm_head(t_state: dict) -> dict[str, torch.Tensor]:
    head = {k: v for k, v in t_state.items() if k.startswith("lm_head.") and not k.startswith("lm_head.decoder.")}
    for key, value in t_state.items():
        for prefix, target in _LM_HEAD_NAMES.items():
            if key.startswith(prefix):
                head[target + key[len(prefix):]] = value
    return head


def _initialise_embeddings(student, teacher, how: str) -> None:
    if how == "random":
        return
    s_emb = student.base_model.embeddings
    targets = {"word": s_emb.word_embeddings.weight, "position": s_emb.position_embeddings.weight,
               "token_type": s_emb.token_type_embeddings.weight}
    t_word = teacher.get_input_embeddings().weight
    t_tables, t_norm = {}, {}
    for name, p in embedding_parameters(teacher).items():
        kind = _embedding_kind(name, p, t_word)
        if kind is not None:
            t_tables[kind] = p
        elif p.dim() == 1 and re.search(r"(LayerNorm|norm)\.(weight|bias)$", name, re.IGNORECASE):
            t_norm[name.rsplit(".", 1)[1]] = p
    if how == "pca":  # XtremeDistil: the teacher's tables projected onto the word embeddings' principal axes
        mean, axes = pca_axes(t_word, s_emb.word_embeddings.embedding_dim)
        for kind, table in t_tables.items():
            projected = ((table.float() - mean) if kind == "word" else table.float()) @ axes
            if projected.shape == targets[kind].shape:
                targets[kind].copy_(projected.to(targets[kind].dtype))
        return
    for kind, table in t_tables.items():  # copy
        if table.shape == targets[kind].shape:
            targets[kind].copy_(table)
    for suffix, p in t_norm.items():
        target = getattr(s_emb.LayerNorm, suffix)
        if p.shape == target.shape:
            target.copy_(p)


class RecursiveFamily(StudentFamily):
    """MiniALBERT: one shared layer applied `layers` times, with bottleneck adapters per step."""

    kind = "recursive"
    spec_rules = "recursive"
    model_type = MODEL_TYPE
    label = "recursive"
    teaches = ("recursive", "bilstm")  # a transformer's layers cannot come from one shared layer

    def config(self, t_config, spec, *, where: str = "student"):
        return recursive_config(t_config, spec, where=where)

    def build(self, teacher, spec, *, where: str = "student"):
        return build_recursive_student(teacher, spec, where=where)

    def direct_spec(self, final, final_config, teacher_config):
        # the same widths and embedding width; embeddings copied or projected as they fit
        embeddings = "random" if final.embeddings == "random" else "auto"
        spec = final.model_copy(update={
            "hidden": final_config.hidden_size, "heads": final_config.num_attention_heads,
            "intermediate": final_config.intermediate_size, "embedding_size": final_config.embedding_size,
            "embeddings": embeddings})
        if final_config.hidden_size != teacher_config.hidden_size:  # teacher layers cannot be copied
            spec = spec.model_copy(update={"init": "random"})
        return spec

    def refreeze(self, student, spec) -> None:
        if spec.train_only == "adapters":
            freeze_all_but_adapters(student)
        else:
            freeze_embeddings(student, spec.freeze_embeddings)

    def layers_label(self, config) -> str:
        return f"{config.num_hidden_layers} (1 shared)"

    def applied_layers(self, model) -> list[nn.Module]:
        return [model.base_model.shared_layer] * model.config.num_hidden_layers

    def extra_counts(self, model, total: int) -> dict[str, int]:
        # the shared layer counted once per recursion step: what the forward pass applies
        base = model.base_model
        shared = _unique_numel(base.shared_layer.parameters())
        adapters = _unique_numel(list(base.attention_adapters.parameters()) + list(base.ffn_adapters.parameters()))
        return {"params_unrolled": total + (model.config.num_hidden_layers - 1) * shared, "params_adapters": adapters}


register(RecursiveFamily())
