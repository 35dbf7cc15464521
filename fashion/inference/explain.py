"""Grad-CAM: which pixels drove an attribute's decision, as a heatmap over the original image.

The gradient of the predicted class's logit with respect to the backbone's last feature map weighs
its channels (Selvaraju et al., 2017). It runs the network's own stages (`Backbone.feature_map`,
`pool_features`, `MultiHeadTagger.classify`), so it explains exactly what the model computes. The heatmap is cropped out of the letterbox
padding and resized to the image's own size, so it overlays the photo the user sent.
"""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

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
