"""Per-attribute classification losses, masked where a label is missing (IGNORE_INDEX)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fashion.data.vocab import IGNORE_INDEX
from fashion.validation import Probability


def _masked(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = target != IGNORE_INDEX
    return logits[keep], target[keep]


class CrossEntropy:
    """Cross-entropy with optional label smoothing and class weights; 0 when a batch has no label."""

    def __init__(self, label_smoothing: Probability = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        logits, target = _masked(logits, target)
        if target.numel() == 0:
            return logits.sum() * 0.0  # keeps the graph (and DDP's gradient buckets) intact
        return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=self.label_smoothing)


class FocalLoss:
    """Focal loss (Lin et al. 2017): down-weights easy examples so rare classes get more signal."""

    def __init__(self, gamma: float = 2.0, label_smoothing: Probability = 0.0) -> None:
        self.gamma, self.label_smoothing = gamma, label_smoothing

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        logits, target = _masked(logits, target)
        if target.numel() == 0:
            return logits.sum() * 0.0
        logits = logits.float()
        ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        p_true = torch.exp(-F.cross_entropy(logits, target, reduction="none"))
        loss = (1.0 - p_true) ** self.gamma * ce
        if weight is None:
            return loss.mean()
        w = weight[target]
        return (loss * w).sum() / w.sum()
