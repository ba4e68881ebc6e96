"""Temperature-based language sampling (cascade_kd/data/sampling.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from cascade_kd.data.sampling import epoch_indices, language_quotas


def test_quotas_follow_p_to_the_alpha():
    sizes = {"en": 900, "sw": 100}  # p = 0.9, 0.1
    # alpha 0.5: q_en = sqrt(.9) / (sqrt(.9) + sqrt(.1)) = 0.75 exactly
    assert language_quotas(sizes, 0.5) == {"en": 750, "sw": 250}
    assert language_quotas(sizes, 1.0) == sizes  # the data's own proportions
    assert language_quotas(sizes, 0.0) == {"en": 500, "sw": 500}  # equal shares


def test_quotas_sum_to_the_total_by_largest_remainder():
    sizes = {"a": 1, "b": 1, "c": 1}
    quotas = language_quotas(sizes, 1.0, total=10)  # 3.33 each: one language gets the 10th
    assert sum(quotas.values()) == 10 and sorted(quotas.values()) == [3, 3, 4]
    with pytest.raises(ValueError, match="alpha"):
        language_quotas(sizes, 1.5)


def test_epoch_draw_counts_repeats_and_subsets():
    blocks = [("en", 900), ("sw", 100)]  # en: indices 0..899, sw: 900..999
    draw = epoch_indices(blocks, 0.5, seed=0, epoch=0)
    counts = Counter("en" if i < 900 else "sw" for i in draw)
    assert len(draw) == 1000 and counts == {"en": 750, "sw": 250}
    sw = Counter(i for i in draw if i >= 900)
    assert set(sw.values()) == {2, 3}  # 250 from 100: two whole passes, then 50 distinct ones once more
    en = [i for i in draw if i < 900]
    assert len(set(en)) == 750  # a subset of en, without repeats
    # reproducible per (seed, epoch); another epoch draws another subset of the large language
    assert draw == epoch_indices(blocks, 0.5, seed=0, epoch=0)
    other = [i for i in epoch_indices(blocks, 0.5, seed=0, epoch=1) if i < 900]
    assert set(other) != set(en)


def test_blocks_of_one_language_are_pooled():
    # labelled and transfer data of "en" sit in two blocks: they share en's quota
    blocks = [("en", 30), ("sw", 10), ("en", 60)]
    draw = epoch_indices(blocks, 0.0, seed=1, epoch=0)
    sw = [i for i in draw if 30 <= i < 40]
    assert len(draw) == 100 and len(sw) == 50
    assert any(i >= 40 for i in draw) and any(i < 30 for i in draw)
