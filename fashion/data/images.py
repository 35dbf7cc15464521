"""Find, check and decode product images.

A corrupt or truncated JPEG must not crash a run hours in, so every image is decoded once up front
(`find_unreadable`) and the bad ones are reported by id. JPEG decoding uses Pillow's `draft` mode,
which lets libjpeg downscale by 2/4/8 while decoding: full-size Kaggle photos (1800x2400) decode
several times faster when the model only needs 224 pixels.

Every path that turns a file into pixels (training, predict, eval, the API and the pyfunc) goes
through `to_rgb`, so a phone photo's EXIF orientation is applied everywhere, as every image viewer
applies it, and a transparent background becomes the white studio background the model was trained on.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, UnidentifiedImageError

log = logging.getLogger(__name__)

# Truncated files must raise, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageReadError(OSError):
    """An image file exists but cannot be decoded."""


DATA_URL = re.compile(r"data:[\w.+-]+/[\w.+-]+(;[\w.+-]+=[\w.+-]+)*;base64,", re.ASCII)


def base64_bytes(text: str | bytes) -> bytes:
    """An image file's bytes from base64 text as clients send it (the API's and the pyfunc's `image`, which a DataFrame
    may hold as bytes): bare, as a data URL (`data:image/jpeg;base64,...`, what a browser's FileReader gives) or in
    lines (the `base64` tool writes 76 characters a line). Any other character outside the standard alphabet is
    refused (binascii.Error; UnicodeDecodeError for bytes that are no text, a file's own bytes)."""
    text = (text.decode("ascii") if isinstance(text, bytes) else text).strip()
    prefix = DATA_URL.match(text)
    return base64.b64decode("".join(text[prefix.end() if prefix else 0:].split()), validate=True)


EXIF_ORIENTATION = 0x0112
SWAPS_SIDES = {5, 6, 7, 8}  # orientations that rotate by 90 degrees
TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # as ImageOps.exif_transpose, which copies even an upright image


def to_rgb(image: Image.Image) -> np.ndarray:
    """Upright HxWx3 uint8 pixels: EXIF orientation applied, alpha composited on white, any mode to RGB.
    Takes ownership of `image`; an RGB image without a rotation is never copied (catalogue scoring decodes
    millions of them)."""
    method = TRANSPOSES.get(exif_orientation(image))
    if method is not None:
        image = image.transpose(method)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    elif image.mode.startswith("I;16") or image.mode in ("I", "F"):  # 16-bit or float grey: scale, do not clip
        values = np.asarray(image, dtype=np.float64)
        values = values / 257 if values.max(initial=0) > 255 else values
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1, upright, when absent), read from the header without decoding; a
    malformed EXIF block counts as upright, as image viewers treat it."""
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:
        return 1


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as shown, after the EXIF orientation, read from the header without decoding."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in SWAPS_SIDES else (width, height)


def draft(image: Image.Image, min_side: int | None) -> None:
    """Before decoding: a JPEG decodes at 1/2, 1/4 or 1/8 scale while both sides stay >= `min_side`
    (`Preprocessing.decode_side`); other formats, or None, decode in full."""
    if min_side is not None and image.format == "JPEG":
        image.draft("RGB", (min_side, min_side))


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes, in one read (not one per 4 KiB block). A storage URI (`s3://bucket/1.jpg`, `gs://`, `az://`,
    `hdfs://`, `file://`) is read through fsspec, so a catalogue kept in an object store is scored where it is (on
    Spark, by each executor): the protocol's package (s3fs, gcsfs, adlfs, ...) must be installed, and fsspec says
    which. A web address is not fetched: the pyfunc takes paths from its clients, and a model server that requests
    whatever address a client names reaches the services behind it."""
    if isinstance(path, str) and URI.match(path):
        import fsspec

        if path.split("://", 1)[0].lower() not in STORAGE or "::" in path:   # `::` chains another fsspec URL on
            raise ImageReadError(f"cannot read {path}: only storage is read ({', '.join(sorted(STORAGE))}), not a web "
                                 "address or another scheme: download the images first")

        try:
            with fsspec.open(path, "rb") as file:
                return file.read()
        except FileNotFoundError:   # fsspec's message is the bare path: say it as for a local file
            raise FileNotFoundError(2, "No such file or directory", path) from None
        except ImportError as err:   # "Install s3fs to access S3": the fix, for this row's error
            raise ImageReadError(f"cannot read {path}: {err}") from None
    return Path(path).read_bytes()


URI = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]+://")   # two letters at least: C:\ is a Windows path
STORAGE = {"file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "hdfs", "memory"}   # fsspec's names


def load_rgb(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Decode to an upright HxWx3 uint8 array; `min_side` lets JPEG decoding downscale while keeping >= min_side."""
    try:
        data = io.BytesIO(read_bytes(path))
        with Image.open(data) as image:
            draft(image, min_side)
            return to_rgb(image)
    except UnidentifiedImageError:   # Pillow's own message names the in-memory buffer, not the file
        raise ImageReadError(f"cannot decode image {path}: cannot identify image file") from None
    except ImageReadError:   # said already (a URI's missing package)
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
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


def split_usable(frame: pd.DataFrame, check: bool = True) -> tuple[pd.DataFrame, list[int], list[int]]:
    """The rows (columns id, path) whose image exists and, with `check`, decodes; and the ids of the
    missing and of the corrupt ones. Training's table and every evaluation set go through here."""
    exists = frame["path"].map(lambda p: Path(p).is_file()).to_numpy(dtype=bool)
    missing, frame = frame.loc[~exists, "id"].tolist(), frame[exists]
    bad = {str(p) for p in find_unreadable([Path(p) for p in frame["path"]])} if check and len(frame) else set()
    corrupt = frame["path"].isin(bad)
    return frame[~corrupt].reset_index(drop=True), missing, frame.loc[corrupt, "id"].tolist()


def under_other_names(folder: Path, ids: list[int]) -> str:
    """Said when no product has a readable `<id>.jpg`: a shop's own export is often PNG or WebP, and "48 without an
    image file" beside a folder of 48 photos reads as a riddle."""
    wanted = {str(i) for i in ids}
    found = sorted(p.name for p in folder.iterdir() if p.stem in wanted and p.suffix != ".jpg") if folder.is_dir() else []
    return (f"; {len(found)} of them are there under another name (such as {found[0]}), and the layout is "
            "images/<id>.jpg: convert them to JPEG") if found else ""
