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

    `temperature` (one per attribute, in head order) divides the logits: 1 while training, fitted on
    validation afterwards (`fashion.calibration`). Being a buffer, it travels in every checkpoint,
    bundle and ONNX graph, so every runtime returns the same calibrated probabilities.
    """

    def __init__(self, backbone: Backbone, heads: nn.Module, extras: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.extras = nn.ModuleDict(dict(extras or {}))
        self.attributes = list(heads.num_classes)
        self.register_buffer("temperature", torch.ones(len(self.attributes)))

    def set_temperatures(self, temperatures: Mapping[str, float]) -> None:
        for attribute, value in temperatures.items():
            self.temperature[self.attributes.index(attribute)] = float(value)

    def temperatures(self) -> dict[str, float]:
        return dict(zip(self.attributes, self.temperature.tolist()))

    def load_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        """Strict, except that weights saved before calibration existed load with every temperature 1."""
        state = dict(state)
        state.setdefault("temperature", torch.ones(len(self.attributes)))
        self.load_state_dict(state, strict=True)

    @staticmethod
    def feature_size(backbone: Backbone, extras: Mapping[str, nn.Module] | None = None) -> int:
        return backbone.num_features + sum(int(e.num_features) for e in (extras or {}).values())

    def extra_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: extra(images) for name, extra in self.extras.items()}

    def classify(self, pooled: torch.Tensor, extras: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Heads from the backbone's pooled features and the extras (in `self.extras` order)."""
        features = [pooled, *(extras[name] for name in self.extras)]
        logits = self.heads(torch.cat(features, dim=1) if len(features) > 1 else pooled)
        return {a: logits[a] / self.temperature[i] for i, a in enumerate(self.attributes)}

    def forward(self, inputs: torch.Tensor | CachedInputs) -> dict[str, torch.Tensor]:
        if isinstance(inputs, Mapping):
            return self.classify(self.backbone.forward_suffix(inputs["backbone"]), inputs)
        return self.classify(self.backbone(inputs), self.extra_features(inputs))

    @torch.no_grad()
    def cacheable_inputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the FeatureCache stores for a batch of images."""
        return {"backbone": self.backbone.forward_prefix(images), **self.extra_features(images)}
