"""Image preprocessing and augmentation, kept a thin layer over albumentations.

Every pipeline starts the same way product photos need: fit the longest side, pad to a square on
white (the studio background), so nothing is cropped off a long dress or a shoe. The `augmentation`
config group then lists plain albumentations transforms; they are composed with `strict=True` so a
misspelt argument in a config fails instead of being ignored with a warning.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from fashion.config import ConfigError  # noqa: E402


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects as input; saved with the model so inference matches training exactly."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_fill: int = 255
    # Resolution normalisation: every photo is first brought to this longest side (the catalogue's
    # thumbnails are 80 px), so a sharp upload and a thumbnail reach the model alike. None: off.
    source_max_side: int | None = field(default=None, repr=False)  # not in repr: older feature-cache keys stay valid
    # ... and a photo that had to shrink to it is then JPEG-encoded at this quality, as the thumbnails were
    # (75: their quantisation tables). None: no round trip. See ThumbnailRendering.
    source_jpeg_quality: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.source_jpeg_quality is not None and self.source_max_side is None:
            raise ConfigError(f"source_jpeg_quality={self.source_jpeg_quality} needs source_max_side (the size a photo "
                             "shrinks to before the JPEG round trip); set both, or neither")

    @property
    def decode_side(self) -> int:
        """The side a JPEG is decoded down to, at least (libjpeg's 1/2, 1/4, 1/8 scaling in `load_rgb`): the
        model's input size. Training, evaluation and serving all decode at it, so a large photo reaches the
        model as the same pixels everywhere, and a 2400px photo decodes at 300px instead of in full."""
        return self.image_size

    def resize_and_pad(self) -> list[A.BasicTransform]:
        normalise = [ThumbnailRendering(self.source_max_side, self.source_jpeg_quality)] if self.source_max_side else []
        return [
            *normalise,
            A.LongestMaxSize(max_size=self.image_size, interpolation=cv2.INTER_AREA),
            A.PadIfNeeded(self.image_size, self.image_size, border_mode=cv2.BORDER_CONSTANT, fill=self.pad_fill),
        ]

    def to_tensor(self) -> list[A.BasicTransform]:
        return [A.Normalize(mean=self.mean, std=self.std, max_pixel_value=255.0), ToTensorV2()]

    def geometry(self) -> A.Compose:
        """The eval transform up to normalisation: uint8 pixels, resized and padded (see `normalise`)."""
        return A.Compose(self.resize_and_pad(), strict=True)

    @cached_property
    def lookup_tables(self) -> list[np.ndarray]:
        """Per channel, 256 float32 values: what `to_tensor`'s Normalize makes of each uint8 value, taken
        from Normalize itself (applied to the 256 values), so a batch normalised through them is bit for
        bit what the per-image transform gives."""
        ramp = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)
        values = A.Compose(self.to_tensor()[:1])(image=ramp)["image"].astype(np.float32)
        return [np.ascontiguousarray(values[:, 0, c]) for c in range(3)]

    def normalise(self, padded: Sequence[np.ndarray]) -> torch.Tensor:
        """Padded uint8 images (H, W, 3) -> the model's input batch (N, 3, H, W), equal to stacking the eval
        transform's output image by image; each channel plane is looked up straight into its place in
        the batch (catalogue scoring's hot path: 4x less work than the per-image transform and a stack)."""
        batch = np.empty((len(padded), 3, self.image_size, self.image_size), np.float32)
        for i, image in enumerate(padded):
            if image.shape != (self.image_size, self.image_size, 3) or image.dtype != np.uint8:
                raise ValueError(f"normalise takes padded {self.image_size}x{self.image_size}x3 uint8 images, "
                                 f"got {image.shape} {image.dtype}: run geometry() first")
            for channel, plane in enumerate(cv2.split(image)):
                cv2.LUT(plane, self.lookup_tables[channel], dst=batch[i, channel])
        return torch.from_numpy(batch)

    def eval_transform(self, *fixed: A.BasicTransform) -> A.Compose:
        """`fixed`: deterministic transforms between padding and normalisation (a cached augmentation view)."""
        return A.Compose([*self.resize_and_pad(), *fixed, *self.to_tensor()], strict=True)


class ThumbnailRendering(A.ImageOnlyTransform):
    """Bring a photo to `max_side` (its longest side), and, if it had to shrink, through a JPEG round trip
    at `jpeg_quality`: what the catalogue did to make its thumbnails, so a sharp photo reaches the model
    as the thumbnails it trained on did. A model trained on thumbnails reads their compression too:
    run 13a379e4 scored 1,182 products' 224px photos 2-3 points lower on gender, subCategory and
    articleType than their thumbnails, and level with them after this round trip (docs/outside_the_split.md).

    Photos at or under `max_side` (the thumbnails themselves) are only resized, exactly as before, so
    training on them and their feature cache do not change. The encoder is cv2's, as in albumentations'
    ImageCompression, but fed BGR as it expects (ImageCompression passes RGB through, which swaps the
    red and blue weights of JPEG's colour transform).
    """

    def __init__(self, max_side: int, jpeg_quality: int | None = None, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.max_side, self.jpeg_quality = max_side, jpeg_quality
        self.resize = A.LongestMaxSize(max_size=max_side, interpolation=cv2.INTER_AREA)

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        shrinks = max(img.shape[:2]) > self.max_side
        img = self.resize(image=img)["image"]
        if not (shrinks and self.jpeg_quality):
            return img
        _, encoded = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_side", "jpeg_quality")


class Augmentation:
    """Random transforms applied to training images between padding and normalisation.

    `steps` are applied in turn, each with its own probability. `views` are fixed alternatives to
    the image (its mirror image, say): each training sample is the image or one of its views, drawn
    uniformly. A finite set of views keeps a frozen backbone (or frozen prefix) cacheable, since
    the feature cache stores each view once; random `steps` do not.
    """

    def __init__(self, steps: Sequence[A.BasicTransform] = (), views: Sequence[A.BasicTransform] = ()) -> None:
        self.steps, self.views = list(steps), list(views)
        for view in self.views:
            if getattr(view, "p", 1.0) != 1.0:
                raise ConfigError(f"augmentation view {type(view).__name__} has p={view.p}: a view is always applied "
                                 "once drawn (set p: 1.0); the draw among the views is uniform")

    @property
    def cacheable(self) -> bool:
        """Whether every training input is one of finitely many fixed versions of its image."""
        return not self.steps

    def train_transform(self, preprocessing: Preprocessing) -> A.Compose:
        draw_view = [A.OneOf([A.NoOp(p=1.0), *self.views], p=1.0)] if self.views else []
        return A.Compose([*preprocessing.resize_and_pad(), *draw_view, *self.steps, *preprocessing.to_tensor()], strict=True)
