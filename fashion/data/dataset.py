"""A torch Dataset over product images and their encoded labels (IGNORE_INDEX where masked)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from fashion.data.images import load_rgb


class ProductImages(Dataset):
    """(image tensor, {attribute: class index}) pairs; decoding downscales to about `decode_size`."""

    def __init__(
        self,
        paths: list[str],
        targets: Mapping[str, np.ndarray],
        transform: Callable[..., dict],
        decode_size: int | None = None,
    ) -> None:
        lengths = {len(t) for t in targets.values()}
        if lengths and lengths != {len(paths)}:
            raise ValueError(f"{len(paths)} images but target lengths {sorted(lengths)}")
        self.paths = list(paths)
        self.targets = {a: torch.tensor(t, dtype=torch.long) for a, t in targets.items()}
        self.transform = transform
        self.decode_size = decode_size
        self._transform_seed: int | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def _sync_transform_seed(self) -> None:
        """Seed albumentations from torch's seed, which is per worker and per epoch (see EpochSeed).

        albumentations draws fresh OS entropy when unseeded, so without this a seeded run would
        not repeat, nor would a resumed run continue as the uninterrupted one did.
        """
        seed = torch.initial_seed()
        if seed != self._transform_seed and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed % 2**32)
            self._transform_seed = seed

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._sync_transform_seed()
        image = load_rgb(self.paths[index], min_side=self.decode_size)
        tensor = self.transform(image=image)["image"]
        return tensor, {a: t[index] for a, t in self.targets.items()}
