"""Temperature-based language sampling: small languages are not drowned by large ones.

With n_l examples in language l and p_l = n_l / N, each epoch draws N examples, q_l * N of them
from language l, where q_l = p_l^alpha / sum_k p_k^alpha (Lample & Conneau 2019; XLM-R uses
alpha = 0.3, mBERT 0.7). alpha = 1 keeps the data's proportions, alpha = 0 gives every language
the same share. A language whose quota exceeds its size is repeated (whole passes, then a random
part); a larger one contributes a different random subset each epoch. Draws come from a private generator seeded by (seed, epoch): reproducible, and the
same after a resume.
"""

from __future__ import annotations

import random


def language_quotas(sizes: dict[str, int], alpha: float, total: int | None = None) -> dict[str, int]:
    """Examples per language in one epoch of `total` (default: all the data) examples.

    Rounded by largest remainders, so the quotas sum to `total` exactly."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    sizes = {lang: n for lang, n in sizes.items() if n > 0}
    total = sum(sizes.values()) if total is None else total
    n = sum(sizes.values())
    weights = {lang: (size / n) ** alpha for lang, size in sizes.items()}
    norm = sum(weights.values())
    exact = {lang: total * w / norm for lang, w in weights.items()}
    quotas = {lang: int(x) for lang, x in exact.items()}
    # the largest remainders get the examples that rounding down left over
    for lang in sorted(exact, key=lambda l: exact[l] - quotas[l], reverse=True)[: total - sum(quotas.values())]:
        quotas[lang] += 1
    return quotas


def epoch_indices(blocks: list[tuple[str, int]], alpha: float, *, seed: int, epoch: int) -> list[int]:
    """Indices into data laid out as consecutive language blocks [(lang, count), ...] for one epoch.

    A language may appear in several blocks (labelled and transfer data): its blocks are pooled."""
    pools: dict[str, list[int]] = {}
    start = 0
    for lang, count in blocks:
        pools.setdefault(lang, []).extend(range(start, start + count))
        start += count
    quotas = language_quotas({lang: len(pool) for lang, pool in pools.items()}, alpha)
    rng = random.Random(f"languages:{seed}:{epoch}")
    out: list[int] = []
    for lang, pool in pools.items():
        whole, rest = divmod(quotas.get(lang, 0), len(pool))
        out.extend(pool * whole)
        out.extend(rng.sample(pool, rest))
    return out
