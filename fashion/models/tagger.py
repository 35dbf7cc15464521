"""The multi-head network: one backbone pass, one logits tensor per attribute."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fashion.data.cached import CachedInputs
from fashion.models.backbone import Backbone


class MultiHeadTagger(nn.Module):
    """Backbone features, plus any parameter-free `extras` (e.g. a colour histogram), into the heads.

    The one seam every user of the network goes through: `extra_features` and `classify` (heads
    from features). `forward` takes images, or the FeatureCache's stored inputs (the backbone's
    frozen-prefix output and the extras, computed once): then only the trainable rest and the heads
    run. Which of the two arrives is a property of the data (`use_feature_cache` decides it).
    """

    def __init__(self, backbone: Backbone, heads: nn.Module, extras: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.extras = nn.ModuleDict(dict(extras or {}))

    @staticmethod
    def feature_size(backbone: Backbone, extras: Mapping[str, nn.Module] | None = None) -> int:
        return backbone.num_features + sum(int(e.num_features) for e in (extras or {}).values())

    def extra_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: extra(images) for name, extra in self.extras.items()}

    def classify(self, pooled: torch.Tensor, extras: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Heads from the backbone's pooled features and the extras (in `self.extras` order)."""
        features = [pooled, *(extras[name] for name in self.extras)]
        return self.heads(torch.cat(features, dim=1) if len(features) > 1 else pooled)

    def forward(self, inputs: torch.Tensor | CachedInputs) -> dict[str, torch.Tensor]:
        if isinstance(inputs, Mapping):
            return self.classify(self.backbone.forward_suffix(inputs["backbone"]), inputs)
        return self.classify(self.backbone(inputs), self.extra_features(inputs))

    @torch.no_grad()
    def cacheable_inputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the FeatureCache stores for a batch of images."""
        return {"backbone": self.backbone.forward_prefix(images), **self.extra_features(images)}
