"""The frozen side of a stage: what yields the teacher's features for each batch.

* `LiveTeacher`: the teacher model, run on the batch (under `no_grad`, by the task);
* `CachedTeacher`: its outputs read back from disk (training/teacher_cache.py), computed once;
* `DenseGuides`: several frozen models (DGKD: the teacher and every earlier student of the
  chain), of which `drop` are dropped per batch, reproducibly from (seed, step);
* sharded: `place_frozen` splits every live model between the processes (FSDP,
  `train.teacher_sharding: fsdp`); the sharded copies replace the models in these objects only.

Each is asked `features(batch, members, step, reads, guide_reads, positions)`: `reads`, what the
losses read of the stage's teacher; `guide_reads`, what dense guidance reads of every guide (the
teacher among them); `positions`, where logits are wanted (see `Reads.extract`); `members`, the
examples of the batch (the cache's rows); `step`, the micro-batch (which guides are kept).

None of these is a `torch.nn.Module`: the task holds the frozen side as a plain attribute, so it
is never in the optimiser, never wrapped or synchronised by DDP and never in a checkpoint.
"""

from __future__ import annotations

import random

from cascade_kd.losses.base import Reads, TeacherFeatures
from cascade_kd.students.features import Features
from cascade_kd.training.sharding import local_parameter_count, shard_frozen


class LiveTeacher:
    """A frozen model run on every batch."""

    def __init__(self, model):
        self.model = model

    def run(self, batch: dict, members, reads: Reads, positions) -> Features:
        return reads.extract(self.model, batch, positions)

    def features(self, batch: dict, members, step: int, reads: Reads, guide_reads: Reads, positions) -> TeacherFeatures:
        return TeacherFeatures(self.run(batch, members, reads | guide_reads, positions))

    def sources(self) -> list:
        return [self]


class CachedTeacher(LiveTeacher):
    """The teacher's outputs read from a complete TeacherCache instead of computed. `model` (the
    teacher itself) is only frozen with the others, never run."""

    def __init__(self, cache, model=None):
        super().__init__(model)
        self.cache = cache

    def run(self, batch: dict, members, reads: Reads, positions) -> Features:
        held = self.cache.request
        if reads.qkv or not set(reads.hidden) <= set(held.hidden) or not set(reads.attention) <= set(held.attention) \
                or (reads.logits and not held.logits):
            raise ValueError(f"the teacher cache holds {held}, not all of {reads}")
        return self.cache.features(members, batch["attention_mask"])


def kept_guides(n: int, drop: int, seed: int, step: int) -> list[int]:
    """The indices (ascending) of the guides kept at `step`: exactly `drop` of the `n` are dropped,
    uniformly at random, by a private generator seeded from (seed, step), never the global RNGs,
    so the choice is reproducible and a resumed run makes the same ones."""
    if not 0 <= drop < n:
        raise ValueError(f"cannot drop {drop} of {n} guides: at least one must be kept")
    if drop == 0:
        return list(range(n))
    rng = random.Random(f"dgkd:{seed}:{step}")  # str seeds hash with sha512: stable across processes
    return sorted(rng.sample(range(n), n - drop))


class DenseGuides:
    """Dense guidance's frozen side: `guides` (LiveTeacher / CachedTeacher, the chain's larger
    models), of which `guides[teacher]` is the stage's teacher. Per batch, `drop` guides are left
    out (`kept_guides`); each kept one gives its logits (`guide_reads`). The teacher runs when it
    is kept, or when a loss reads more of it than dense guidance does (hidden states, attention)."""

    def __init__(self, guides: list, teacher: int, drop: int = 0, seed: int = 0):
        kept_guides(len(guides), drop, seed, 0)  # validates drop
        if not 0 <= teacher < len(guides):
            raise ValueError(f"the teacher must be one of the {len(guides)} guides, not guide {teacher}")
        self.guides, self.teacher, self.drop, self.seed = guides, teacher, drop, seed

    def features(self, batch: dict, members, step: int, reads: Reads, guide_reads: Reads, positions) -> TeacherFeatures:
        kept = kept_guides(len(self.guides), self.drop, self.seed, step)
        teacher = None
        if self.teacher in kept or reads:
            teacher = self.guides[self.teacher].run(batch, members, reads | guide_reads, positions)
        guides = [teacher if k == self.teacher else self.guides[k].run(batch, members, guide_reads, positions)
                  for k in kept]
        return TeacherFeatures(teacher, guides)

    def sources(self) -> list:
        return list(self.guides)


def place_frozen(side, device, *, shard: bool) -> tuple[int, int, int] | None:
    """Put every frozen model of `side` on `device`, in eval mode, without gradients; with `shard`,
    each live one is replaced by a copy split between the processes (FSDP, training/sharding.py;
    the original stays where it is). Returns (models sharded, parameters this process holds of
    them, parameters in all) when sharded."""
    sources = [s for s in side.sources() if s.model is not None]
    live = [s for s in sources if not isinstance(s, CachedTeacher)]
    if not shard:
        for source in sources:
            source.model.to(device).eval().requires_grad_(False)
        return None
    total = sum(sum(p.numel() for p in s.model.parameters()) for s in live)
    for source in live:
        source.model = shard_frozen(source.model.eval().requires_grad_(False), device)
    return len(live), sum(local_parameter_count(s.model) for s in live), total
