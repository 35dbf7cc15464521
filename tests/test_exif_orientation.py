"""A phone photo stores its pixels sideways and says so in EXIF: every path that reads images must
show the model the photo upright, as every image viewer does."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fashion.data.images import load_rgb
from fashion.inference import Predictor
from fashion.inference.pyfunc import decode_base64_image
from fashion.predict import main as predict_main
from fashion.serving.app import create_app
from fashion.serving.uploads import UploadLimits, decode_upload
from tests.conftest import SAMPLE

ROTATE_90_CW = 6   # EXIF orientation: "rotate 90 degrees clockwise to display"


def upright_photo() -> Image.Image:
    """A real product photo at a true 3:4 portrait aspect, so sideways differs in shape as well as content."""
    source = sorted((SAMPLE / "images").glob("*.jpg"))[3]
    return Image.open(source).convert("RGB").resize((90, 120))


def save_pair(folder: Path, fmt: str) -> tuple[Path, Path]:
    """The upright photo, and the same photo stored as a phone stores it: pixels turned, EXIF saying so."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = {"JPEG": "jpg", "PNG": "png"}[fmt]
    upright, sideways = folder / f"upright.{suffix}", folder / f"sideways.{suffix}"
    photo = upright_photo()
    photo.save(upright, format=fmt)
    exif = Image.Exif()
    exif[0x0112] = ROTATE_90_CW
    photo.transpose(Image.Transpose.ROTATE_90).save(sideways, format=fmt, exif=exif)
    return upright, sideways


def ignoring_exif(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_load_rgb_applies_the_orientation(tmp_path):
    upright, sideways = save_pair(tmp_path / "png", "PNG")
    assert ignoring_exif(sideways).shape == (90, 120, 3)     # stored sideways
    assert np.array_equal(load_rgb(sideways), load_rgb(upright))
    jpeg_upright, jpeg_sideways = save_pair(tmp_path / "jpeg", "JPEG")
    decoded = load_rgb(jpeg_sideways)
    assert decoded.shape == (120, 90, 3)
    assert np.abs(decoded.astype(int) - load_rgb(jpeg_upright).astype(int)).mean() < 3   # JPEG noise only
    assert load_rgb(jpeg_sideways, min_side=40).shape[0] > load_rgb(jpeg_sideways, min_side=40).shape[1]  # draft too


def test_a_rotated_photo_gets_the_upright_photos_pixels_and_prediction_everywhere(trained, tmp_path, monkeypatch):
    upright, sideways = save_pair(tmp_path, "PNG")
    expected = load_rgb(upright)
    seen: list[np.ndarray] = []   # what the model is given, on every path below
    original = Predictor.preprocess

    def spy(self, image):
        seen.append(image)
        return original(self, image)
    monkeypatch.setattr(Predictor, "preprocess", spy)

    # API and upload page
    with TestClient(create_app(trained.bundle, runtime="torch")) as client:
        answers = [client.post("/v1/predict", files={"file": (p.name, p.read_bytes(), "image/png")}).json() for p in (upright, sideways)]
    assert answers[0]["predictions"] == answers[1]["predictions"]
    assert decode_upload(sideways.read_bytes(), UploadLimits()).size == (90, 120)   # the heatmap overlays the upright photo
    # MLflow pyfunc (base64 rows)
    assert np.array_equal(decode_base64_image(base64.b64encode(sideways.read_bytes()).decode()), expected)
    # fashion-predict (fashion-eval and training read through the same load_rgb)
    out = tmp_path / "rows.jsonl"
    assert predict_main([str(upright), str(sideways), "--bundle", str(trained.bundle), "--runtime", "torch",
                         "--output", str(out), "--workers", "0"]) == 0   # decoded here, where the spy sees it
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["predictions"] == rows[1]["predictions"]

    assert len(seen) == 4 and not np.array_equal(ignoring_exif(sideways), expected)
    for image in seen:
        assert np.array_equal(image, expected)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_a_transparent_background_becomes_white(tmp_path, mode):
    pixels = np.zeros((20, 20, 4), dtype=np.uint8)
    pixels[5:15, 5:15] = (200, 30, 30, 255)              # an opaque red product on a transparent background
    image = Image.fromarray(pixels, "RGBA")
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
        image.info["transparency"] = image.getpixel((0, 0))
    path = tmp_path / f"{mode}.png"
    image.save(path, transparency=image.info.get("transparency")) if mode == "P" else image.save(path)
    rgb = load_rgb(path)
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[10, 10]) != (255, 255, 255)


def test_a_large_photo_reaches_the_model_as_training_decoded_it_everywhere(trained, tmp_path, monkeypatch):
    """libjpeg can decode a large JPEG at 1/2, 1/4 or 1/8 scale. Training and evaluation decode at the model's
    `decode_side`; if a serving path decoded in full, a large photo would reach the served model as other
    pixels than validation saw (and decode 8x slower)."""
    from fashion.data.dataset import ProductImages
    from fashion.inference.runtime import load_predictor

    big = tmp_path / "big.jpg"
    upright_photo().resize((900, 1200), Image.Resampling.BICUBIC).save(big, quality=92)
    side = load_predictor(bundle=trained.bundle, runtime="torch").trained.preprocessing.decode_side
    expected = ProductImages([str(big)], {}, lambda image: {"image": image}, side)[0][0]   # the training/eval loader
    assert side <= min(expected.shape[:2]) < 900 and not np.array_equal(expected.shape, load_rgb(big).shape)
    seen: list[np.ndarray] = []
    original = Predictor.preprocess

    def spy(self, image):
        seen.append(image)
        return original(self, image)
    monkeypatch.setattr(Predictor, "preprocess", spy)

    with TestClient(create_app(trained.bundle, runtime="torch")) as client:   # the API and the upload page
        assert client.post("/v1/predict", files={"file": (big.name, big.read_bytes(), "image/jpeg")}).status_code == 200
        body = {"image": base64.b64encode(big.read_bytes()).decode()}
        assert client.post("/v1/predict/base64", json=body).status_code == 200
    assert predict_main([str(big), f"bundle={trained.bundle}", "runtime=torch", f"output={tmp_path / 'rows.jsonl'}"]) == 0
    assert predict_main([str(big), f"bundle={trained.bundle}", f"output={tmp_path / 'onnx.jsonl'}"]) == 0   # the lanes
    assert np.array_equal(decode_base64_image(body["image"], side), expected)   # the pyfunc's base64 rows
    assert len(seen) == 4
    for image in seen:
        assert np.array_equal(image, expected)
