"""A deterministic, seeded, stratified train/val/test split that keeps near-duplicates together.

The catalogue lists the same product in several shots or sizes under consecutive ids with the same
articleType, colour and gender; letting those straddle train and test inflates test accuracy. Such
runs of ids form a group, and groups (not rows) are assigned to splits, stratum by stratum, to
whichever split is furthest below its target share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


@dataclass
class SplitSpec:
    """How to split (the `split` config node); `path` reuses a saved split instead."""

    fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    seed: int = 0
    stratify_on: str = "articleType"
    group_by: list[str] = field(default_factory=lambda: ["articleType", "baseColour", "gender"])
    max_id_gap: int = 2
    path: str | None = None

    def __post_init__(self) -> None:
        self.fractions = dict(self.fractions)
        if set(self.fractions) != set(SPLITS) or any(v < 0 for v in self.fractions.values()):
            raise ValueError(f"split.fractions needs non-negative train, val and test shares, got {self.fractions}")
        total = sum(self.fractions.values())
        if not np.isclose(total, 1.0):
            raise ValueError(f"split.fractions must add up to 1, they add up to {total:.6g}")


def near_duplicate_groups(frame: pd.DataFrame, keys: list[str], max_id_gap: int) -> pd.Series:
    """Group id per row: consecutive ids (gap <= max_id_gap) that share every key column."""
    ordered = frame.sort_values("id")
    key = ordered[keys].astype("string").fillna("<missing>").agg("|".join, axis=1)
    new_group = (key != key.shift()) | (ordered["id"].diff() > max_id_gap)
    return new_group.cumsum().reindex(frame.index)


def assign_splits(frame: pd.DataFrame, spec: SplitSpec) -> pd.Series:
    """Split name per row, indexed like `frame`."""
    groups = near_duplicate_groups(frame, list(spec.group_by), spec.max_id_gap)
    strata = frame[spec.stratify_on].fillna("<missing>")
    group_table = pd.DataFrame({"group": groups, "stratum": strata}).groupby("group").agg(
        stratum=("stratum", "first"), size=("stratum", "size")
    )
    rng = np.random.default_rng(spec.seed)
    fractions = np.array([spec.fractions[s] for s in SPLITS])
    assignment: dict[int, str] = {}
    for _, members in group_table.groupby("stratum", sort=True):
        order = rng.permutation(len(members))
        filled = np.zeros(len(SPLITS))
        for group_id, size in zip(members.index[order], members["size"].to_numpy()[order]):
            deficit = fractions * (filled.sum() + size) - filled
            choice = int(np.argmax(deficit))
            filled[choice] += size
            assignment[group_id] = SPLITS[choice]
    return groups.map(assignment).rename("split")


def load_split(path: str | Path) -> pd.Series:
    """A saved split as id -> split name; rejects unknown split names."""
    table = pd.read_csv(path)
    if not {"id", "split"} <= set(table.columns):
        raise ValueError(f"{path}: a split file needs columns id,split; it has {list(table.columns)}")
    bad = sorted(set(table["split"]) - set(SPLITS))
    if bad:
        raise ValueError(f"{path}: unknown split name(s) {bad}; expected {SPLITS}")
    ids = pd.to_numeric(table["id"], errors="coerce")
    odd = table["id"][ids.isna() | (ids % 1 != 0)]
    if len(odd):
        raise ValueError(f"{path}: ids must be whole numbers (the styles.csv ids), got {odd.head(3).tolist()}")
    return table.assign(id=ids.astype(int)).set_index("id")["split"]
