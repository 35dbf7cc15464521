"""Per-attribute torchmetrics: accuracy, macro-F1, top-5 (heads with > 5 classes), confusion matrix,
and for test and evaluation sets the confidence record (ECE, coverage at the model's thresholds)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torchmetrics import MetricCollection, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from fashion.data.vocab import IGNORE_INDEX
from fashion.metrics.confidence import ConfidenceRecord, confidence_scores

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


def logged_names(num_classes: Mapping[str, int], stage: str) -> list[str]:
    """The names AttributeMetrics(num_classes, stage).compute() returns, confidence scores aside: known before
    any batch, so a run can refuse to monitor one it will never log."""
    return [f"{stage}/mean_acc", f"{stage}/mean_f1",
            *(f"{stage}/{a}/{name}" for a, n in num_classes.items() for name in attribute_metrics(n).keys())]


class AttributeMetrics(nn.Module):
    """Metrics for every head of one stage, named `<stage>/<attribute>/<metric>` plus stage means."""

    def __init__(self, num_classes: Mapping[str, int], stage: str, confusion: bool = False, confidence: bool = False) -> None:
        super().__init__()
        self.stage = stage
        self.metrics = nn.ModuleDict({a: attribute_metrics(n) for a, n in num_classes.items()})
        self.confusion = (
            nn.ModuleDict({a: MulticlassConfusionMatrix(n, ignore_index=IGNORE_INDEX) for a, n in num_classes.items()})
            if confusion else None
        )
        self.records = nn.ModuleDict({a: ConfidenceRecord() for a in num_classes}) if confidence else None
        self.labelled = nn.ModuleDict({a: SumMetric() for a in num_classes})   # an attribute a folder does not label

    def update(self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
               temperatures: Mapping[str, float | torch.Tensor] | None = None,
               served: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """`temperatures`: what divided these logits, so the record can score the uncalibrated model too;
        `served`: (confidence, class) where what is served is not the head's own top label (the taxonomy)."""
        for attribute, collection in self.metrics.items():
            collection.update(logits[attribute].float(), targets[attribute])
            self.labelled[attribute].update((targets[attribute] != IGNORE_INDEX).sum())
            if self.confusion is not None:
                self.confusion[attribute].update(logits[attribute].float(), targets[attribute])
            if self.records is not None:
                self.records[attribute].update(logits[attribute], targets[attribute], (temperatures or {}).get(attribute, 1.0),
                                               (served or {}).get(attribute))

    def compute(self, thresholds: Mapping[str, float | None] | None = None) -> dict[str, torch.Tensor]:
        """`thresholds`: the model's acceptance thresholds, for coverage and accepted precision. An attribute without
        a single label (a folder labelling some attributes only) has no scores, and the means leave it out: torchmetrics
        gives it an accuracy of 0, which read as a model that gets every one wrong, and pulled the means down."""
        values = {}
        labelled = [a for a in self.metrics if self.labelled[a].compute() > 0]
        for attribute in labelled:
            for name, value in self.metrics[attribute].compute().items():
                values[f"{self.stage}/{attribute}/{name}"] = value
            if self.records is not None:
                scores = confidence_scores(self.records[attribute].rows(), (thresholds or {}).get(attribute))
                values |= {f"{self.stage}/{attribute}/{k}": torch.tensor(v) for k, v in scores.items()}
        for name in ("acc", "f1"):
            per_attribute = [values[f"{self.stage}/{a}/{name}"] for a in labelled]
            if per_attribute:
                values[f"{self.stage}/mean_{name}"] = torch.stack(per_attribute).mean()
        return values

    def confusion_matrices(self) -> dict[str, torch.Tensor]:
        if self.confusion is None:
            return {}
        return {a: m.compute().cpu() for a, m in self.confusion.items()}

    def confidence_records(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per attribute (confidence, correct, uncalibrated confidence): for the diagrams."""
        return {a: r.rows() for a, r in self.records.items()} if self.records is not None else {}

    def reset(self) -> None:
        for collection in self.metrics.values():
            collection.reset()
        if self.confusion is not None:
            for matrix in self.confusion.values():
                matrix.reset()
        if self.records is not None:
            for record in self.records.values():
                record.reset()
        for count in self.labelled.values():
            count.reset()
