"""The model's decision rule: per attribute, the calibrated confidence at which a tag is accepted
without a person. Saved beside the weights (checkpoint key `decision`, bundle file `decision.json`)
so every runtime decides the same way; the temperatures themselves live in the weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import pydantic
import torch

from fashion.calibration.temperature import scale_confidence
from fashion.validation import describe

METHOD = ("temperature scaling (one T per attribute, validation NLL, L-BFGS), then per attribute the lowest "
          "confidence whose accepted validation predictions reach the target precision")


@dataclass
class Decision:
    """`thresholds[a]` None: no confidence is trusted for `a` (too few labels, a single class, or the
    target precision was never reached on validation), so every `a` tag goes to review."""

    thresholds: dict[str, float | None]
    target_precision: dict[str, float] = field(default_factory=dict)
    temperatures: dict[str, float] = field(default_factory=dict)   # for people; the weights apply them
    notes: dict[str, str] = field(default_factory=dict)             # why an attribute fell back
    method: str = METHOD
    # Per taxonomy level, the Platt scaling (a, b) of its jointly decoded confidence (fashion.data.taxonomy),
    # which is what is served by default and what its threshold is on; `head_thresholds` holds the level's
    # threshold on its own head's confidence, for serving with the taxonomy switched off. Empty (decisions
    # made before): every threshold is on a head's own confidence, and that is what is served.
    joint_scaling: dict[str, list[float]] = field(default_factory=dict)
    head_thresholds: dict[str, float | None] = field(default_factory=dict)

    @property
    def taxonomy_confidence(self) -> bool:
        return bool(self.joint_scaling)

    @classmethod
    def review_everything(cls, attributes: list[str], why: str) -> Decision:
        """A model that was never calibrated (or an older bundle): nothing is auto-accepted."""
        return cls({a: None for a in attributes}, notes={a: why for a in attributes}, method="none")

    def confidence(self, attribute: str, head: torch.Tensor, joint: torch.Tensor | None) -> torch.Tensor:
        """`attribute`'s served confidence: its jointly decoded one, scaled, where this decision was
        calibrated on that; else its head's own (also whenever `joint` is None: the taxonomy is off)."""
        scaling = self.joint_scaling.get(attribute)
        return head if joint is None or scaling is None else scale_confidence(joint, scaling)

    def threshold(self, attribute: str, joint: bool = True) -> float | None:
        """The acceptance threshold of `attribute`'s served confidence; `joint`: the taxonomy is decoded together."""
        if self.taxonomy_confidence and not joint and attribute in self.head_thresholds:
            return self.head_thresholds[attribute]
        return self.thresholds.get(attribute)

    def accepts(self, attribute: str, confidence: torch.Tensor, joint: bool = True) -> torch.Tensor:
        """Which confidences (N,) are accepted, compared in double precision, as the threshold was chosen:
        against float32 the threshold itself would be rounded."""
        threshold = self.threshold(attribute, joint)
        if threshold is None:
            return torch.zeros(confidence.shape, dtype=torch.bool)
        return confidence.double() >= threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, attributes: list[str], where: str) -> Decision:
        """Validated: a decision read from a bundle or checkpoint made elsewhere is data, not trusted."""
        try:
            saved = SavedDecision.model_validate(data)
        except pydantic.ValidationError as err:
            raise ValueError(f"{where}: {describe(err)}") from None
        stray = sorted((set(saved.thresholds) | set(saved.head_thresholds) | set(saved.joint_scaling)) - set(attributes))
        if stray:
            raise ValueError(f"{where}: thresholds for {stray}, which the model does not predict ({attributes})")
        thresholds = {a: saved.thresholds.get(a) for a in attributes}
        return cls(thresholds, saved.target_precision, saved.temperatures, saved.notes, saved.method,
                   {a: list(v) for a, v in saved.joint_scaling.items()}, dict(saved.head_thresholds))


class SavedDecision(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    thresholds: dict[str, float | None]
    target_precision: dict[str, float] = {}
    temperatures: dict[str, float] = {}
    notes: dict[str, str] = {}
    method: str = METHOD
    joint_scaling: dict[str, Annotated[list[float], pydantic.Field(min_length=2, max_length=2)]] = {}
    head_thresholds: dict[str, float | None] = {}

    @pydantic.field_validator("joint_scaling")
    @classmethod
    def _finite_increasing(cls, values: dict[str, list[float]]) -> dict[str, list[float]]:
        bad = {k: v for k, v in values.items() if not (math.isfinite(v[0]) and math.isfinite(v[1]) and v[0] > 0)}
        if bad:
            raise ValueError(f"a scaling (a, b) needs finite values and a > 0, got {bad}")
        return values

    @pydantic.field_validator("thresholds", "target_precision", "head_thresholds")
    @classmethod
    def _probabilities(cls, values: dict[str, float | None]) -> dict[str, float | None]:
        bad = {k: v for k, v in values.items() if v is not None and not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"must lie in [0, 1], got {bad}")
        return values
