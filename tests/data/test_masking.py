"""Masked-LM inputs (cascade_kd/data/masking.py)."""

from __future__ import annotations

import torch

from cascade_kd.data.encode import IGNORE, Encoded, collate
from cascade_kd.data.masking import Masker

CLS, SEP, PAD, MASK = 1, 2, 0, 3


def _masker(probability=0.15, seed=0):
    return Masker(mask_id=MASK, vocab_size=1000, special_ids=[PAD, CLS, SEP, MASK], probability=probability, seed=seed)


def test_only_real_tokens_are_chosen_and_labels_hold_the_originals():
    ids = [CLS] + list(range(100, 140)) + [SEP]
    masked, labels = _masker().mask(ids, "k")
    chosen = [i for i, label in enumerate(labels) if label != IGNORE]
    assert len(chosen) == round(0.15 * 40) == 6
    assert 0 not in chosen and len(ids) - 1 not in chosen  # never [CLS] or [SEP]
    assert all(labels[i] == ids[i] for i in chosen)
    assert all(masked[i] == ids[i] for i in range(len(ids)) if i not in chosen)  # the rest untouched


def test_eighty_ten_ten_split():
    m = _masker(probability=0.5)
    counts = {"mask": 0, "random": 0, "kept": 0}
    for k in range(400):
        ids = [CLS] + list(range(100, 150)) + [SEP]
        masked, labels = m.mask(ids, k)
        for i, label in enumerate(labels):
            if label == IGNORE:
                continue
            kind = "mask" if masked[i] == MASK else "kept" if masked[i] == ids[i] else "random"
            counts[kind] += 1
            assert masked[i] not in (PAD, CLS, SEP) or kind == "kept"  # random pieces are never specials
    total = sum(counts.values())  # 10,000 chosen positions
    assert abs(counts["mask"] / total - 0.8) < 0.02
    # a random piece equals the original 1 time in 1,000: counted as kept, within the tolerance
    assert abs(counts["random"] / total - 0.1) < 0.015 and abs(counts["kept"] / total - 0.1) < 0.015


def test_draws_depend_only_on_seed_and_key():
    ids = [CLS] + list(range(100, 130)) + [SEP]
    assert _masker().mask(ids, "a") == _masker().mask(ids, "a")
    assert _masker().mask(ids, "a") != _masker().mask(ids, "b")
    assert _masker(seed=1).mask(ids, "a") != _masker().mask(ids, "a")
    short = [CLS, 100, SEP]
    assert _masker().mask(short, "x")[1] == [IGNORE, 100, IGNORE]  # at least one position per sequence
    assert _masker().mask([CLS, SEP], "x")[1] == [IGNORE, IGNORE]


def test_dynamic_batch_masks_match_per_example_draws_and_change_per_epoch():
    m = _masker(probability=0.3)
    items = [Encoded([CLS] + list(range(100, 100 + n)) + [SEP], None, [IGNORE] * (n + 2)) for n in (5, 12, 8)]
    batch = collate([items[2], items[0]], PAD)
    out = m.mask_batch(batch, items, [2, 0], epoch=3, slots=["5:0", "5:1"])
    for row, (index, slot) in enumerate(zip([2, 0], ["5:0", "5:1"])):
        ids, labels = m.mask(items[index].input_ids, f"train:0:{index}:3:{slot}")
        n = len(ids)
        assert out["input_ids"][row, :n].tolist() == ids and out["labels"][row, :n].tolist() == labels
        assert (out["labels"][row, n:] == IGNORE).all() and (out["input_ids"][row, n:] == PAD).all()
    assert torch.equal(batch["labels"], collate([items[2], items[0]], PAD)["labels"])  # the input batch is untouched
    again = m.mask_batch(batch, items, [2, 0], epoch=4, slots=["5:0", "5:1"])
    assert not torch.equal(again["labels"], out["labels"])
    # one example drawn twice in an epoch (language sampling) gets two masks
    twice = m.mask_batch(collate([items[1], items[1]], PAD), items, [1, 1], epoch=3, slots=["0:0", "7:3"])
    assert not torch.equal(twice["labels"][0], twice["labels"][1])
    # another stage of the cascade (another stream) draws other masks for the same example and epoch
    other = m.mask_batch(batch, items, [2, 0], epoch=3, slots=["5:0", "5:1"], stream=7)
    assert not torch.equal(other["labels"], out["labels"])
