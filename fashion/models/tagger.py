"""The multi-head network: one backbone pass, one logits tensor per attribute."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fashion.models.backbone import Backbone

CachedInputs = Mapping[str, torch.Tensor]   # {"backbone": frozen-prefix output, <extra name>: features}


class MultiHeadTagger(nn.Module):
    """Backbone features, plus any parameter-free `extras` (e.g. a colour histogram), into the heads.

    `forward_cached` is the same network fed by the FeatureCache: the backbone's frozen prefix and
    the extras were computed once, so only the trainable rest and the heads run.
    """

    def __init__(self, backbone: Backbone, heads: nn.Module, extras: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.extras = nn.ModuleDict(dict(extras or {}))

    @staticmethod
    def feature_size(backbone: Backbone, extras: Mapping[str, nn.Module] | None = None) -> int:
        return backbone.num_features + sum(int(e.num_features) for e in (extras or {}).values())

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = [self.backbone(images), *(extra(images) for extra in self.extras.values())]
        return self.heads(torch.cat(features, dim=1) if len(features) > 1 else features[0])

    def forward_cached(self, inputs: CachedInputs) -> dict[str, torch.Tensor]:
        features = [self.backbone.forward_suffix(inputs["backbone"]), *(inputs[name] for name in self.extras)]
        return self.heads(torch.cat(features, dim=1) if len(features) > 1 else features[0])

    @torch.no_grad()
    def cacheable_inputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the FeatureCache stores for a batch of images."""
        return {"backbone": self.backbone.forward_prefix(images), **{n: e(images) for n, e in self.extras.items()}}
