"""How per-attribute losses are combined into one training loss (the `loss_weighting` group).

All three share one interface: `forward(losses) -> total`, `weights()` for logging, and
`end_epoch(mean_losses)` for schemes that adapt between epochs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from fashion.config import ConfigError


class LossWeighting(nn.Module):
    def __init__(self, attributes: Sequence[str]) -> None:
        super().__init__()
        self.attributes = list(attributes)

    def weights(self) -> dict[str, float]:
        raise NotImplementedError

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Called once per training epoch with each attribute's mean loss."""

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        w = self.weights()
        return sum(w[a] * losses[a] for a in self.attributes)


class FixedWeighting(LossWeighting):
    """Constant weights; attributes not listed get `default`."""

    def __init__(self, attributes: Sequence[str], weights: Mapping[str, float] | None = None, default: float = 1.0) -> None:
        super().__init__(attributes)
        given = dict(weights or {})
        stray = sorted(set(given) - set(self.attributes))
        if stray:
            raise ConfigError(f"loss_weighting.weights names {stray}, which are not trained attributes {self.attributes}")
        self._weights = {a: float(given.get(a, default)) for a in self.attributes}

    def weights(self) -> dict[str, float]:
        return dict(self._weights)


class UncertaintyWeighting(LossWeighting):
    """Kendall, Gal & Cipolla 2018: learn a log-variance s_k per task, total = sum 0.5*exp(-s_k)*L_k + 0.5*s_k.

    s_k is clamped to [-clamp, clamp] so a task cannot be switched off (or blown up) entirely.
    """

    def __init__(self, attributes: Sequence[str], clamp: float = 4.0) -> None:
        super().__init__(attributes)
        self.clamp = clamp
        self.log_vars = nn.Parameter(torch.zeros(len(self.attributes)))

    def _s(self) -> torch.Tensor:
        return self.log_vars.clamp(-self.clamp, self.clamp)

    def weights(self) -> dict[str, float]:
        return {a: float(w) for a, w in zip(self.attributes, 0.5 * torch.exp(-self._s().detach()))}

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        s = self._s()
        stacked = torch.stack([losses[a].float() for a in self.attributes])
        return (0.5 * torch.exp(-s) * stacked + 0.5 * s).sum()


class DWAWeighting(LossWeighting):
    """Dynamic Weight Averaging (Liu et al. 2019): tasks whose loss falls slowly get more weight.

    w_k = K * softmax_k(r_k / T), r_k = L_k(t-1) / L_k(t-2); equal weights for the first two epochs.
    """

    def __init__(self, attributes: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(attributes)
        self.temperature = temperature
        self.history: list[dict[str, float]] = []
        self._weights = {a: 1.0 for a in self.attributes}

    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        self.history = [*self.history[-1:], {a: float(mean_losses[a]) for a in self.attributes}]
        if len(self.history) < 2:
            return
        previous, latest = self.history
        ratios = [latest[a] / max(previous[a], 1e-12) for a in self.attributes]
        exps = [math.exp(r / self.temperature) for r in ratios]
        total = sum(exps)
        self._weights = {a: len(self.attributes) * e / total for a, e in zip(self.attributes, exps)}

    def get_extra_state(self) -> dict:
        return {"history": self.history, "weights": self._weights}

    def set_extra_state(self, state: dict) -> None:
        self.history, self._weights = list(state["history"]), dict(state["weights"])
