"""Temperature scaling (Guo et al., 2017): one scalar T per attribute, fitted by minimising the
negative log-likelihood of `softmax(logits / T)` on held-out labels.

One parameter cannot change which class wins, so accuracy is untouched; it only stretches or
flattens every confidence, which is what label smoothing and weight averaging move. Fitted with
L-BFGS on log T (so T stays positive) in float64 over the whole validation split at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fashion.data.vocab import IGNORE_INDEX

BOUNDS = (0.05, 20.0)   # a T outside this means the NLL has no interior minimum (e.g. no error at all)


@dataclass
class TemperatureFit:
    """The fitted temperature, the validation NLL before and after, and why T stayed 1 if it did."""

    temperature: float = 1.0
    nll_before: float = math.nan
    nll_after: float = math.nan
    samples: int = 0
    fallback: str | None = None   # set when T = 1 was kept: the reason, for the log and the bundle


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> TemperatureFit:
    """`logits` (N, C) and `targets` (N,) with IGNORE_INDEX for a missing label."""
    labelled = targets != IGNORE_INDEX
    samples = int(labelled.sum())
    if logits.shape[1] < 2:
        return TemperatureFit(samples=samples, fallback="a single class: its confidence is always 1")
    if samples == 0:
        return TemperatureFit(fallback="no labelled validation rows")
    logits, targets = logits[labelled].double(), targets[labelled]
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    with torch.enable_grad():
        before = float(F.cross_entropy(logits, targets))
        optimizer.step(nll)
    temperature = float(log_t.detach().exp().clamp(*BOUNDS))
    if not math.isfinite(temperature):
        return TemperatureFit(nll_before=before, samples=samples, fallback="the fit did not converge")
    after = float(F.cross_entropy(logits / temperature, targets))
    if after > before:   # L-BFGS can stop worse than where it started on a flat loss: keep T = 1
        return TemperatureFit(1.0, before, before, samples, "no temperature lowered the validation NLL")
    return TemperatureFit(temperature, before, after, samples)


def scale_confidence(confidence: torch.Tensor, scaling: tuple[float, float] | list[float]) -> torch.Tensor:
    """sigmoid(a logit(c) + b): Platt's scaling of a top-label confidence, monotone, so it keeps the order."""
    a, b = scaling
    return torch.sigmoid(a * torch.logit(confidence.double().clamp(1e-12, 1 - 1e-12)) + b).to(confidence.dtype)


def fit_confidence_scaling(confidence: torch.Tensor, correct: torch.Tensor, max_iter: int = 100) -> tuple[float, float]:
    """Platt scaling (a, b) of confidences (N,) against whether each was right, by validation NLL.

    For a confidence that is not one head's softmax (the taxonomy levels' joint decoding multiplies three
    heads' evidence, so it is over-confident) a temperature does not apply; this keeps its order, which
    is what the acceptance threshold needs, and makes it a calibrated probability. (1, 0), the identity,
    when the rows cannot say (too few, all right or all wrong) or the fit does not improve on it."""
    confidence, correct = confidence.double(), correct.double()
    if len(correct) < 20 or correct.min() == correct.max():
        return 1.0, 0.0
    logit = torch.logit(confidence.clamp(1e-12, 1 - 1e-12))
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(params[0] * logit + params[1], correct)
        loss.backward()
        return loss

    with torch.enable_grad():
        before = float(F.binary_cross_entropy_with_logits(logit, correct))
        optimizer.step(nll)
    a, b = (float(v) for v in params.detach())
    after = float(F.binary_cross_entropy_with_logits(a * logit + b, correct))
    return (a, b) if math.isfinite(after) and after < before and a > 0 else (1.0, 0.0)
