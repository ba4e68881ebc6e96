"""Train only the word-embedding rows that the training data uses.

mBERT's vocabulary has 119,547 pieces; a stage's training data uses a few thousand to a few tens of
thousands of them. Dense training pays for every row at every step: a 92M-value gradient, AdamW's
two moment tensors and its update over the whole matrix, for rows whose gradient is always zero.
`restrict_to_seen_rows` swaps the student's word embedding for `SeenRowsEmbedding`, whose only
trainable tensor holds the rows of pieces that occur in the training data; every other piece reads
its row, frozen, from the original table. `merge_seen_rows` writes the trained rows back into a
plain `nn.Embedding`, so what is saved is an ordinary transformers checkpoint.

Equivalence: a row that never occurs gets a zero gradient in dense training, so AdamW's moments
for it stay zero and its update is zero; only decoupled weight decay would still shrink it. With
`weight_decay: 0` the two give the same weights (tests/students/test_embedding_rows.py checks this); with
decay, unused rows keep the teacher's values exactly instead of decaying, which is what pieces of
languages absent from the training data need. `train.embedding_rows: all` trains every row.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SeenRowsEmbedding(nn.Module):
    """An embedding table with trainable rows for `rows` (sorted piece ids) and frozen rows for the rest.

    forward(input_ids [*]) -> [*, D]: the trainable row for ids in `rows`, the frozen one otherwise.
    Its state dict is the plain table's (one `weight`, trained rows written in), so checkpoints,
    best-epoch copies and evaluation callbacks see an ordinary embedding.
    """

    def __init__(self, base: nn.Embedding, rows: torch.Tensor):
        super().__init__()
        self._original = [base]  # a list: not a submodule, so its weight is not a second state entry
        self.padding_idx = base.padding_idx
        # a frozen parameter, not a buffer: a checkpoint of the training state writes it once (training/state.py)
        self.frozen = nn.Parameter(base.weight.detach(), requires_grad=False)
        self.register_buffer("rows", rows.to(torch.long), persistent=False)
        position = torch.full((base.num_embeddings,), -1, dtype=torch.long, device=rows.device)
        position[self.rows] = torch.arange(len(rows), device=rows.device)
        self.register_buffer("position", position, persistent=False)  # id -> index in `trained`, -1 if frozen
        self.trained = nn.Parameter(base.weight.detach()[self.rows].clone())

    @property
    def weight(self) -> torch.Tensor:  # what code reading `get_input_embeddings().weight` expects
        return self.frozen

    @property
    def num_embeddings(self) -> int:
        return self.frozen.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.frozen.shape[1]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        frozen = F.embedding(input_ids, self.frozen, self.padding_idx)
        index = self.position[input_ids]
        trained = F.embedding(index.clamp(min=0), self.trained)
        return torch.where((index >= 0).unsqueeze(-1), trained.to(frozen.dtype), frozen)

    @torch.no_grad()
    def full_table(self) -> torch.Tensor:
        table = self.frozen.clone()
        table[self.rows] = self.trained.to(table.dtype)
        return table

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.full_table()

    @torch.no_grad()
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        table = state_dict[key]
        if table.shape != self.frozen.shape:
            error_msgs.append(f"size mismatch for {key}: {tuple(table.shape)} in the checkpoint, {tuple(self.frozen.shape)} here")
            return
        self.frozen.copy_(table)
        self.trained.copy_(table[self.rows.to(table.device)])

    @torch.no_grad()
    def merged(self) -> nn.Embedding:
        """The original embedding module, holding the trained rows, on this module's device."""
        embedding = self._original[0]
        embedding.weight.data = self.full_table()
        return embedding.requires_grad_(True)


def restrict_to_seen_rows(model, input_ids: list[list[int]]) -> tuple[int, int] | str | None:
    """Swap `model`'s trainable word embedding for a SeenRowsEmbedding over the ids in `input_ids`.

    Returns (rows trained, rows in the table); None when the word embeddings are frozen (no row is
    trained: nothing to restrict); else why every row is trained (a string)."""
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return "the model has no input embedding to restrict"
    if type(embedding) is not nn.Embedding:  # a subclass may change what a row means
        return f"its input embedding is a {type(embedding).__name__}, not a plain nn.Embedding"
    if not embedding.weight.requires_grad:
        return None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and getattr(output, "weight", None) is embedding.weight:
        return "the word embeddings are tied to the output layer"
    seen = sorted({i for ids in input_ids for i in ids})
    rows = torch.tensor(seen, dtype=torch.long, device=embedding.weight.device)
    model.set_input_embeddings(SeenRowsEmbedding(embedding, rows))
    return len(seen), embedding.num_embeddings


def merge_seen_rows(model) -> bool:
    """Undo restrict_to_seen_rows, keeping the trained rows; False if the model was not restricted."""
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, SeenRowsEmbedding):
        return False
    model.set_input_embeddings(embedding.merged())
    return True
