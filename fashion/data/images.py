"""Find, check and decode product images.

A corrupt or truncated JPEG must not crash a run hours in, so every image is decoded once up front
(`find_unreadable`) and the bad ones are reported by id. JPEG decoding uses Pillow's `draft` mode,
which lets libjpeg downscale by 2/4/8 while decoding: full-size Kaggle photos (1800x2400) decode
several times faster when the model only needs 224 pixels.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

log = logging.getLogger(__name__)

# Truncated files must raise, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageReadError(OSError):
    """An image file exists but cannot be decoded."""


def load_rgb(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Decode to an HxWx3 uint8 array; `min_side` lets JPEG decoding downscale while keeping >= min_side."""
    try:
        with Image.open(path) as image:
            if min_side is not None and image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageReadError(f"cannot decode image {path}: {err}") from err


def _is_readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))
            image.load()
        return True
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        log.warning("unreadable image %s: %s", path, err)
        return False


def find_unreadable(paths: list[Path], workers: int = 4) -> list[Path]:
    """Decode every image once (threads: libjpeg releases the GIL) and return the ones that fail."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        readable = list(pool.map(_is_readable, paths, chunksize=64))
    return [p for p, ok in zip(paths, readable) if not ok]
