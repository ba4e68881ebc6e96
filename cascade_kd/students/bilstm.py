"""BiLSTM students (XtremeDistil, Mukherjee & Hassan Awadallah, ACL 2020): word-piece embeddings, a
bidirectional LSTM, a projection to the teacher's hidden width, and a task head.

A BiLSTM student is a Hugging Face `PreTrainedModel` family of its own (model_type
`cascade_kd_bilstm`), registered with the Auto classes when `cascade_kd.students` is imported, so a
saved student reloads with `AutoModelForTokenClassification.from_pretrained(path)` (or
`...ForSequenceClassification`) once `import cascade_kd.students` has run (`import cascade_kd`
alone loads nothing: its names load on first use).

Forward pass (`BiLSTMModel`), as XtremeDistil-v2's `construct_bilstm_student_model`:

    e   = Dropout(E(ids))                E: word-piece table of width `embedding_size` (the teacher's
                                         vocabulary; no position or token-type tables)
    h   = BiLSTM(e)                      `lstm_layers` layers, `lstm_hidden_size` units per direction,
                                         dropout between layers; outputs at padding positions are 0
    x   = GELU(P(Dropout(h)))            P: Linear(2 * lstm_hidden_size -> hidden_size), hidden_size =
                                         the teacher's hidden width (XtremeDistil's "dense" layer)
    logits = C(Dropout(x))               token tasks: every position;
                                         sequence tasks: C(Dropout(mean of x over the real tokens))

Features (what `cascade_kd.students.features` and the layer maps see): a BiLSTM student is a ONE-layer model,
`hidden_states = (e, x)`: entry 0 is the embedding output (width `embedding_size`), entry 1 ("last")
the BiLSTM output projected to `hidden_size`. Since `hidden_size` is the teacher's width, a hidden-
state loss against any teacher layer needs no extra projection in the engine; XtremeDistil's stage 1
is `hidden_mse: {layer_map: [[6, last]]}` (teacher layer 6 against the projected BiLSTM states).
A BiLSTM has no attention maps: `output_attentions=True` is an error, and attention losses with a
BiLSTM student or teacher are refused when the recipe is checked (the family says `has_attention =
False`), as is a hidden-state loss on a BiLSTM's layer 0 when its embedding width differs from its
hidden width (`hidden_width`).

Padding: the LSTM runs on the padded batch (no packing, so the model traces to ONNX with dynamic
batch and sequence axes). Inputs are right-padded (the attention mask is 1 for a prefix of each
row), as cascade-kd's batches and BERT-family tokenizers produce. The forward direction reads the
real tokens before any padding, so padding cannot reach them. A plain bidirectional LSTM would start
its backward direction at the LAST PADDED position and carry the padding into every real token's
state, making a sentence's outputs depend on what it was batched with; here the backward direction
is a forward LSTM run over each row's real tokens reversed in place (pads stay behind them), and its
outputs are put back in order. A sentence's outputs are therefore exactly those it has alone, in any
batch (tested), and the ONNX export agrees with PyTorch on padded batches.

Sequence classification pools by the mean over real tokens (not the first token: its backward state
has read the whole sentence but its forward state only itself, and a mean is what works for recurrent
encoders without a [CLS] objective).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutput,
)

from cascade_kd.errors import RecipeError
from cascade_kd.students.anatomy import freeze_embeddings, pca_axes
from cascade_kd.students.heads import classification_output
from cascade_kd.students.registry import StudentFamily, register

MODEL_TYPE = "cascade_kd_bilstm"
DEFAULT_EMBEDDING_SIZE = 300  # XtremeDistil's d_e (capped at the teacher's embedding width)
DEFAULT_DROPOUT = 0.2  # XtremeDistil-v2 (v1 used 0.4)

# ---------------------------------------------------------------------------------------------
# Config


class BiLSTMConfig(PreTrainedConfig):
    """Word-piece embeddings of width `embedding_size`, a BiLSTM of `lstm_layers` layers with
    `lstm_hidden_size` units PER DIRECTION, and a projection to `hidden_size` (the teacher's width).
    `num_hidden_layers` is 1 (what layer maps see); there are no attention heads."""

    model_type = MODEL_TYPE

    vocab_size: int = 30522
    embedding_size: int = DEFAULT_EMBEDDING_SIZE
    lstm_hidden_size: int = 256  # per direction
    lstm_layers: int = 1
    hidden_size: int = 768  # the projection's width: the teacher's hidden width
    num_hidden_layers: int = 1  # hidden_states = (embeddings, projected BiLSTM output)
    num_attention_heads: int | None = None  # no attention
    projection_act: str = "gelu"
    hidden_dropout_prob: float | int = DEFAULT_DROPOUT
    classifier_dropout: float | int | None = None
    initializer_range: float = 0.02
    pad_token_id: int | None = 0


# ---------------------------------------------------------------------------------------------
# Modules


class BiLSTMEmbeddings(nn.Module):
    """The word-piece table (no positions: the LSTM reads the order) and dropout."""

    def __init__(self, config: BiLSTMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, inputs_embeds=None):
        return self.dropout(self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds)


def reverse_real_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, T, D] with each row's real tokens reversed in place (`index` from `reversal_index`);
    applying it twice gives x back."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def reversal_index(mask: torch.Tensor) -> torch.Tensor:
    """[B, T] positions: row b's real positions t < n_b map to n_b - 1 - t, padding to itself
    (right padding). Built from tensor operations only, so tracing keeps both axes dynamic."""
    mask = mask.long()
    positions = torch.cumsum(torch.ones_like(mask), dim=1) - 1
    lengths = mask.sum(dim=1, keepdim=True)
    reversed_positions = lengths - 1 - positions
    return torch.where(reversed_positions >= 0, reversed_positions, positions)


class BiLSTMLayer(nn.Module):
    """One bidirectional layer: two unidirectional nn.LSTMs. The backward one runs over each row's
    real tokens reversed (see the module docstring), so padding never reaches a real token's state."""

    def __init__(self, input_size: int, width: int):
        super().__init__()
        self.forward_lstm = nn.LSTM(input_size, width, batch_first=True)
        self.backward_lstm = nn.LSTM(input_size, width, batch_first=True)

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ahead, _ = self.forward_lstm(x)
        behind, _ = self.backward_lstm(reverse_real_tokens(x, index))
        return torch.cat([ahead, reverse_real_tokens(behind, index)], dim=-1)


class BiLSTMEncoder(nn.Module):
    """`lstm_layers` bidirectional layers (`encoder.layers.i`, so gradual unfreezing sees them as
    numbered layers), dropout between them. Outputs [B, T, 2 * lstm_hidden_size], 0 at padding."""

    def __init__(self, config: BiLSTMConfig):
        super().__init__()
        width = config.lstm_hidden_size
        sizes = [config.embedding_size] + [2 * width] * (config.lstm_layers - 1)
        self.layers = nn.ModuleList(BiLSTMLayer(size, width) for size in sizes)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        index = reversal_index(mask)
        keep = mask.unsqueeze(-1).to(x.dtype)
        for i, layer in enumerate(self.layers):
            if i:
                x = self.dropout(x)
            x = layer(x, index) * keep
        return x


class BiLSTMPreTrainedModel(PreTrainedModel):
    config: BiLSTMConfig
    config_class = BiLSTMConfig
    base_model_prefix = "bilstm"
    _no_split_modules = ["BiLSTMLayer"]  # noqa: RUF012

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        """A BiLSTM has no attention: nothing to set (cascade-kd switches eager/sdpa on every model)."""


class BiLSTMModel(BiLSTMPreTrainedModel):
    """Embeddings, BiLSTM, GELU projection to the teacher's width; hidden_states = (embeddings, output)."""

    def __init__(self, config: BiLSTMConfig):
        super().__init__(config)
        self.embeddings = BiLSTMEmbeddings(config)
        self.encoder = BiLSTMEncoder(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.projection = nn.Linear(2 * config.lstm_hidden_size, config.hidden_size)
        self.activation = ACT2FN[config.projection_act]
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        """`token_type_ids` and `position_ids` are accepted (in kwargs) and ignored: a BiLSTM has no
        such tables. Inputs must be right-padded."""
        if output_attentions:
            raise ValueError("a BiLSTM student has no attention maps (attention losses do not apply to it)")
        output_hidden_states = bool(output_hidden_states if output_hidden_states is not None
                                    else getattr(self.config, "output_hidden_states", False))
        e = self.embeddings(input_ids, inputs_embeds)
        if attention_mask is None:
            attention_mask = torch.ones(e.shape[:2], dtype=torch.long, device=e.device)
        h = self.encoder(e, attention_mask)
        x = self.activation(self.projection(self.dropout(h)))
        out = BaseModelOutput(last_hidden_state=x, hidden_states=(e, x) if output_hidden_states else None, attentions=None)
        return out if return_dict is not False else out.to_tuple()


def _head_dropout(config: BiLSTMConfig) -> float:
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


class BiLSTMForTokenClassification(BiLSTMPreTrainedModel):
    def __init__(self, config: BiLSTMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bilstm = BiLSTMModel(config)
        self.dropout = nn.Dropout(_head_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        out = self.bilstm(input_ids, attention_mask, inputs_embeds, output_attentions=output_attentions,
                          output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        return classification_output(logits, labels, self.num_labels, out.hidden_states, None, return_dict,
                                     token=True)


class BiLSTMForSequenceClassification(BiLSTMPreTrainedModel):
    """Pools by the mean of the projected states over the real tokens (see the module docstring)."""

    def __init__(self, config: BiLSTMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bilstm = BiLSTMModel(config)
        self.dropout = nn.Dropout(_head_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        out = self.bilstm(input_ids, attention_mask, inputs_embeds, output_attentions=output_attentions,
                          output_hidden_states=output_hidden_states, return_dict=True)
        x = out.last_hidden_state
        if attention_mask is None:
            pooled = x.mean(dim=1)
        else:
            keep = attention_mask.unsqueeze(-1).to(x.dtype)
            pooled = (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        return classification_output(logits, labels, self.num_labels, out.hidden_states, None, return_dict,
                                     token=False)


AutoConfig.register(MODEL_TYPE, BiLSTMConfig, exist_ok=True)
AutoModel.register(BiLSTMConfig, BiLSTMModel, exist_ok=True)
AutoModelForSequenceClassification.register(BiLSTMConfig, BiLSTMForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(BiLSTMConfig, BiLSTMForTokenClassification, exist_ok=True)


def is_bilstm(model_or_config) -> bool:
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None) == MODEL_TYPE


# ---------------------------------------------------------------------------------------------
# Recipe checks and building a BiLSTM student from a teacher


def _embedding_width(t_config) -> int:
    return getattr(t_config, "embedding_size", None) or t_config.hidden_size


def bilstm_config(t_config, spec, *, where: str = "student"):
    """The BiLSTM student's config from its teacher's, with every check (before training).
    Returns (config, plan, False): plan = {'embeddings': copy | pca | random} with auto resolved
    (copy when the widths match, else pca)."""
    t_width = _embedding_width(t_config)
    hidden = spec.projection_size or t_config.hidden_size
    embedding_size = spec.embedding_size or min(DEFAULT_EMBEDDING_SIZE, t_width)
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
    config = BiLSTMConfig(
        vocab_size=t_config.vocab_size, embedding_size=embedding_size,
        lstm_hidden_size=spec.hidden or max(1, hidden // 2), lstm_layers=spec.lstm_layers or 1,
        hidden_size=hidden, hidden_dropout_prob=DEFAULT_DROPOUT,
        initializer_range=getattr(t_config, "initializer_range", 0.02),
        pad_token_id=t_config.pad_token_id, num_labels=t_config.num_labels,
        **({"id2label": dict(t_config.id2label), "label2id": dict(t_config.label2id)} if t_config.id2label else {}),
    )
    return config, {"embeddings": embeddings}, False


def build_bilstm_student(teacher, spec, *, where: str = "student"):
    """A BiLSTM student (float32) initialised from `teacher` as `spec` says; the teacher is untouched."""
    config, plan, _ = bilstm_config(teacher.config, spec, where=where)
    token = type(teacher).__name__.endswith("ForTokenClassification")
    student = (BiLSTMForTokenClassification if token else BiLSTMForSequenceClassification)(config).float()
    initialise_from_teacher(student, teacher, plan["embeddings"])
    freeze_embeddings(student, spec.freeze_embeddings)
    return student


@torch.no_grad()
def initialise_from_teacher(student, teacher, embeddings: str) -> None:
    """Word embeddings: the teacher's (copy), their projection onto the top principal axes (pca,
    XtremeDistil's SVD/PCA-compressed mBERT embeddings; the models.py PCA) or random. The head (and,
    from a BiLSTM teacher, every tensor) starts from the teacher's where names and shapes match."""
    word = student.get_input_embeddings().weight
    t_word = teacher.get_input_embeddings().weight
    if embeddings == "copy":
        word.copy_(t_word)
    elif embeddings == "pca":
        mean, axes = pca_axes(t_word, word.shape[1])
        word.copy_(((t_word.float() - mean) @ axes).to(word.dtype))
    t_state = teacher.state_dict()
    for key, value in student.state_dict().items():
        if key.startswith("classifier.") or (is_bilstm(teacher) and "word_embeddings" not in key):
            source = t_state.get(key)
            if source is not None and source.shape == value.shape:
                value.copy_(source)


class BiLSTMFamily(StudentFamily):
    """XtremeDistil's BiLSTM student: embeddings (copied, PCA-projected or random), BiLSTM layers and a
    projection to `projection_size`; one layer to layer maps (hidden state 1 is its projected output)."""

    kind = "bilstm"
    spec_rules = "bilstm"
    model_type = MODEL_TYPE
    label = "BiLSTM"
    masked_lm = False
    teaches = ("bilstm",)
    has_attention = False

    def config(self, t_config, spec, *, where: str = "student"):
        return bilstm_config(t_config, spec, where=where)

    def build(self, teacher, spec, *, where: str = "student"):
        return build_bilstm_student(teacher, spec, where=where)

    def direct_spec(self, final, final_config, teacher_config):
        # the same LSTM, embedding and projection widths; embeddings as they fit
        return final.model_copy(update={
            "hidden": final_config.lstm_hidden_size, "embedding_size": final_config.embedding_size,
            "projection_size": final_config.hidden_size,
            "embeddings": "random" if final.embeddings == "random" else "auto"})

    def hidden_width(self, config, layer: int) -> int:
        return config.embedding_size if layer == 0 else config.hidden_size  # layer 0: the word embeddings

    def shape(self, config) -> str:
        return f"BiLSTM x {config.hidden_size}"

    def layers_label(self, config) -> str:
        return "BiLSTM"  # one layer to layer maps; hidden is its projection width

    def applied_layers(self, model) -> list[nn.Module]:
        raise ValueError("a BiLSTM has no self-attention, so no query/key/value states")


register(BiLSTMFamily())
