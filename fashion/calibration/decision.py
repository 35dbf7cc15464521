"""The model's decision rule: per attribute, the calibrated confidence at which a tag is accepted
without a person. Saved beside the weights (checkpoint key `decision`, bundle file `decision.json`)
so every runtime decides the same way; the temperatures themselves live in the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pydantic

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

    @classmethod
    def review_everything(cls, attributes: list[str], why: str) -> Decision:
        """A model that was never calibrated (or an older bundle): nothing is auto-accepted."""
        return cls({a: None for a in attributes}, notes={a: why for a in attributes}, method="none")

    def accepts(self, attribute: str, confidence: float) -> bool:
        threshold = self.thresholds.get(attribute)
        return threshold is not None and confidence >= threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, attributes: list[str], where: str) -> Decision:
        """Validated: a decision read from a bundle or checkpoint made elsewhere is data, not trusted."""
        try:
            saved = SavedDecision.model_validate(data)
        except pydantic.ValidationError as err:
            raise ValueError(f"{where}: {describe(err)}") from None
        stray = sorted(set(saved.thresholds) - set(attributes))
        if stray:
            raise ValueError(f"{where}: thresholds for {stray}, which the model does not predict ({attributes})")
        thresholds = {a: saved.thresholds.get(a) for a in attributes}
        return cls(thresholds, saved.target_precision, saved.temperatures, saved.notes, saved.method)


class SavedDecision(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    thresholds: dict[str, float | None]
    target_precision: dict[str, float] = {}
    temperatures: dict[str, float] = {}
    notes: dict[str, str] = {}
    method: str = METHOD

    @pydantic.field_validator("thresholds", "target_precision")
    @classmethod
    def _probabilities(cls, values: dict[str, float | None]) -> dict[str, float | None]:
        bad = {k: v for k, v in values.items() if v is not None and not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"must lie in [0, 1], got {bad}")
        return values
