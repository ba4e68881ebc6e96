"""The task-head output shared by the package's own model families (recursive, BiLSTM): the loss
transformers' own heads compute, in transformers' output types."""

from __future__ import annotations

from torch import nn
from transformers.modeling_outputs import (
    SequenceClassifierOutput,
    TokenClassifierOutput,
)


def classification_output(logits, labels, num_labels: int, hidden_states, attentions, return_dict, *, token: bool):
    """Cross-entropy over labelled positions (-100 ignored), or MSE for a 1-label sequence head."""
    loss = None
    if labels is not None:
        if not token and num_labels == 1:
            loss = nn.functional.mse_loss(logits.squeeze(-1), labels.float())
        else:
            loss = nn.functional.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    output = (TokenClassifierOutput if token else SequenceClassifierOutput)(
        loss=loss, logits=logits, hidden_states=hidden_states, attentions=attentions)
    return output if return_dict is not False else output.to_tuple()
