"""Tokenise examples, align word labels to sub-words, and batch by length with dynamic padding.

Short NER sentences are never padded to max_length: batches hold examples of similar length and
are padded to their own longest member.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from cascade_kd.data.readers import Example

IGNORE = -100  # label id that no loss and no metric counts
# the first sub-word of a word with no gold tag (unlabelled transfer text): a position where the
# teacher's soft labels count ("labelled" positions of the logit losses), never ce or a metric
UNLABELLED = -1


@dataclass
class Encoded:
    """One tokenised example. `word_ids` maps each sub-word to its word (None for specials)."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    label: int | list[int]  # sequence label, or per-sub-word label ids (IGNORE where not counted)
    word_ids: list[int | None] | None = None
    num_words: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(
    examples: list[Example],
    tokenizer,
    *,
    task: str,
    label2id: dict[str, int],
    max_length: int,
    label_all_subwords: bool = False,
    chunk: int = 1024,
) -> list[Encoded]:
    """Tokenise in chunks (the fast tokenizer is much faster on lists than one by one)."""
    out: list[Encoded] = []
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        if task == "token":
            enc = tokenizer([ex.tokens for ex in part], is_split_into_words=True, truncation=True, max_length=max_length)
        elif task == "pair":
            enc = tokenizer([ex.text for ex in part], [ex.text_pair for ex in part], truncation=True, max_length=max_length)
        else:
            enc = tokenizer([ex.text for ex in part], truncation=True, max_length=max_length)
        types = enc.get("token_type_ids")
        for i, ex in enumerate(part):
            ids = enc["input_ids"][i]
            tt = types[i] if types is not None else None
            if task == "token":
                word_ids = enc.word_ids(i)
                labels, previous = [], None
                for w in word_ids:
                    if w is None:
                        labels.append(IGNORE)
                    elif ex.tags is None:  # unlabelled (transfer) text
                        labels.append(UNLABELLED if w != previous or label_all_subwords else IGNORE)
                    elif w != previous:
                        labels.append(label2id[ex.tags[w]])
                    else:  # a continuation sub-word
                        labels.append(_continuation_label(ex.tags[w], label2id) if label_all_subwords else IGNORE)
                    previous = w
                out.append(Encoded(ids, tt, labels, word_ids=word_ids, num_words=len(ex.tokens)))
            else:
                out.append(Encoded(ids, tt, IGNORE if ex.label is None else label2id[ex.label]))
    return out


def _continuation_label(tag: str, label2id: dict[str, int]) -> int:
    """With all sub-words labelled, a B- word continues as I- (so entities stay well-formed)."""
    if tag.startswith("B-") and ("I-" + tag[2:]) in label2id:
        return label2id["I-" + tag[2:]]
    return label2id[tag]


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest member."""
    width = max(len(it) for it in items)
    n = len(items)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if items[0].token_type_ids is not None:
        batch["token_type_ids"] = torch.zeros((n, width), dtype=torch.long)
    token_task = isinstance(items[0].label, list)
    labels = torch.full((n, width), IGNORE, dtype=torch.long) if token_task else torch.empty(n, dtype=torch.long)
    for i, it in enumerate(items):
        k = len(it)
        input_ids[i, :k] = torch.tensor(it.input_ids)
        attention[i, :k] = 1
        if it.token_type_ids is not None:
            batch["token_type_ids"][i, :k] = torch.tensor(it.token_type_ids)
        if token_task:
            labels[i, :k] = torch.tensor(it.label)
        else:
            labels[i] = it.label
    batch["labels"] = labels
    return batch


def bucketed_batches(lengths: list[int], batch_size: int, *, seed: int, epoch: int, pool: int = 50,
                     indices: list[int] | None = None) -> list[list[int]]:
    """Training batches of similar length, in a random order that depends only on (seed, epoch).
    `indices` (default: every example once) is the epoch's draw, e.g. from language sampling.

    Indices are shuffled, cut into pools of `pool` batches, sorted by length inside each pool and
    cut into batches; the batches are then shuffled. Randomness comes from a private generator, so
    the order is reproducible and independent of any other RNG use (a resumed run sees the same).
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths))) if indices is None else list(indices)
    rng.shuffle(order)
    batches = []
    step = batch_size * pool
    for start in range(0, len(order), step):
        chunk = sorted(order[start : start + step], key=lambda i: lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches sorted by length (least padding); callers restore the order by index."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[j : j + batch_size] for j in range(0, len(order), batch_size)]
