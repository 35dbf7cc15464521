"""What cached features depend on, as a key: the backbone's weights, the preprocessing, the images.

Labels are not in it: regrouping colours or pruning classes reuses the same features.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

from fashion.data.transforms import Preprocessing

if TYPE_CHECKING:
    import albumentations as A

    from fashion.models.tagger import MultiHeadTagger


def weights_digest(module: nn.Module) -> str:
    """sha256 over parameter and buffer bytes: a retrained or differently loaded backbone gets a new key."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def images_fingerprint(ids: list[int], paths: list[str]) -> str:
    """sha256 over (id, file bytes) per image, in id order.

    The bytes, not size and mtime: a copied, re-downloaded or re-provisioned data set with the same
    pixels keeps its cache (an mtime key rebuilt it each time, a 4-5 minute fill on the subset),
    while any replaced image still changes the key. Reading the files costs about as much as the
    start-of-run image check already pays, and far less than a fill.
    """
    digest = hashlib.sha256()
    for image_id, path in sorted(zip(ids, paths)):
        with open(path, "rb") as file:
            content = hashlib.sha256(file.read()).hexdigest()
        digest.update(f"{image_id}:{content}\n".encode())
    return digest.hexdigest()


def cache_keys(model: MultiHeadTagger, preprocessing: Preprocessing, ids: list[int], paths: list[str],
               versions: Sequence[A.BasicTransform | None], true_aspect: float | None = None) -> list[str]:
    """One key per version of the images (None: the images themselves, whose key predates views).

    The weights and the image files, the costly parts, are hashed once for all versions.
    `true_aspect`, `source_max_side` and `source_jpeg_quality` enter the key only when set, so older caches keep theirs.
    """
    backbone = model.backbone
    parts = {
        "backbone": backbone.name,
        "pool": backbone.pooling,
        "prefix": backbone.prefix_description,
        "weights": weights_digest(backbone),
        "extras": {name: repr(extra) for name, extra in model.extras.items()},
        "preprocessing": repr(preprocessing),
        "images": images_fingerprint(ids, paths),
        **({"true_aspect": true_aspect} if true_aspect is not None else {}),
        **({"source_max_side": preprocessing.source_max_side} if preprocessing.source_max_side else {}),
        **({"source_jpeg_quality": preprocessing.source_jpeg_quality} if preprocessing.source_jpeg_quality else {}),
    }
    return [hashlib.sha256(json.dumps(parts if view is None else {**parts, "view": repr(view)},
                                      sort_keys=True).encode()).hexdigest()[:24] for view in versions]


def cache_key(model: MultiHeadTagger, preprocessing: Preprocessing, ids: list[int], paths: list[str],
              view: A.BasicTransform | None = None, true_aspect: float | None = None) -> str:
    return cache_keys(model, preprocessing, ids, paths, [view], true_aspect)[0]
