"""Attribute heads: one classifier per attribute on top of shared backbone features.

Sizes come from the label vocabularies (`num_classes`), passed in when the model is assembled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from fashion.config import ConfigError
from fashion.validation import Probability


def _mlp(in_features: int, sizes: Sequence[int], dropout: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for size in sizes:
        layers += [nn.Linear(in_features, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_features = size
    return nn.Sequential(*layers), in_features


class LinearHeads(nn.Module):
    """A dropout + linear layer per attribute: the classic linear probe."""

    def __init__(self, in_features: int, num_classes: Mapping[str, int], dropout: Probability = 0.0) -> None:
        super().__init__()
        self.num_classes = dict(num_classes)
        self.heads = nn.ModuleDict(
            {a: nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, n)) for a, n in num_classes.items()}
        )

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {a: head(features) for a, head in self.heads.items()}


class MLPHeads(nn.Module):
    """A shared trunk (e.g. 768->512->256), then a small hidden stack per attribute.

    `hidden` is the default per-attribute stack; `hidden_per_attribute` overrides it for some
    attributes (e.g. a wider layer for articleType's many classes).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: Mapping[str, int],
        trunk: Sequence[int] = (512, 256),
        hidden: Sequence[int] = (128,),
        hidden_per_attribute: Mapping[str, Sequence[int]] | None = None,
        dropout: Probability = 0.2,
    ) -> None:
        super().__init__()
        self.num_classes = dict(num_classes)
        overrides = dict(hidden_per_attribute or {})
        stray = sorted(set(overrides) - set(num_classes))
        if stray:
            raise ConfigError(f"head.hidden_per_attribute names {stray}, which are not trained attributes {list(num_classes)}")
        self.trunk, trunk_out = _mlp(in_features, trunk, dropout)
        heads = {}
        for attribute, n in num_classes.items():
            stack, out = _mlp(trunk_out, overrides.get(attribute, hidden), dropout)
            heads[attribute] = nn.Sequential(stack, nn.Linear(out, n))
        self.heads = nn.ModuleDict(heads)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.trunk(features)
        return {a: head(shared) for a, head in self.heads.items()}
