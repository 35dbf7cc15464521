"""Image preprocessing and augmentation, kept a thin layer over albumentations.

Every pipeline starts the same way product photos need: fit the longest side, pad to a square on
white (the studio background), so nothing is cropped off a long dress or a shoe. The `augmentation`
config group then lists plain albumentations transforms; they are composed with `strict=True` so a
misspelt argument in a config fails instead of being ignored with a warning.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects as input; saved with the model so inference matches training exactly."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_fill: int = 255

    def resize_and_pad(self) -> list[A.BasicTransform]:
        return [
            A.LongestMaxSize(max_size=self.image_size, interpolation=cv2.INTER_AREA),
            A.PadIfNeeded(self.image_size, self.image_size, border_mode=cv2.BORDER_CONSTANT, fill=self.pad_fill),
        ]

    def to_tensor(self) -> list[A.BasicTransform]:
        return [A.Normalize(mean=self.mean, std=self.std, max_pixel_value=255.0), ToTensorV2()]

    def eval_transform(self) -> A.Compose:
        return A.Compose([*self.resize_and_pad(), *self.to_tensor()], strict=True)


class Augmentation:
    """Random transforms applied to training images between padding and normalisation."""

    def __init__(self, steps: Sequence[A.BasicTransform] = ()) -> None:
        self.steps = list(steps)

    @property
    def is_random(self) -> bool:
        return bool(self.steps)

    def train_transform(self, preprocessing: Preprocessing) -> A.Compose:
        return A.Compose([*preprocessing.resize_and_pad(), *self.steps, *preprocessing.to_tensor()], strict=True)
