"""Label vocabularies: the classes each head predicts, built from the training split only.

Head sizes come from here and nowhere else. Classes rarer than `min_count` in the training split
are either ignored (their samples are masked for that attribute) or folded into one `Other` class;
an optional mapping groups raw labels first (e.g. baseColour -> colour families).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import pydantic

from fashion.config import ConfigError
from fashion.data.styles import ATTRIBUTES
from fashion.validation import AtLeastZero, describe, typed

IGNORE_INDEX = -1


@typed
@dataclass
class LabelSpec:
    """Which attributes to learn and how their vocabularies are built (the `labels` config group)."""

    attributes: list[str] = field(default_factory=lambda: list(ATTRIBUTES))
    min_count: AtLeastZero | dict[str, AtLeastZero] = 1
    rare_classes: Literal["ignore", "other"] = "ignore"
    other_label: str = "Other"
    mappings: dict[str, dict[str, str]] = field(default_factory=dict)
    unmapped: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.attributes = list(self.attributes)
        unknown = [a for a in self.attributes if a not in ATTRIBUTES]
        if not self.attributes or unknown:
            raise ValueError(f"labels.attributes: unknown {unknown or 'empty list'}; choose from {list(ATTRIBUTES)}")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"labels.attributes lists an attribute twice: {self.attributes}")
        for key in (*self.mappings, *self.unmapped):
            if key not in self.attributes:
                raise ValueError(f"labels.mappings/unmapped name {key!r}, which is not in labels.attributes")
        if isinstance(self.min_count, Mapping):
            stray = [k for k in self.min_count if k not in self.attributes]
            if stray:
                raise ValueError(f"labels.min_count names {stray}, not in labels.attributes")

    def min_count_for(self, attribute: str) -> int:
        if isinstance(self.min_count, Mapping):
            return int(self.min_count.get(attribute, 1))
        return int(self.min_count)

    def map_values(self, attribute: str, values: pd.Series) -> pd.Series:
        """Apply the attribute's mapping; labels the mapping does not name go to `unmapped` (or stay)."""
        mapping = self.mappings.get(attribute)
        if not mapping:
            return values
        fallback = self.unmapped.get(attribute)
        mapped = values.map(lambda v: mapping.get(v, fallback if fallback is not None else v) if isinstance(v, str) else v)
        return mapped


@dataclass
class LabelVocabulary:
    """Class names of one attribute; index i is head output i."""

    attribute: str
    classes: list[str]
    other_index: int | None = None
    counts: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.classes)

    def encode(self, value: object) -> int:
        """Index of a label, `other_index` for a rare/unseen one when folding, else IGNORE_INDEX."""
        if not isinstance(value, str):
            return IGNORE_INDEX
        index = self._index.get(value)
        if index is not None:
            return index
        return self.other_index if self.other_index is not None else IGNORE_INDEX

    def decode(self, index: int) -> str:
        return self.classes[index]

    @property
    def _index(self) -> dict[str, int]:
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {c: i for i, c in enumerate(self.classes)}
            self.__dict__["_index_cache"] = cached
        return cached

    def to_dict(self) -> dict:
        return {"attribute": self.attribute, "classes": self.classes, "other_index": self.other_index, "counts": self.counts}

    @classmethod
    def from_dict(cls, data: Mapping) -> LabelVocabulary:
        """From `to_dict`'s output, which may come from a bundle or checkpoint made elsewhere: checked field by field."""
        try:
            saved = SavedVocabulary.model_validate(data)
        except pydantic.ValidationError as err:
            where = data.get("attribute", "?") if isinstance(data, Mapping) else "?"
            raise ValueError(f"vocabulary {where!r}: {describe(err)}") from None
        return cls(saved.attribute, saved.classes, saved.other_index, saved.counts)

    @classmethod
    def build(cls, attribute: str, values: Iterable[object], min_count: int, rare_classes: str, other_label: str) -> LabelVocabulary:
        """Classes sorted by name (stable across runs); rare ones dropped or folded into `other_label`. A label
        that is `other_label` already (a mapping's `unmapped` bucket, colour_families' Other) joins the fold when
        folding, and is a class as any other when rare classes are dropped: it was dropped with them, so
        colour_families learnt 10 of its 11 families and masked the colours of the eleventh."""
        counts = Counter(v for v in values if isinstance(v, str))
        folds = rare_classes == "other"
        kept = sorted(c for c, n in counts.items() if n >= min_count and not (folds and c == other_label))
        rare = sum(n for c, n in counts.items() if n < min_count or (folds and c == other_label))
        if folds and rare:
            classes = [*kept, other_label]
            return cls(attribute, classes, len(kept), [counts[c] for c in kept] + [rare])
        return cls(attribute, kept, None, [counts[c] for c in kept])


class SavedVocabulary(pydantic.BaseModel):
    """The plain-data form of a LabelVocabulary: strict types, no extra keys."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    attribute: str
    classes: list[str]
    other_index: int | None = None
    counts: list[int] = []

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> SavedVocabulary:
        """A class named twice would split its probability over two outputs; counts that do not pair one to
        one with the classes would give serving's drift monitor a wrong expected distribution, silently."""
        if self.other_index is not None and not 0 <= self.other_index < len(self.classes):
            raise ValueError(f"other_index {self.other_index} is outside classes[0..{len(self.classes) - 1}]")
        twice = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if twice:
            raise ValueError(f"classes name {twice} more than once")
        if self.counts and (len(self.counts) != len(self.classes) or min(self.counts) < 0):
            raise ValueError(f"counts must be one count >= 0 per class ({len(self.classes)}), not {self.counts}")
        return self


class SavedLabelMapping(pydantic.BaseModel):
    """How a run mapped its data's labels before building the vocabularies (`labels.mappings`, `labels.unmapped`),
    as a bundle or checkpoint carries it: a folder scored later (fashion-eval, the promotion gate) is mapped the same
    way, where its raw labels (Navy Blue for colour_families' Blue) were counted as unseen."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    mappings: dict[str, dict[str, str]] = {}
    unmapped: dict[str, str | None] = {}


def saved_label_mapping(data: Any, attributes: list[str]) -> LabelSpec | None:
    """The mapping as a LabelSpec (its `map_values`), None when it maps nothing; ValueError naming what is wrong."""
    try:
        saved = SavedLabelMapping.model_validate(data)
    except pydantic.ValidationError as err:
        raise ValueError(describe(err)) from None
    if not saved.mappings and not any(saved.unmapped.values()):
        return None
    return LabelSpec(attributes=attributes, mappings=saved.mappings, unmapped=saved.unmapped)


def build_vocabularies(train: pd.DataFrame, spec: LabelSpec) -> dict[str, LabelVocabulary]:
    """One vocabulary per attribute, from (already mapped) training labels."""
    vocabularies = {}
    for attribute in spec.attributes:
        vocab = LabelVocabulary.build(attribute, train[attribute], spec.min_count_for(attribute), spec.rare_classes, spec.other_label)
        if len(vocab) < 2:   # a ConfigError: one line naming the keys (cli.one_line_errors), not a traceback
            raise ConfigError(
                f"attribute {attribute!r} has {len(vocab)} class(es) with >= {spec.min_count_for(attribute)} training "
                "samples; a head needs at least 2. Lower labels.min_count or drop the attribute from labels.attributes."
            )
        vocabularies[attribute] = vocab
    return vocabularies
