"""Photos scored at the end of every training run besides its own test split: the numbers a user sees.

A run's test split shares the catalogue years and the resolution of its training data, so it
over-states what a new catalogue year or a sharper photo gets. Two kinds of set answer that, each
logged into the run as `eval/<name>/<attribute>/{acc,f1}`:
- out of time: whole catalogue years of the training folder held out of train/val/test
  (`data.out_of_time_years`), built by the datamodule;
- other folders (`data.eval_sets`), e.g. the subset's 224px photos as a cross-resolution set, with
  the products the run trained or validated on left out.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fashion.data.images import split_usable, under_other_names
from fashion.data.styles import read_styles
from fashion.validation import Aspect, typed


@typed   # a config is checked at composition; this checks a set built from code against the same annotations
@dataclass
class EvalSource:
    """A Kaggle-layout folder to score after training (`data.eval_sets.<name>`).

    `true_aspect`: width/height of the products' real photos when the folder stores them squashed
    (the subset: 0.75, stored 1:1); null when stored at the true aspect. `unseen_only`: leave out
    products whose id is in the run's train or val split (the same photo at another resolution).
    `years`: only products of these catalogue years.
    """

    root: str
    styles_file: str = "styles.csv"
    images_dir: str = "images"
    true_aspect: Aspect | None = None
    unseen_only: bool = True
    years: list[int] | None = None

    def table(self, attributes: Sequence[str], exclude_ids: Collection[int] = (), check_images: bool = True,
              ) -> tuple[pd.DataFrame, dict[str, int]]:
        """Rows (id, path, labels) with a readable image, and the counts of what was left out and why.

        The one place a folder to score becomes rows: training's evaluation sets and fashion-eval.
        """
        root = Path(self.root)
        if not (root / self.styles_file).is_file():
            raise FileNotFoundError(f"{root / self.styles_file} not found (expected the Kaggle layout: styles.csv + images/)")
        # a folder labelling some of the attributes only is scored on those (AttributeMetrics leaves the others out)
        frame, styles_report = read_styles(root / self.styles_file, [*attributes, *(["year"] if self.years else [])],
                                           optional=attributes)
        if self.years:
            frame = frame[pd.to_numeric(frame["year"], errors="coerce").isin(list(self.years))]
        frame = frame[~frame["id"].isin(set(exclude_ids))]
        frame = frame.assign(path=[str(root / self.images_dir / f"{i}.jpg") for i in frame["id"]])
        frame, missing, unreadable = split_usable(frame, check_images)
        if frame.empty:
            raise ValueError(f"no product of {root / self.styles_file} with a readable image is left to score"
                             + (f" (years {list(self.years)})" if self.years else "")
                             + (" after leaving out the run's own products" if len(exclude_ids) else "")
                             + under_other_names(root / self.images_dir, missing))
        counts = {"rows_without_image": len(missing), "unreadable_images": len(unreadable),
                  "malformed_rows": styles_report.malformed_rows}
        return frame.assign(true_aspect=self.true_aspect), counts
