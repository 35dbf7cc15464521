"""Selective prediction: accept a tag when its calibrated confidence clears a threshold, send the
rest to a person. The threshold is chosen on validation for a target precision; coverage (the share
accepted) is what it costs. Plus the reliability bins that ECE and the diagrams are made of.
"""

from __future__ import annotations

import torch

ECE_BINS = 15


def choose_threshold(confidence: torch.Tensor, correct: torch.Tensor, target_precision: float) -> float | None:
    """The lowest confidence whose accepted set (every prediction at or above it) reaches the target
    precision on these rows: the largest coverage that does. None when no such set exists.

    Cuts fall only between distinct confidences, since equal scores must share one decision.
    """
    if confidence.numel() == 0:
        return None
    order = torch.argsort(confidence, descending=True, stable=True)
    scores, hits = confidence[order].double(), correct[order].double()
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    boundary = torch.ones_like(scores, dtype=torch.bool)
    boundary[:-1] = scores[:-1] > scores[1:]
    ok = (precision >= target_precision) & boundary
    if not ok.any():
        return None
    return float(scores[int(ok.nonzero().max())])


def selective_scores(confidence: torch.Tensor, correct: torch.Tensor, threshold: float | None) -> dict[str, float]:
    """Coverage and the precision of the accepted predictions; nothing is accepted without a threshold."""
    total = confidence.numel()
    accepted = confidence >= threshold if threshold is not None else torch.zeros(total, dtype=torch.bool)
    count = int(accepted.sum())
    return {"coverage": count / total if total else float("nan"),
            "accepted_precision": float(correct[accepted].double().mean()) if count else float("nan")}


def reliability(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> dict[str, torch.Tensor | float]:
    """Top-label reliability over `bins` equal-width confidence bins: per bin the count, mean confidence
    and accuracy, and the expected calibration error (the count-weighted mean |accuracy - confidence|)."""
    confidence, correct = confidence.double(), correct.double()
    index = torch.clamp(torch.ceil(confidence * bins).long() - 1, 0, bins - 1)   # (k/bins, (k+1)/bins]
    count = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    hit_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    filled = count.clamp(min=1)
    total = float(count.sum())
    ece = float(((hit_sum - conf_sum).abs()).sum() / total) if total else float("nan")
    return {"count": count, "confidence": conf_sum / filled, "accuracy": hit_sum / filled, "ece": ece}
