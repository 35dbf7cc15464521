"""Shuffling that depends only on (seed, epoch), so a resumed run sees the batches it would have.

torch's RandomSampler draws its seed from the global RNG when iterated, and Lightning creates the
first iterator of a resumed run at a different moment than later ones; tying the permutation and
the workers' base seed to the epoch number removes that difference. Under DDP, Lightning swaps this
(RandomSampler subclass) for a DistributedSampler, which is seed+epoch based too.
"""

from __future__ import annotations

from collections.abc import Sized

import torch
from torch.utils.data import RandomSampler

_LOADER_STREAM = 7_919  # keeps the workers' seeds apart from the permutation's


class EpochRandomSampler(RandomSampler):
    def __init__(self, data_source: Sized, seed: int, loader_generator: torch.Generator | None = None) -> None:
        super().__init__(data_source, generator=torch.Generator())
        self.seed = seed
        self.loader_generator = loader_generator
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch's first batch."""
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)
        if self.loader_generator is not None:
            self.loader_generator.manual_seed(self.seed * 1_000_003 + epoch + _LOADER_STREAM)
