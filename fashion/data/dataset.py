"""A torch Dataset over product images and their encoded labels (IGNORE_INDEX where masked)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from fashion.data.images import load_rgb


def restore_aspect(image: np.ndarray, true_aspect: float | None) -> np.ndarray:
    """Undo a squash: resize the width to `true_aspect` x the height (the subset's 224x224 photos are
    3:4 products stored 1:1, `true_aspect` 0.75). None: the image is stored at its true aspect."""
    if true_aspect is None:
        return image
    height = image.shape[0]
    width = max(1, round(height * true_aspect))
    return image if width == image.shape[1] else cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


class ProductImages(Dataset):
    """(image tensor, {attribute: class index}) pairs; decoding downscales to about `decode_size`,
    and `true_aspect` restores the shape of photos that were stored squashed (see restore_aspect)."""

    def __init__(
        self,
        paths: list[str],
        targets: Mapping[str, np.ndarray],
        transform: Callable[..., dict],
        decode_size: int | None = None,
        true_aspect: float | None = None,
    ) -> None:
        lengths = {len(t) for t in targets.values()}
        if lengths and lengths != {len(paths)}:
            raise ValueError(f"{len(paths)} images but target lengths {sorted(lengths)}")
        self.paths = list(paths)
        self.targets = {a: torch.tensor(t, dtype=torch.long) for a, t in targets.items()}
        self.transform = transform
        self.decode_size, self.true_aspect = decode_size, true_aspect
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
        image = restore_aspect(load_rgb(self.paths[index], min_side=self.decode_size), self.true_aspect)
        tensor = self.transform(image=image)["image"]
        return tensor, {a: t[index] for a, t in self.targets.items()}
