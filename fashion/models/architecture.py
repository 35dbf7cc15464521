"""A saved model's architecture as validated plain data: the one way a bundle or checkpoint becomes a network.

Training builds models with Hydra `instantiate`, which imports and calls whatever `_target_` a config
names: right for a user's own configs, wrong for a file that came from elsewhere. A bundle's
`config.json` or a checkpoint's `run_config` is therefore only ever read through `validate_architecture`:
each section may name one of a closed set of this project's classes, every other key must be a
parameter of that class with a value of its annotated type, and nothing is imported or constructed
until the whole description has passed. `build_model` then calls the classes directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from fashion.models.backbone import Backbone
from fashion.models.colour import ColourHistogram
from fashion.models.heads import LinearHeads, MLPHeads
from fashion.models.tagger import MultiHeadTagger
from fashion.validation import describe, signature_schema

ARCHITECTURE_SECTIONS = ("backbone", "head", "extra_features")

# section -> the `_target_`s it may name. Parameters the model builder passes itself are not data.
ALLOWED_TARGETS: dict[str, dict[str, type]] = {
    "backbone": {"fashion.models.Backbone": Backbone, "fashion.models.backbone.Backbone": Backbone},
    "head": {"fashion.models.LinearHeads": LinearHeads, "fashion.models.heads.LinearHeads": LinearHeads,
             "fashion.models.MLPHeads": MLPHeads, "fashion.models.heads.MLPHeads": MLPHeads},
    "extra_features": {"fashion.models.ColourHistogram": ColourHistogram,
                       "fashion.models.colour.ColourHistogram": ColourHistogram},
}
INJECTED = {"in_features", "num_classes", "preprocessing"}
# Sizes that decide how much memory building the model takes: bounded, so a file cannot exhaust it.
SIZE_LIMITS = {("backbone", "image_size"): (8, 4096), ("backbone", "source_max_side"): (8, 4096),
               ("extra_features", "size"): (4, 1024), ("extra_features", "bins"): (2, 32)}
# A saved model never loads weights from anywhere but its own file: these are forced off.
NO_WEIGHT_SOURCE = {"pretrained": False, "packaged_weights": None, "checkpoint_path": None}


class ArchitectureError(ValueError):
    """A saved architecture description that is not one this project can build safely; names the field."""


@dataclass(frozen=True)
class Component:
    cls: type
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class Architecture:
    backbone: Component
    head: Component
    extras: dict[str, Component]


def validate_architecture(config: Any, source: str = "config") -> Architecture:
    """Check a bundle/checkpoint architecture description completely, constructing nothing."""
    if not isinstance(config, Mapping):
        raise ArchitectureError(f"{source}: expected an object with {ARCHITECTURE_SECTIONS}, "
                                f"got {type(config).__name__}")
    for section in ("backbone", "head"):
        if section not in config:
            raise ArchitectureError(f"{source}: missing {section!r}")
    extras_config = config.get("extra_features") or {}
    if not isinstance(extras_config, Mapping):
        raise ArchitectureError(f"{source}: extra_features must be an object of name -> feature, "
                                f"got {type(extras_config).__name__}")
    backbone = _component(config["backbone"], "backbone", f"{source}: backbone")
    _check_timm_name(backbone.kwargs.get("name"), f"{source}: backbone.name")
    extras = {}
    for name, node in extras_config.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ArchitectureError(f"{source}: extra_features key {name!r} must be an identifier")
        if node:
            extras[name] = _component(node, "extra_features", f"{source}: extra_features.{name}")
    return Architecture(backbone, _component(config["head"], "head", f"{source}: head"), extras)


def build_model(config: Any, num_classes: Mapping[str, int], source: str = "config") -> MultiHeadTagger:
    """The architecture of a saved run with random weights (callers load its state dict into it)."""
    arch = validate_architecture(config, source)
    _check_registered(arch.backbone.kwargs["name"], f"{source}: backbone.name")
    backbone = Backbone(**{**arch.backbone.kwargs, **NO_WEIGHT_SOURCE, "freeze": "full"})
    extras = {name: c.cls(preprocessing=backbone.preprocessing, **c.kwargs) for name, c in arch.extras.items()}
    heads = arch.head.cls(in_features=MultiHeadTagger.feature_size(backbone, extras),
                          num_classes=dict(num_classes), **arch.head.kwargs)
    return MultiHeadTagger(backbone, heads, extras)


def _component(node: Any, section: str, where: str) -> Component:
    if not isinstance(node, Mapping):
        raise ArchitectureError(f"{where}: expected an object, got {type(node).__name__}")
    _refuse_special_keys(node, where, top=True)
    target = node.get("_target_")
    allowed = ALLOWED_TARGETS[section]
    if target not in allowed:
        raise ArchitectureError(f"{where}._target_={target!r} is not allowed; a saved {section} may only be one of "
                                f"{sorted(set(allowed))}")
    cls = allowed[target]
    fields = {k: v for k, v in node.items() if k != "_target_"}
    try:
        validated = signature_schema(cls, strict=True, skip=INJECTED).model_validate(fields)
    except pydantic.ValidationError as err:
        raise ArchitectureError(describe(err, where)) from None
    kwargs = {k: getattr(validated, k) for k in fields}
    for (limited_section, key), (low, high) in SIZE_LIMITS.items():
        value = kwargs.get(key)
        if limited_section == section and value is not None and not low <= value <= high:
            raise ArchitectureError(f"{where}.{key}={value} is outside {low}..{high}")
    return Component(cls, kwargs)


def _refuse_special_keys(node: Any, where: str, top: bool = False) -> None:
    """Hydra's own keys (`_target_`, `_args_`, `_partial_`, ...) at any depth below the section's own `_target_`."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(key, str) and key.startswith("_") and key.endswith("_") and not (top and key == "_target_"):
                raise ArchitectureError(f"{where}.{key}: instantiation keys are not allowed in a saved model")
            _refuse_special_keys(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            _refuse_special_keys(value, f"{where}[{index}]")


def _check_timm_name(name: Any, where: str) -> None:
    """A plain timm architecture name: no `hf-hub:`/`local-dir:` prefix, which would fetch or read files.
    Whether timm knows it is checked before building (`_check_registered`): importing timm takes seconds,
    and an onnxruntime predictor validates a bundle's architecture without ever building it."""
    if not isinstance(name, str) or ":" in name or not name.replace(".", "_").replace("-", "_").isidentifier():
        raise ArchitectureError(f"{where}={name!r} is not a timm architecture name (see timm.list_models())")


def _check_registered(name: str, where: str) -> None:
    import timm
    from timm.models import split_model_name_tag

    if not timm.is_model(split_model_name_tag(name)[0]):
        raise ArchitectureError(f"{where}={name!r} is not a timm architecture name (see timm.list_models())")
