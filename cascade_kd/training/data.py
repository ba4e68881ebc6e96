"""A stage's training data: which examples each epoch draws, how they are batched and split
between processes, and what is done to a batch before it trains (dynamic masking).

Batches are global: bucketed by length from (seed, epoch), the same batches in the same order on
any number of processes, each split between the processes (`batch_share`), so steps, schedule and
checkpoints match. `epoch_draw(epoch)` gives the example indices of an epoch (language sampling;
default: each example once); `batch_transform(batch, members, epoch, slots)` changes a collated
batch (dynamic masking), where `slots` name each member's place in the epoch ("batch:place"), the
same on any number of processes. Both must be pure functions of their arguments, so that resumed
and multi-process runs match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from cascade_kd.data.encode import Encoded, bucketed_batches, collate


def batch_share(members: list[int], index: int, count: int) -> tuple[list[int], bool]:
    """This process's part of a global batch (every count-th member), and whether it is real.

    A batch smaller than the number of processes leaves some with nothing; they run the batch's
    first member with weight 0 instead, as every process must take part in the gradient exchange.
    """
    share = members[index::count]
    return (share, True) if share else (members[:1], False)


@dataclass
class StageData:
    """The training examples of a stage and how each epoch draws and batches them (module docstring)."""

    examples: list[Encoded]
    pad_id: int = 0
    seed: int = 0
    epoch_draw: Callable[[int], list[int]] | None = None
    batch_transform: Callable | None = None
    lengths: list[int] = field(init=False, repr=False)

    def __post_init__(self):
        self.lengths = [len(x) for x in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def epoch(self, epoch: int, batch_size: int) -> list[list[int]]:
        """The global batches of `epoch`, as example indices."""
        indices = self.epoch_draw(epoch) if self.epoch_draw is not None else None
        return bucketed_batches(self.lengths, batch_size, seed=self.seed, epoch=epoch, indices=indices)

    def batch(self, members: list[int], position: int, epoch: int, rank: int = 0, count: int = 1,
              device=None) -> tuple[dict, list[int], bool]:
        """Process `rank`'s share of the global batch `members` (the `position`-th of `epoch`),
        collated, transformed and on `device`; with its members and whether it is real."""
        share, real = batch_share(members, rank, count)
        batch = collate([self.examples[i] for i in share], self.pad_id)
        if self.batch_transform is not None:  # slots: (batch, place in the global batch), split like the members
            slots = [f"{position}:{j}" for j in batch_share(list(range(len(members))), rank, count)[0]]
            batch = self.batch_transform(batch, share, epoch, slots)
        return {k: v.to(device) for k, v in batch.items()}, share, real
