"""Scoring a catalogue on one machine: images are decoded and preprocessed in loader processes while
the model runs, so the model never waits for JPEG decoding and the two overlap.

torch's DataLoader is the bounded queue: `workers` processes each prepare whole batches, and at most
`workers x prefetch` batches wait for the model, so memory holds a few batches whatever the catalogue's
size (plus the list of paths, ~100 bytes each). An image that cannot be read becomes an error row with
the reason; the job goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fashion.data.images import ImageReadError, load_rgb
from fashion.inference.predictor import Predictor


class ImageFiles(Dataset):
    """(index, preprocessed tensor, None) or (index, None, why it could not be read) per path."""

    def __init__(self, paths: Sequence[str], preprocess: Callable[[np.ndarray], torch.Tensor]) -> None:
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.preprocess(load_rgb(self.paths[index])), None
        except (ImageReadError, OSError) as err:
            return index, None, str(err) or type(err).__name__


def collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> tuple[list[int], torch.Tensor | None, dict[int, str]]:
    tensors = [tensor for _, tensor, _ in items if tensor is not None]
    errors = {index: error for index, _, error in items if error is not None}
    return [index for index, _, _ in items], torch.stack(tensors) if tensors else None, errors


def score_paths(predictor: Predictor, paths: Sequence[str], workers: int = 2, prefetch: int = 2) -> Iterator[dict]:
    """One row per path, in order: `{"path", "predictions": {attribute: Prediction.to_dict()}}` or
    `{"path", "error"}`. `workers=0` decodes in this process (no overlap)."""
    loader = DataLoader(ImageFiles(paths, predictor.preprocess), batch_size=predictor.batch_size, num_workers=workers,
                        prefetch_factor=prefetch if workers else None, collate_fn=collate,
                        persistent_workers=False)
    for indices, batch, errors in loader:
        predictions = iter(predictor.decode(predictor.probabilities(batch)) if batch is not None else [])
        for index in indices:
            if index in errors:
                yield {"path": str(paths[index]), "error": errors[index]}
            else:
                yield {"path": str(paths[index]), "predictions": {a: p.to_dict() for a, p in next(predictions).items()}}
