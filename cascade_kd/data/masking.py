"""Masked-LM inputs for general (task-agnostic) distillation and for `cascade-kd pretrain`.

BERT's recipe: choose a share `probability` of a sequence's real tokens (never [CLS], [SEP] or
padding); of those, 80% become [MASK], 10% a random piece, 10% stay as they were. The label of a
chosen position is its original id; every other label is IGNORE, so losses and the masked-token
accuracy count the chosen positions only.

Randomness comes from a private generator seeded by (seed, epoch, example index), never a global
RNG: the masks are the same on any number of processes, after a resume, and in every run with the
same seed. `masking: static` draws once (epoch 0), so the encoded inputs can be cached with the
teacher's outputs; `dynamic` draws again every epoch, as RoBERTa does.
"""

from __future__ import annotations

import random

import torch

from cascade_kd.data.encode import IGNORE, Encoded


class Masker:
    """Masks token ids for masked-LM training; see the module docstring for the scheme.

    special_ids: ids that are never chosen (the tokenizer's special tokens);
    replace_ids: the ids a chosen position may be replaced by at random (every non-special id).
    """

    def __init__(self, *, mask_id: int, vocab_size: int, special_ids, probability: float = 0.15, seed: int = 0):
        if mask_id is None:
            raise ValueError("the tokenizer has no mask token: masked-LM inputs need one")
        if not 0 < probability < 1:
            raise ValueError(f"mask probability must be between 0 and 1, got {probability}")
        self.mask_id, self.probability, self.seed = mask_id, probability, seed
        self.special = frozenset(special_ids)
        self.vocab_size = vocab_size

    def _random_piece(self, rng: random.Random) -> int:
        while True:  # specials are a handful of ids among thousands: this loops about once
            piece = rng.randrange(self.vocab_size)
            if piece not in self.special:
                return piece

    def mask(self, ids: list[int], key) -> tuple[list[int], list[int]]:
        """(masked ids, labels) for one sequence; `key` (e.g. "train:en:17:0") seeds its draws.

        At least one position is chosen where the sequence has any real token, so no sequence is
        without a label."""
        rng = random.Random(f"mlm:{self.seed}:{key}")  # str seeds hash with sha512: stable across processes
        candidates = [i for i, t in enumerate(ids) if t not in self.special]
        labels = [IGNORE] * len(ids)
        if not candidates:
            return list(ids), labels
        chosen = rng.sample(candidates, max(1, round(self.probability * len(candidates))))
        out = list(ids)
        for i in chosen:
            labels[i] = ids[i]
            draw = rng.random()
            if draw < 0.8:
                out[i] = self.mask_id
            elif draw < 0.9:
                out[i] = self._random_piece(rng)
        return out, labels

    def mask_encoded(self, items: list[Encoded], prefix: str) -> list[Encoded]:
        """Masked copies of encoded examples (static masking: dev, test, or train with `masking: static`)."""
        out = []
        for i, item in enumerate(items):
            ids, labels = self.mask(item.input_ids, f"{prefix}:{i}")
            out.append(Encoded(ids, item.token_type_ids, labels))
        return out

    def mask_batch(self, batch: dict, originals: list[Encoded], indices: list[int], epoch: int, slots: list,
                   stream: int = 0) -> dict:
        """Dynamic masking: re-mask a collated batch of unmasked examples for this epoch. `slots` name
        each row's place in the epoch (batch, position in the global batch): an example drawn twice
        in one epoch (language sampling) gets two different masks, on any number of processes.
        `stream` (a stage's seed) gives each stage of a cascade its own masks."""
        input_ids, labels = batch["input_ids"].clone(), torch.full_like(batch["input_ids"], IGNORE)
        for row, (index, slot) in enumerate(zip(indices, slots)):
            ids, labs = self.mask(originals[index].input_ids, f"train:{stream}:{index}:{epoch}:{slot}")
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(labs)] = torch.tensor(labs)
        return {**batch, "input_ids": input_ids, "labels": labels}


def mask_split(masker: Masker, split: str, per_language: dict) -> dict:
    """{lang: (examples, encoded)} of one split with every sequence masked once, by keys of the
    split, language and position: the same masks wherever the run's data is scored again."""
    return {lang: (examples, masker.mask_encoded(items, f"{split}:{lang}")) for lang, (examples, items) in per_language.items()}


def masker_for(tokenizer, *, probability: float, seed: int) -> Masker:
    """A Masker for `tokenizer`'s mask token and special tokens."""
    return Masker(mask_id=tokenizer.mask_token_id, vocab_size=len(tokenizer), special_ids=tokenizer.all_special_ids,
                  probability=probability, seed=seed)
