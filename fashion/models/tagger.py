"""The multi-head network: one backbone pass, one logits tensor per attribute."""

from __future__ import annotations

import torch
from torch import nn

from fashion.models.backbone import Backbone


class MultiHeadTagger(nn.Module):
    def __init__(self, backbone: Backbone, heads: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.backbone(images))
