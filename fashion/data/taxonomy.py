"""A consistent taxonomy: articleType, subCategory and masterCategory decoded together.

Three independent heads can answer "Watches / Topwear / Apparel", a triple no product has. Decoding
picks instead the most probable combination the training split contains,
argmax over seen (a, s, m) of log p(a) + log p(s) + log p(m), so the served answer is always one a
merchandiser has seen. Where the heads already agree on a seen combination, that is the answer.

The same joint, normalised over the seen combinations, gives each level's confidence (the chosen
label's marginal, which the calibration then scales): a label the other two heads back is surer than
its own head says, one they contradict less sure, which lets more tags through at the same precision
(docs/calibration.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic
import torch

from fashion.validation import describe

HIERARCHY = ("articleType", "subCategory", "masterCategory")


@dataclass
class Taxonomy:
    """`combinations`: label tuples (in `attributes` order) seen together in the training split."""

    attributes: list[str]
    combinations: list[tuple[str, ...]]
    _tables: dict[tuple, torch.Tensor | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_table(cls, table: Any, attributes: Sequence[str]) -> Taxonomy | None:
        """The combinations of the hierarchy's levels among `attributes` (two or more) in a labelled table."""
        levels = [a for a in HIERARCHY if a in attributes]
        if len(levels) < 2:
            return None
        rows = table.dropna(subset=levels)[levels].drop_duplicates().astype(str)
        return cls(levels, sorted(map(tuple, rows.itertuples(index=False))))

    def is_consistent(self, labels: Mapping[str, str]) -> bool:
        return tuple(labels[a] for a in self.attributes) in set(self.combinations)

    def decode(self, probs: Mapping[str, torch.Tensor], classes: Mapping[str, list[str]]
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per level, the class index (N,) of the most probable seen combination, and the level's
        probabilities (N, C) under the joint q(a, s, m) ∝ p(a) p(s) p(m) over seen combinations.
        Combinations holding a class the model does not predict are skipped; with none left, each head
        answers alone."""
        table = self.index_table(classes)
        if table is None:
            return {a: probs[a].argmax(dim=1) for a in self.attributes}, {a: probs[a] for a in self.attributes}
        score = sum(torch.log(probs[a].double().clamp_min(1e-30))[:, table[:, j]] for j, a in enumerate(self.attributes))
        best = score.argmax(dim=1)
        joint = torch.softmax(score, dim=1)
        marginals = {a: torch.zeros(len(joint), probs[a].shape[1], dtype=torch.float64).index_add_(1, table[:, j], joint)
                     .to(probs[a].dtype) for j, a in enumerate(self.attributes)}
        return {a: table[best, j] for j, a in enumerate(self.attributes)}, marginals

    def index_table(self, classes: Mapping[str, list[str]]) -> torch.Tensor | None:
        """The seen combinations the model can predict, as class indices (K, levels); None when there are
        none. Built once per vocabulary: serving decodes every batch with the same one."""
        key = tuple(tuple(classes[a]) for a in self.attributes)
        if key not in self._tables:
            index = {a: {c: i for i, c in enumerate(classes[a])} for a in self.attributes}
            known = [c for c in self.combinations if all(label in index[a] for a, label in zip(self.attributes, c))]
            self._tables[key] = torch.tensor([[index[a][label] for a, label in zip(self.attributes, c)] for c in known]) if known else None
        return self._tables[key]

    def unreachable(self, classes: Mapping[str, list[str]]) -> dict[str, list[str]]:
        """Per level, the classes in no combination the model can predict: decoding together never answers them."""
        table = self.index_table(classes)
        found = {a: sorted(set(classes[a]) - ({classes[a][i] for i in table[:, j].tolist()} if table is not None else set()))
                 for j, a in enumerate(self.attributes)}
        return {a: missing for a, missing in found.items() if missing}

    def to_dict(self) -> dict[str, Any]:
        return {"attributes": self.attributes, "combinations": [list(c) for c in self.combinations]}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Taxonomy | None:
        """Validated (a bundle from elsewhere is data). Reads the older articleType -> parents mapping too."""
        if not data:
            return None
        if isinstance(data, Mapping) and "combinations" not in data:   # the earlier {article: {subCategory, masterCategory}}
            try:
                levels = ["articleType", *next(iter(data.values()))]
                data = {"attributes": levels, "combinations": [[a, *(p[l] for l in levels[1:])] for a, p in data.items()]}
            except (AttributeError, KeyError, TypeError):
                raise ValueError(f"{where}: neither a taxonomy nor an articleType -> parents mapping") from None
        try:
            saved = SavedTaxonomy.model_validate(data)
        except pydantic.ValidationError as err:
            raise ValueError(f"{where}: {describe(err)}") from None
        return cls(list(saved.attributes), [tuple(c) for c in saved.combinations])


def decode_levels(probs: Mapping[str, torch.Tensor], taxonomy: Taxonomy | None, classes: Mapping[str, list[str]]
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Every attribute's class index (N,) and its probability (N,): each head's own, or for the taxonomy
    levels, when there is a taxonomy, the decoded combination's and the level's marginal (Taxonomy.decode)."""
    chosen = {a: p.argmax(dim=1) for a, p in probs.items()}
    marginals: dict[str, torch.Tensor] = {}
    if taxonomy is not None:
        joint, marginals = taxonomy.decode(probs, classes)
        chosen |= joint
    return chosen, {a: (marginals.get(a, p)).gather(1, chosen[a].view(-1, 1)).squeeze(1) for a, p in probs.items()}


class SavedTaxonomy(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    attributes: list[str] = pydantic.Field(min_length=2, max_length=len(HIERARCHY))
    combinations: list[list[str]] = pydantic.Field(max_length=100_000)

    @pydantic.model_validator(mode="after")
    def _shape(self) -> SavedTaxonomy:
        if not set(self.attributes) <= set(HIERARCHY):
            raise ValueError(f"attributes must come from {list(HIERARCHY)}")
        if any(len(c) != len(self.attributes) for c in self.combinations):
            raise ValueError(f"every combination needs {len(self.attributes)} labels")
        return self
