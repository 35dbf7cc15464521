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
