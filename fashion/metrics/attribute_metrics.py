"""Per-attribute torchmetrics: accuracy, macro-F1, top-5 (heads with > 5 classes), confusion matrix."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from fashion.data.vocab import IGNORE_INDEX

TOP_K = 5


def attribute_metrics(num_classes: int) -> MetricCollection:
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX),
        "f1": MulticlassF1Score(num_classes, average="macro", ignore_index=IGNORE_INDEX),
    }
    if num_classes > TOP_K:
        metrics[f"top{TOP_K}"] = MulticlassAccuracy(num_classes, top_k=TOP_K, average="micro", ignore_index=IGNORE_INDEX)
    # compute_groups=False: torchmetrics groups metrics whose states are equal after the first update
    # and from then on keeps one state per group, so a first batch that top-1 and top-5 both get
    # right made top-5 report top-1 accuracy for the whole epoch.
    return MetricCollection(metrics, compute_groups=False)


class AttributeMetrics(nn.Module):
    """Metrics for every head of one stage, named `<stage>/<attribute>/<metric>` plus stage means."""

    def __init__(self, num_classes: Mapping[str, int], stage: str, confusion: bool = False) -> None:
        super().__init__()
        self.stage = stage
        self.metrics = nn.ModuleDict({a: attribute_metrics(n) for a, n in num_classes.items()})
        self.confusion = (
            nn.ModuleDict({a: MulticlassConfusionMatrix(n, ignore_index=IGNORE_INDEX) for a, n in num_classes.items()})
            if confusion else None
        )

    def update(self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> None:
        for attribute, collection in self.metrics.items():
            collection.update(logits[attribute].float(), targets[attribute])
            if self.confusion is not None:
                self.confusion[attribute].update(logits[attribute].float(), targets[attribute])

    def compute(self) -> dict[str, torch.Tensor]:
        values = {}
        for attribute, collection in self.metrics.items():
            for name, value in collection.compute().items():
                values[f"{self.stage}/{attribute}/{name}"] = value
        for name in ("acc", "f1"):
            per_attribute = [values[f"{self.stage}/{a}/{name}"] for a in self.metrics]
            values[f"{self.stage}/mean_{name}"] = torch.stack(per_attribute).mean()
        return values

    def confusion_matrices(self) -> dict[str, torch.Tensor]:
        if self.confusion is None:
            return {}
        return {a: m.compute().cpu() for a, m in self.confusion.items()}

    def reset(self) -> None:
        for collection in self.metrics.values():
            collection.reset()
        if self.confusion is not None:
            for matrix in self.confusion.values():
                matrix.reset()
