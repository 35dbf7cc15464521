"""Every scored prediction's top-label confidence and whether it was right: what ECE, reliability
diagrams and coverage at a threshold are computed from (`fashion.calibration.selective`).

Kept per sample, not binned, because the threshold is only known after calibration; a test split
or an evaluation set is a few thousand rows per attribute.
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from fashion.calibration.selective import reliability, selective_scores
from fashion.data.vocab import IGNORE_INDEX


class ConfidenceRecord(Metric):
    """`update(logits, targets, temperature)`: the logits are calibrated ones; `temperature` recovers
    the uncalibrated confidences (logits x T), so ECE before and after come from one pass."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("confidence", "correct", "uncalibrated"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, targets: torch.Tensor, temperature: float | torch.Tensor = 1.0,
               served: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """`served`: the (confidence, class) per row that is served instead of the head's top label."""
        labelled = targets != IGNORE_INDEX
        logits, targets = logits[labelled].float(), targets[labelled]
        confidence, predicted = torch.softmax(logits, dim=1).max(dim=1) if served is None else (
            served[0][labelled].float(), served[1][labelled])
        self.confidence.append(confidence)
        self.correct.append(predicted == targets)
        self.uncalibrated.append(torch.softmax(logits * temperature, dim=1).max(dim=1).values)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(confidence, correct, uncalibrated confidence) of every labelled row, gathered over DDP processes."""
        if isinstance(self.confidence, list) and not self.confidence:   # after a DDP sync it is one tensor
            empty = torch.zeros(0)
            return empty, empty.bool(), empty
        return tuple(dim_zero_cat(s).cpu() for s in (self.confidence, self.correct, self.uncalibrated))

    def rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`compute()`, one value per row even for one row: torchmetrics squeezes a one-element result to a
        0-d tensor, which the reliability bins cannot index (fashion-eval on a folder of one product)."""
        return tuple(values.reshape(-1) for values in self.compute())


def confidence_scores(record: tuple[torch.Tensor, torch.Tensor, torch.Tensor], threshold: float | None) -> dict[str, float]:
    """ECE after and before calibration, coverage and accepted precision at `threshold`; a score with
    no rows behind it (nothing labelled, nothing accepted) is left out rather than reported as NaN."""
    confidence, correct, uncalibrated = record
    scores = {"ece": reliability(confidence, correct)["ece"], "ece_uncalibrated": reliability(uncalibrated, correct)["ece"],
              **selective_scores(confidence, correct, threshold)}
    return {k: v for k, v in scores.items() if math.isfinite(v)}
