"""A few hundred malformed uploads, generated from a fixed seed, against the running API.

Every one must get a 200 or a documented 4xx in the documented error shape, never a 500, and the
server must still answer afterwards. The cases are the ones real traffic and attackers send:
truncated and bit-flipped files, wrong magic bytes, huge dimensions in a tiny file, archives renamed
.jpg, animated and multi-page images, 16-bit, CMYK and transparent images, 1x1 and 10000x10 images,
malformed EXIF, and plain junk.
"""

from __future__ import annotations

import base64
import gzip
import io
import struct
import tarfile
import zipfile
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fashion.serving.app import create_app
from fashion.serving.errors import ERROR_CODES
from fashion.serving.uploads import UploadLimits

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff\xe0", "gif": b"GIF89a", "zip": b"PK\x03\x04",
         "pdf": b"%PDF-1.7", "elf": b"\x7fELF"}


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(rng: np.random.Generator, width: int = 40, height: int = 30, mode: str = "RGB") -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").convert(mode)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_dimension_files() -> dict[str, bytes]:
    """Headers that claim billions of pixels, in files of a few dozen bytes."""
    png = MAGIC["png"] + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)) \
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b"")
    gif = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0) + b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) \
        + b"\x02\x02\x44\x01\x00\x3b"
    bmp_info = struct.pack("<IiiHHIIiiII", 40, 50_000, 50_000, 1, 24, 0, 0, 0, 0, 0, 0)
    bmp = b"BM" + struct.pack("<IHHI", 14 + len(bmp_info) + 16, 0, 0, 14 + len(bmp_info)) + bmp_info + b"\x00" * 16
    jpeg = bytearray(encode(Image.new("RGB", (16, 16)), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)
    tiff = bytearray(encode(Image.new("L", (4, 4)), "TIFF"))
    return {"png_100000x100000": png, "gif_65535x65535": gif, "bmp_50000x50000": bmp, "jpeg_65000x65000": bytes(jpeg),
            "tiff_header_only": bytes(tiff[:8]) + b"\x00" * 8}


def archives(jpeg: bytes) -> dict[str, bytes]:
    def zipped(name: str, data: bytes) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(name, data)
        return buffer.getvalue()
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("photo.jpg")
        info.size = len(jpeg)
        archive.addfile(info, io.BytesIO(jpeg))
    return {"zip_of_jpeg": zipped("photo.jpg", jpeg), "zip_in_zip": zipped("inner.zip", zipped("photo.jpg", jpeg)),
            "tar_gz_of_jpeg": tar_buffer.getvalue(), "gzip_of_jpeg": gzip.compress(jpeg)}


def odd_images(rng: np.random.Generator) -> dict[str, bytes]:
    frames = [photo(rng) for _ in range(3)]
    sixteen = Image.fromarray(rng.integers(0, 65536, (30, 40), dtype=np.uint16))
    transparent = photo(rng, mode="RGBA")
    palette = photo(rng).convert("P", palette=Image.Palette.ADAPTIVE)
    exif_garbage = bytearray(encode(photo(rng), "JPEG"))
    app1 = b"Exif\x00\x00" + bytes(rng.integers(0, 256, 200, dtype=np.uint8))
    exif_garbage[2:2] = b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
    bad_orientation = Image.Exif()
    bad_orientation[0x0112] = 99
    return {
        "animated_gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "animated_webp": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50),
        "apng": encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "multipage_tiff": encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "png_16bit_grey": encode(sixteen, "PNG"),
        "tiff_16bit_grey": encode(sixteen, "TIFF"),
        "tiff_float": encode(Image.fromarray(rng.random((30, 40), dtype=np.float32) * 1000), "TIFF"),
        "jpeg_cmyk": encode(photo(rng, mode="CMYK"), "JPEG"),
        "tiff_cmyk": encode(photo(rng, mode="CMYK"), "TIFF"),
        "png_rgba": encode(transparent, "PNG"),
        "webp_rgba": encode(transparent, "WEBP"),
        "png_la": encode(transparent.convert("LA"), "PNG"),
        "png_palette_transparent": encode(palette, "PNG", transparency=0),
        "png_1bit": encode(photo(rng).convert("1"), "PNG"),
        "jpeg_grey": encode(photo(rng, mode="L"), "JPEG"),
        "jpeg_exif_garbage": bytes(exif_garbage),
        "jpeg_exif_orientation_99": encode(photo(rng), "JPEG", exif=bad_orientation),
        "ppm": encode(photo(rng), "PPM"),
        "ico": encode(photo(rng, 32, 32), "ICO"),
        **{f"{fmt.lower()}_1x1": encode(Image.new("RGB", (1, 1), (200, 10, 10)), fmt) for fmt in FORMATS},
        "png_10000x10": encode(photo(rng, 10000, 10), "PNG"),
        "jpeg_10x10000": encode(photo(rng, 10, 10000), "JPEG"),
        "gif_10000x10": encode(photo(rng, 10000, 10), "GIF"),
    }


def junk(rng: np.random.Generator) -> dict[str, bytes]:
    cases = {f"random_{n}": bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in (1, 2, 7, 64, 511, 4096, 70_000)}
    cases |= {f"magic_then_random_{name}": magic + bytes(rng.integers(0, 256, 300, dtype=np.uint8))
              for name, magic in MAGIC.items()}
    cases |= {"empty": b"", "text": b"just,a,csv\n1,2,3\n", "html": b"<html><body>hi</body></html>",
              "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "json": b'{"image": 1}',
              "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"}
    return cases


def malformed_uploads(seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    valid = {fmt: encode(photo(rng), fmt) for fmt in FORMATS}
    cases: dict[str, bytes] = {}
    for fmt, data in valid.items():
        for i, cut in enumerate(sorted(rng.integers(1, len(data), 14))):
            cases[f"{fmt}_truncated_{i}_at_{cut}"] = data[:cut]
        for i in range(20):
            flipped = bytearray(data)
            for position in rng.integers(0, len(data), int(rng.integers(1, 24))):
                flipped[position] ^= int(rng.integers(1, 256))
            cases[f"{fmt}_bitflips_{i}"] = bytes(flipped)
        for name, magic in MAGIC.items():
            cases[f"{fmt}_with_{name}_magic"] = magic + data[len(magic):]
    cases |= huge_dimension_files() | archives(valid["JPEG"]) | odd_images(rng) | junk(rng)
    return cases


CASES = malformed_uploads()


@pytest.fixture(scope="module")
def client(trained):
    with TestClient(create_app(trained.bundle, UploadLimits(max_bytes=2_000_000)), raise_server_exceptions=False) as test_client:
        yield test_client


def assert_documented(response, name: str) -> None:
    assert response.status_code != 500, f"{name}: {response.text}"
    if response.status_code == 200:
        assert "predictions" in response.json() or "results" in response.json(), name
        return
    error = response.json()["error"]
    assert error["code"] in ERROR_CODES and ERROR_CODES[error["code"]][0] == response.status_code, f"{name}: {error}"
    assert error["message"], name


def test_there_are_a_few_hundred_cases_of_every_kind():
    assert len(CASES) >= 250
    for kind in ("truncated", "bitflips", "magic", "100000x100000", "zip_in_zip", "animated_gif", "multipage_tiff",
                 "16bit", "cmyk", "1x1", "10000x10", "exif_garbage", "random_"):
        assert any(kind in name for name in CASES), kind


def test_every_malformed_upload_gets_a_documented_answer_and_the_server_stays_healthy(client):
    statuses: dict[int, int] = {}
    for name, data in CASES.items():
        response = client.post("/v1/predict", files={"file": (f"{name}.jpg", data, "image/jpeg")})
        assert_documented(response, name)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert statuses.get(200, 0) > 20 and sum(n for s, n in statuses.items() if s >= 400) > 100, statuses
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    good = encode(Image.new("RGB", (40, 30), (30, 40, 190)), "PNG")
    assert client.post("/v1/predict", files={"file": ("ok.png", good, "image/png")}).status_code == 200


def test_the_base64_and_batch_endpoints_answer_the_same_way(client):
    names = list(CASES)[::7]
    for name in names:
        assert_documented(client.post("/v1/predict/base64", json={"image": base64.b64encode(CASES[name]).decode(),
                                                                  "filename": name}), name)
    for start in range(0, len(names), 3):
        batch = [("files", (f"{n}.jpg", CASES[n], "image/jpeg")) for n in names[start:start + 3]]
        assert_documented(client.post("/v1/predict/batch", files=batch), ",".join(names[start:start + 3]))
    assert client.get("/health").status_code == 200
