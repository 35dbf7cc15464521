"""A timm feature extractor with a declared weight source, freeze mode and input preprocessing."""

from __future__ import annotations

import logging

import timm
import torch
from timm.models import group_parameters, split_model_name_tag
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fashion.data.transforms import Preprocessing
from fashion.models.weights import load_state_dict_by_position, load_weights_file, packaged_weights_path

log = logging.getLogger(__name__)

FREEZE_MODES = ("frozen", "partial", "full")


class Backbone(nn.Module):
    """Pooled image features from any timm model.

    Weights come from exactly one of: `packaged_weights` (an installed package, offline),
    `checkpoint_path` (a local timm-named state dict), `pretrained` (the timm hub), or none.
    `freeze`: `frozen` trains nothing here, `partial` the last `trainable_stages` stages (timm's own
    coarse parameter groups), `full` everything. Frozen BatchNorm layers stay in eval mode so their
    running statistics are not overwritten by small fashion batches.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        packaged_weights: str | None = None,
        freeze: str = "full",
        trainable_stages: int = 2,
        image_size: int | None = None,
        drop_path_rate: float | None = None,
    ) -> None:
        super().__init__()
        sources = [s for s, on in (("pretrained", pretrained), ("checkpoint_path", checkpoint_path), ("packaged_weights", packaged_weights)) if on]
        if len(sources) > 1:
            raise ValueError(f"backbone: set only one weight source, got {sources}")
        if freeze not in FREEZE_MODES:
            raise ValueError(f"backbone.freeze={freeze!r}; choose one of {FREEZE_MODES}")
        if not timm.is_model(split_model_name_tag(name)[0]):
            raise ValueError(f"backbone.name={name!r} is not a timm model (see timm.list_models())")
        kwargs = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
        self.name = name
        self.weight_source = sources[0] if sources else "random"
        self.model = timm.create_model(name, pretrained=pretrained, **kwargs)
        if packaged_weights:
            load_state_dict_by_position(self.model, load_weights_file(packaged_weights_path(packaged_weights)))
        elif checkpoint_path:
            self.model.load_state_dict(load_weights_file(checkpoint_path), strict=True)
        self.model.reset_classifier(0)
        self.num_features = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        data_config = timm.data.resolve_data_config({}, model=self.model)
        self.preprocessing = Preprocessing(
            image_size=int(image_size or data_config["input_size"][-1]),
            mean=tuple(float(m) for m in data_config["mean"]),
            std=tuple(float(s) for s in data_config["std"]),
        )
        self.freeze, self.trainable_stages = freeze, trainable_stages
        self._frozen_norms = self._apply_freeze(freeze, trainable_stages)

    def _apply_freeze(self, freeze: str, trainable_stages: int) -> list[nn.Module]:
        if freeze == "full":
            return []
        groups = list(group_parameters(self.model, self.model.group_matcher(coarse=True)).values())
        if freeze == "partial" and not 0 < trainable_stages < len(groups):
            raise ValueError(f"backbone.trainable_stages={trainable_stages} must be in 1..{len(groups) - 1} for {self.name}")
        keep = 0 if freeze == "frozen" else trainable_stages
        frozen = {name for group in groups[: len(groups) - keep] for name in group}
        for name, param in self.model.named_parameters():
            param.requires_grad_(name not in frozen)
        norms = [
            m for m in self.model.modules()
            if isinstance(m, _BatchNorm) and not any(p.requires_grad for p in m.parameters(recurse=False))
        ]
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        log.info("backbone %s: freeze=%s, %d trainable parameters", self.name, freeze, trainable)
        return norms

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for norm in self._frozen_norms:
            norm.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)
