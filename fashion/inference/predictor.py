"""Images in, per-attribute labels, confidences and top-k out: the one place inference is defined.

The CLI, the REST API and the MLflow pyfunc all call `Predictor.predict`, so they cannot disagree.
Preprocessing is the training run's own eval transform (resize longest side, pad on white,
normalise), so served predictions see exactly what validation saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fashion.inference.checkpoint import TrainedModel


@dataclass
class Prediction:
    """One attribute of one image. `source` is `taxonomy` when articleType decided the label."""

    label: str
    confidence: float
    top_k: list[tuple[str, float]]
    source: str = "model"

    def to_dict(self) -> dict:
        return {"label": self.label, "confidence": self.confidence, "source": self.source,
                "top_k": [{"label": label, "confidence": p} for label, p in self.top_k]}


class Predictor:
    """Images in, labels with confidences out; the forward pass is eager PyTorch (see OnnxPredictor)."""

    runtime = "torch"

    def __init__(self, trained: TrainedModel, top_k: int = 3, batch_size: int = 32, taxonomy: bool = False) -> None:
        self.trained = trained
        self.model = trained.model.eval()
        self.transform = trained.preprocessing.eval_transform()
        self.top_k, self.batch_size, self.taxonomy = top_k, batch_size, taxonomy

    @property
    def attributes(self) -> list[str]:
        return self.trained.attributes

    def to_tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        return torch.stack([self.transform(image=image)["image"] for image in images])

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Softmax per attribute for a preprocessed batch (N, 3, H, W)."""
        logits = self.model(batch.contiguous(memory_format=torch.channels_last))
        return {a: torch.softmax(l.float(), dim=1) for a, l in logits.items()}

    def predict(self, images: list[np.ndarray]) -> list[dict[str, Prediction]]:
        """Decoded RGB uint8 images (H, W, 3) -> one {attribute: Prediction} per image."""
        results: list[dict[str, Prediction]] = []
        for start in range(0, len(images), self.batch_size):
            probs = self.probabilities(self.to_tensor(images[start:start + self.batch_size]))
            results += self.decode(probs)
        return results

    def decode(self, probs: dict[str, torch.Tensor]) -> list[dict[str, Prediction]]:
        rows: list[dict[str, Prediction]] = [{} for _ in range(len(next(iter(probs.values()))))]
        for attribute, p in probs.items():
            classes = self.trained.vocabularies[attribute].classes
            values, indices = p.topk(min(self.top_k, p.shape[1]), dim=1)
            for row, (vals, idx) in enumerate(zip(values.tolist(), indices.tolist())):
                top = [(classes[i], round(v, 6)) for v, i in zip(vals, idx)]
                rows[row][attribute] = Prediction(top[0][0], top[0][1], top)
        if self.taxonomy:
            for row, prediction in enumerate(rows):
                self.apply_taxonomy(prediction, {a: p[row] for a, p in probs.items()})
        return rows

    def apply_taxonomy(self, prediction: dict[str, Prediction], probs: dict[str, torch.Tensor]) -> None:
        """Let articleType decide subCategory/masterCategory where the training data says it does."""
        article = prediction.get("articleType")
        parents = self.trained.taxonomy.get(article.label, {}) if article else {}
        for attribute, label in parents.items():
            current = prediction.get(attribute)
            vocab = self.trained.vocabularies.get(attribute)
            if current is None or vocab is None or current.label == label or label not in vocab.classes:
                continue
            confidence = round(float(probs[attribute][vocab.classes.index(label)]), 6)
            prediction[attribute] = Prediction(label, confidence, current.top_k, source="taxonomy")
