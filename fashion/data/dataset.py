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

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = load_rgb(self.paths[index], min_side=self.decode_size)
        tensor = self.transform(image=image)["image"]
        return tensor, {a: t[index] for a, t in self.targets.items()}
