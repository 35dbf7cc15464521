"""The cached stand-in for ProductImages: model inputs computed once (by fashion.features), served as data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

CachedInputs = Mapping[str, torch.Tensor]   # {"backbone": frozen-prefix output, <extra name>: features}


class FeatureDataset(Dataset):
    """({input name: cached tensor}, {attribute: class index}) pairs.

    With `views` (the cached inputs of augmentation views, same rows), each item is the image's own
    inputs or one of its views', drawn uniformly from torch's global RNG like dropout masks are.
    """

    def __init__(self, inputs: CachedInputs, targets: Mapping[str, np.ndarray], views: Sequence[CachedInputs] = ()) -> None:
        versions = [dict(inputs), *map(dict, views)]
        rows = {len(t) for version in versions for t in version.values()}
        if len(rows) != 1 or any(len(t) not in rows for t in targets.values()):
            raise ValueError(f"cached inputs with {sorted(rows)} rows do not match targets {[len(t) for t in targets.values()]}")
        if any(version.keys() != versions[0].keys() for version in versions):
            raise ValueError(f"cached views hold different inputs: {[sorted(v) for v in versions]}")
        self.versions = versions
        self.targets = {a: torch.from_numpy(np.array(t, dtype=np.int64)) for a, t in targets.items()}   # a writable copy: torch warns on read-only arrays
        self.length = rows.pop()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        version = self.versions[int(torch.randint(len(self.versions), ())) if len(self.versions) > 1 else 0]
        return {n: t[index] for n, t in version.items()}, {a: t[index] for a, t in self.targets.items()}
