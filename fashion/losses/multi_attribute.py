"""One loss over all attribute heads: a criterion per head (with class weights), then a weighting."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from fashion.losses.weighting import LossWeighting


class MultiAttributeLoss(nn.Module):
    def __init__(
        self,
        criterion: Callable[..., torch.Tensor],
        weighting: LossWeighting,
        class_weights: Callable[[Sequence[int]], torch.Tensor | None],
        class_counts: Mapping[str, Sequence[int]],
    ) -> None:
        super().__init__()
        self.criterion = criterion
        self.weighting = weighting
        for attribute, counts in class_counts.items():
            self.register_buffer(f"class_weight_{attribute}", class_weights(counts), persistent=False)

    def forward(
        self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {
            a: self.criterion(logits[a], targets[a], getattr(self, f"class_weight_{a}"))
            for a in self.weighting.attributes
        }
        return self.weighting(parts), parts
