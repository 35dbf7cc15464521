"""Uploaded bytes -> RGB array, or a rejection with the HTTP status that says what was wrong.

Checks run cheapest first and before any full decode: size in bytes, then the header (format,
pixel count) so a decompression bomb is refused without being decompressed. Uploads are untrusted:
whatever a decoder raises on a malformed file is a 400 `corrupt_image` naming the upload, never a 500
(tests/test_upload_fuzz.py sends a few hundred malformed files).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from fashion.data.images import draft, to_rgb, upright_size

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


@dataclass
class UploadRejected(Exception):
    status: int       # 400 empty/corrupt, 413 too large, 415 not a supported image
    code: str         # machine-readable reason, one of serving.errors.ERROR_CODES
    message: str


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_files: int = 16


@dataclass
class DecodedImage:
    pixels: np.ndarray          # RGB uint8, possibly decoded at reduced scale (JPEG draft)
    size: tuple[int, int]       # the file's own (width, height), upright (EXIF orientation applied)
    data: bytes = b""           # the file as uploaded (what the review queue stores)
    format: str = ""            # Pillow's name of its format (JPEG, PNG, ...)


def decode_upload(data: bytes, limits: UploadLimits, filename: str | None = None, decode_side: int | None = None) -> DecodedImage:
    """`decode_side`: the serving model's (`Preprocessing.decode_side`), so an upload is decoded as training
    decoded its photos; None decodes in full."""
    name = f" ({filename})" if filename else ""
    if not data:
        raise UploadRejected(400, "empty_file", f"the upload{name} is empty")
    if len(data) > limits.max_bytes:
        raise UploadRejected(413, "file_too_large", f"the upload{name} has {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        other = identify_format(data)
        if other:
            raise UploadRejected(415, "unsupported_format", f"the upload{name} is {other}; supported: {', '.join(ALLOWED_FORMATS)}") from None
        raise UploadRejected(415, "not_an_image", f"the upload{name} is not an image Pillow can read; send one of {', '.join(ALLOWED_FORMATS)}") from None
    except Image.DecompressionBombError as err:
        raise UploadRejected(413, "too_many_pixels", f"the upload{name} is a decompression bomb: {err}") from None
    except Exception as err:  # a header malformed enough to break the format's parser
        raise UploadRejected(400, "corrupt_image", f"the upload{name} has a malformed header: {err}") from None
    with image:
        width, height = image.size
        if width * height > limits.max_pixels:
            raise UploadRejected(413, "too_many_pixels", f"the upload{name} is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}")
        try:
            size, kind = upright_size(image), image.format or ""
            draft(image, decode_side)
            return DecodedImage(to_rgb(image), size, data, kind)
        except Image.DecompressionBombError as err:
            raise UploadRejected(413, "too_many_pixels", f"the upload{name} is a decompression bomb: {err}") from None
        except Exception as err:  # any decoder failure on untrusted bytes means a corrupt file
            raise UploadRejected(400, "corrupt_image", f"the upload{name} could not be decoded: {err}") from None


def identify_format(data: bytes) -> str | None:
    """The name of a format we do not decode (PPM, EPS, ...), from its header alone, for the error message."""
    try:
        with Image.open(io.BytesIO(data)) as image:  # header only: never loaded
            return image.format
    except Exception:
        return None
