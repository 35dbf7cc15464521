"""Grad-CAM: which pixels drove an attribute's decision, as a heatmap over the original image.

The gradient of the predicted class's logit with respect to the backbone's last feature map weighs
its channels (Selvaraju et al., 2017). It runs the network's own stages (`Backbone.feature_map`,
`pool_features`, `MultiHeadTagger.classify`), so it explains exactly what the model computes. The heatmap is cropped out of the letterbox
padding and resized to the image's own size, so it overlays the photo the user sent: the API returns it
as a PNG, fashion-predict writes it over the photo (`explain=`, `explained_batches`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePath

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fashion.data.images import ImageReadError, load_rgb
from fashion.inference.outputs import ScoredBatch, as_text
from fashion.inference.predictor import Predictor


def explained_attributes(explain: str | bool | None, attributes: list[str]) -> list[str]:
    """The attributes an `explain` request names: `a,b` (spaces allowed), `all`/`true`, or none (empty,
    `false`); ValueError naming any the model does not predict. The CLI and the API read it alike (Hydra
    reads the CLI's `explain=true` as a boolean)."""
    explain = str(explain) if isinstance(explain, bool) else explain
    if not explain or explain.lower() in ("false", "0", "no"):
        return []
    if explain.lower() in ("true", "1", "yes", "all"):
        return list(attributes)
    wanted = [a.strip() for a in explain.split(",") if a.strip()]
    unknown = [a for a in wanted if a not in attributes]
    if unknown:
        raise ValueError(f"explain names {unknown}; the model predicts {attributes}")
    return wanted


def grad_cam(predictor: Predictor, image: np.ndarray, attributes: list[str], size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """{attribute: heatmap in 0..1, shape (height, width) of `size` or of `image`}."""
    model = predictor.model
    backbone = model.backbone
    unknown = [a for a in attributes if a not in predictor.attributes]
    if unknown:
        raise ValueError(f"cannot explain {unknown}: the model predicts {predictor.attributes}")
    batch = predictor.to_tensor([image])
    with torch.enable_grad():
        feature_map = backbone.feature_map(batch).detach().requires_grad_(True)
        logits = model.classify(backbone.pool_features(feature_map), model.extra_features(batch))
        heatmaps = {}
        for attribute in attributes:
            score = logits[attribute][0, logits[attribute][0].argmax()]
            (gradient,) = torch.autograd.grad(score, feature_map, retain_graph=True)
            weights = gradient.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((weights * feature_map).sum(dim=1, keepdim=True)).detach()
            heatmaps[attribute] = unletterbox(cam, image.shape[:2], predictor.trained.preprocessing.image_size, size)
    return heatmaps


def unletterbox(cam: torch.Tensor, image_hw: tuple[int, int], model_size: int, size: tuple[int, int] | None) -> np.ndarray:
    """Model-input heatmap -> the image's frame: drop the padding, resize to (width, height) `size`."""
    full = F.interpolate(cam, size=(model_size, model_size), mode="bilinear", align_corners=False)[0, 0].numpy()
    height, width = image_hw
    scale = model_size / max(height, width)
    inner_h, inner_w = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (model_size - inner_h) // 2, (model_size - inner_w) // 2
    crop = full[top:top + inner_h, left:left + inner_w]
    out_w, out_h = size or (width, height)
    heat = cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    low, high = float(heat.min()), float(heat.max())
    return (heat - low) / (high - low) if high > low else np.zeros_like(heat)


def heatmap_png(heatmap: np.ndarray) -> str:
    """A heatmap as base64 PNG (jet colour map, alpha = heat), ready for an <img> overlay."""
    rgb = cv2.applyColorMap((heatmap * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    alpha = (heatmap * 200).astype(np.uint8)[:, :, None]
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def overlay_names(files: list[str | Path]) -> dict[str | Path, str]:
    """A name per input for its overlays: the file's stem as text (`as_text`: the output names it), and where two
    inputs share one (a/front.jpg, b/front.jpg) a hash of the whole path after it, so no overlay is written over
    another's."""
    stem = {path: PurePath(path).stem for path in files}   # a URI's too (s3://bucket/front.jpg: front)
    stems = Counter(stem.values())
    return {path: as_text(stem[path]) if stems[stem[path]] == 1 else
            f"{as_text(stem[path])}-{hashlib.sha1(os.fsencode(path)).hexdigest()[:8]}" for path in files}


def save_overlays(predictor: Predictor, image, path: str | Path, name: str, attributes: list[str], folder: Path) -> dict[str, str]:
    """Grad-CAM overlays as PNGs `<name>_<attribute>.png` in `folder`, on the photo at its own size (`image`
    is what the model saw, decoded at its `decode_side`); returns {attribute: file}."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    photo = load_rgb(path)
    for attribute, heat in grad_cam(predictor, image, attributes, size=(photo.shape[1], photo.shape[0])).items():
        colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
        overlay = (0.55 * photo + 0.45 * colour).astype(np.uint8)
        target = folder / f"{name}_{attribute}.png"
        cv2.imwrite(str(target), overlay[:, :, ::-1])
        written[attribute] = str(target)
    return written


def explained_batches(predictor: Predictor, files: list[str | Path], explain: list[str], explain_dir: Path,
                      ) -> Iterator[ScoredBatch]:
    """Batches in input order, with Grad-CAM overlays; decoding happens batch by batch so memory stays flat on big folders."""
    names = overlay_names(files)
    for start in range(0, len(files), predictor.batch_size):
        chunk = files[start:start + predictor.batch_size]
        images, errors = [], []
        for path in chunk:
            try:
                images.append(predictor.load(path))
                errors.append(None)
            except ImageReadError as err:
                errors.append(str(err))
        tags = predictor.tags(predictor.probabilities(predictor.to_tensor(images))) if images else None
        decoded = iter(images)
        extras = [{} if error else {"explanations": save_overlays(predictor, next(decoded), path, names[path], explain, explain_dir)}
                  for path, error in zip(chunk, errors)]
        yield ScoredBatch([str(path) for path in chunk], errors, tags, extras)
