"""Class weights for imbalanced attributes, computed from training-split class counts.

Each returns weights normalised to mean 1 over classes, so switching scheme does not change the
effective learning rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fashion.validation import OpenUnitInterval


def _normalised(weights: torch.Tensor) -> torch.Tensor:
    return weights * (len(weights) / weights.sum())


class NoClassWeights:
    def __call__(self, counts: Sequence[int]) -> torch.Tensor | None:
        return None


class InverseFrequency:
    """w_c = 1 / n_c^power (power 0.5 is the gentler square-root variant)."""

    def __init__(self, power: float = 1.0) -> None:
        self.power = power

    def __call__(self, counts: Sequence[int]) -> torch.Tensor:
        n = torch.as_tensor(counts, dtype=torch.float).clamp(min=1)
        return _normalised(n.pow(-self.power))


class EffectiveNumber:
    """Cui et al. 2019: w_c = (1 - beta) / (1 - beta^n_c), which saturates for frequent classes."""

    def __init__(self, beta: OpenUnitInterval = 0.999) -> None:
        self.beta = beta

    def __call__(self, counts: Sequence[int]) -> torch.Tensor:
        n = torch.as_tensor(counts, dtype=torch.float).clamp(min=1)
        return _normalised((1.0 - self.beta) / (1.0 - torch.pow(self.beta, n)))
