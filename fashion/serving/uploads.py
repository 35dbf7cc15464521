"""Uploaded bytes -> RGB array, or a rejection with the HTTP status that says what was wrong.

Checks run cheapest first and before any full decode: size in bytes, then the header (format,
pixel count) so a decompression bomb is refused without being decompressed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


@dataclass
class UploadRejected(Exception):
    status: int       # 400 empty/corrupt, 413 too large, 415 not a supported image
    code: str         # machine-readable reason
    message: str

    def to_dict(self, filename: str | None = None) -> dict:
        return {"error": {"code": self.code, "message": self.message, **({"filename": filename} if filename else {})}}


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_files: int = 16


@dataclass
class DecodedImage:
    pixels: np.ndarray          # RGB uint8, possibly decoded at reduced scale (JPEG draft)
    size: tuple[int, int]       # the file's own (width, height)


def decode_upload(data: bytes, limits: UploadLimits, filename: str | None = None) -> DecodedImage:
    name = f" ({filename})" if filename else ""
    if not data:
        raise UploadRejected(400, "empty_file", f"the upload{name} is empty")
    if len(data) > limits.max_bytes:
        raise UploadRejected(413, "file_too_large", f"the upload{name} has {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UploadRejected(415, "not_an_image", f"the upload{name} is not an image Pillow can read; send one of {', '.join(ALLOWED_FORMATS)}") from None
    except Image.DecompressionBombError as err:
        raise UploadRejected(413, "too_many_pixels", f"the upload{name} is a decompression bomb: {err}") from None
    with image:
        if image.format not in ALLOWED_FORMATS:
            raise UploadRejected(415, "unsupported_format", f"the upload{name} is {image.format}; supported: {', '.join(ALLOWED_FORMATS)}")
        width, height = image.size
        if width * height > limits.max_pixels:
            raise UploadRejected(413, "too_many_pixels", f"the upload{name} is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}")
        try:
            image.draft("RGB", (1024, 1024))  # JPEG: decode at reduced scale, the model needs ~224 px
            return DecodedImage(np.asarray(image.convert("RGB")), (width, height))
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise UploadRejected(400, "corrupt_image", f"the upload{name} could not be decoded: {err}") from None
