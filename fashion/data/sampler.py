"""Shuffling that depends only on (seed, epoch), so a resumed run sees the batches it would have.

torch's RandomSampler draws its seed from the global RNG when iterated, and Lightning creates the
first iterator of a resumed run at a different moment than later ones; tying the permutation and
the workers' base seed to the epoch number removes that difference. Under DDP, Lightning swaps this
(RandomSampler subclass) for a DistributedSampler, which is seed+epoch based too.

Evaluation under DDP is the other way round: Lightning's DistributedSampler pads a split with repeats
until every process has an equal share, so a test set of 4,001 products on 2 processes scores one of
them twice. `each_product_once` gives each process every n-th product instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sized

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import RandomSampler

log = logging.getLogger(__name__)

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


def processes() -> int:
    """How many processes share each loader's data: DDP's world size, 1 outside DDP."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_world_size() if distributed else 1


def each_product_once(dataset: Sized) -> UnrepeatedDistributedSampler | None:
    """For an evaluation loader under DDP: each process scores every n-th product and none twice, so
    the metrics, gathered over the processes, count each product once (the processes' last batches may
    differ by one; evaluation syncs nothing per batch). None outside DDP, where the loader reads in order.

    A split smaller than the number of processes keeps Lightning's padding: every process must run a
    batch, or DDP's first forward of the evaluation waits for it forever."""
    count = processes()
    if count == 1:
        return None
    if len(dataset) < count:
        log.warning("an evaluation split of %d products on %d processes: some are scored twice", len(dataset), count)
        return None
    return UnrepeatedDistributedSampler(dataset, shuffle=False)
