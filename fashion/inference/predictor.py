"""Images in, per-attribute labels, confidences and top-k out: the one place inference is defined.

The CLI, the REST API and the MLflow pyfunc all call `Predictor.predict`, so they cannot disagree.
Preprocessing is the training run's own: a JPEG decoded at the same scale (`Predictor.load`,
`decode_side`), then its eval transform (resize longest side, pad on white, normalise), so served
predictions see exactly what validation saw (tests/test_exif_orientation.py tries every path).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fashion.data.images import load_rgb
from fashion.data.taxonomy import decode_levels
from fashion.inference.checkpoint import TrainedModel


@dataclass
class Prediction:
    """One attribute of one image: the label, its calibrated confidence, and whether the model's decision
    rule accepts it or a person should review it. `source` is `taxonomy` when decoding the taxonomy levels
    together chose another label than this head's own first choice."""

    label: str
    confidence: float
    top_k: list[tuple[str, float]]
    source: str = "model"
    accepted: bool = False

    @property
    def status(self) -> str:
        return "accepted" if self.accepted else "needs_review"

    def to_dict(self) -> dict:
        return {"label": self.label, "confidence": self.confidence, "status": self.status, "source": self.source,
                "top_k": [{"label": label, "confidence": p} for label, p in self.top_k]}


@dataclass
class Tags:
    """One batch's Predictions as columns, {attribute: one value per image}: catalogue scoring writes
    millions of rows, and an object per tag cost it more CPU than decoding the photos."""

    labels: dict[str, list[str]]
    confidence: dict[str, list[float]]
    accepted: dict[str, list[bool]]
    source: dict[str, list[str]]
    top_labels: dict[str, list[list[str]]]
    top_values: dict[str, list[list[float]]]

    def __len__(self) -> int:
        return len(next(iter(self.labels.values()), []))

    def predictions(self, row: int) -> dict[str, Prediction]:
        return {a: Prediction(self.labels[a][row], self.confidence[a][row], list(zip(self.top_labels[a][row], self.top_values[a][row])),
                              self.source[a][row], self.accepted[a][row]) for a in self.labels}


class Predictor:
    """Images in, labels with confidences and review decisions out; the forward pass is eager PyTorch
    (see OnnxPredictor). `taxonomy`: decode articleType/subCategory/masterCategory together (default)."""

    runtime = "torch"

    def __init__(self, trained: TrainedModel, top_k: int = 3, batch_size: int = 32, taxonomy: bool = True) -> None:
        if top_k < 1 or batch_size < 1:   # the CLIs refuse these at the key; this is for callers from code
            raise ValueError(f"top_k and batch_size must be at least 1, got top_k={top_k}, batch_size={batch_size}")
        self.trained = trained
        self.local = threading.local()   # one transform per thread: an albumentations pipeline keeps state per call
        self.top_k, self.batch_size, self.taxonomy = top_k, batch_size, taxonomy

    @property
    def attributes(self) -> list[str]:
        return self.trained.attributes

    @property
    def model(self) -> torch.nn.Module:
        """The PyTorch network (Grad-CAM needs it whatever the runtime); built on first use."""
        return self.trained.model

    def load(self, path: str | Path) -> np.ndarray:
        """An image file -> upright RGB pixels, decoded as training and evaluation decode it (`decode_side`)."""
        return load_rgb(path, min_side=self.trained.preprocessing.decode_side)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """One decoded RGB image -> uint8 pixels resized and padded as the training run's eval transform
        does; `to_tensor` normalises a batch of them. Safe to call from several threads at once (the API's
        worker threads, catalogue scoring's lanes)."""
        transform = getattr(self.local, "geometry", None)
        if transform is None:
            transform = self.local.geometry = self.trained.preprocessing.geometry()
        return transform(image=image)["image"]

    def normalise(self, padded: list[np.ndarray]) -> torch.Tensor:
        return self.trained.preprocessing.normalise(padded)

    def to_tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        """Decoded RGB images -> the model's input batch: exactly the training run's eval transform, stacked."""
        return self.normalise([self.preprocess(image) for image in images])

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Calibrated softmax per attribute for a preprocessed batch (N, 3, H, W)."""
        logits = self.model(batch.contiguous(memory_format=torch.channels_last))
        return {a: torch.softmax(l.float(), dim=1) for a, l in logits.items()}

    def predict(self, images: list[np.ndarray]) -> list[dict[str, Prediction]]:
        """Decoded RGB uint8 images (H, W, 3) -> one {attribute: Prediction} per image."""
        results: list[dict[str, Prediction]] = []
        for start in range(0, len(images), self.batch_size):
            probs = self.probabilities(self.to_tensor(images[start:start + self.batch_size]))
            results += self.decode(probs)
        return results

    def choose(self, probs: dict[str, torch.Tensor], taxonomy: bool | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The class index per attribute (N,) and its served confidence (N,): each head's own, or with the
        taxonomy levels decoded together (`taxonomy`, by default the predictor's setting) their joint
        confidence as the decision scales it (a decision from before keeps the heads' own)."""
        joint = (self.taxonomy if taxonomy is None else taxonomy) and self.trained.taxonomy is not None
        classes = {a: v.classes for a, v in self.trained.vocabularies.items()}
        chosen, decoded = decode_levels(probs, self.trained.taxonomy if joint else None, classes)
        head = {a: p.gather(1, chosen[a].view(-1, 1)).squeeze(1) for a, p in probs.items()}
        return chosen, {a: self.trained.decision.confidence(a, head[a], decoded[a] if joint else None) for a in probs}

    def tags(self, probs: dict[str, torch.Tensor]) -> Tags:
        """A batch's served tags as columns: what `decode` turns into Predictions, and what catalogue
        scoring writes as table columns without building an object per tag (fashion/inference/outputs.py)."""
        chosen, confidence = self.choose(probs)
        joint = self.taxonomy and self.trained.taxonomy is not None
        tags = Tags({}, {}, {}, {}, {}, {})
        for attribute, p in probs.items():
            classes = np.asarray(self.trained.vocabularies[attribute].classes, dtype=object)
            values, indices = p.topk(min(self.top_k, p.shape[1]), dim=1)
            picked = chosen[attribute]
            tags.labels[attribute] = classes[picked.numpy()].tolist()
            tags.confidence[attribute] = [round(c, 6) for c in confidence[attribute].tolist()]
            tags.accepted[attribute] = self.trained.decision.accepts(attribute, confidence[attribute], joint).tolist()
            tags.source[attribute] = ["model" if same else "taxonomy" for same in (picked == indices[:, 0]).tolist()]
            tags.top_labels[attribute] = classes[indices.numpy()].tolist()
            tags.top_values[attribute] = [[round(v, 6) for v in row] for row in values.tolist()]
        return tags

    def decode(self, probs: dict[str, torch.Tensor]) -> list[dict[str, Prediction]]:
        """`top_k` is each head's own calibrated probabilities; `confidence` that of the served label."""
        tags = self.tags(probs)
        return [tags.predictions(row) for row in range(len(tags))]
