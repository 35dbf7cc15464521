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

from dataclasses import dataclass


@dataclass
class EvalSource:
    """A Kaggle-layout folder to score after training (`data.eval_sets.<name>`).

    `true_aspect`: width/height of the products' real photos when the folder stores them squashed
    (the subset: 0.75, stored 1:1); null when stored at the true aspect. `unseen_only`: leave out
    products whose id is in the run's train or val split (the same photo at another resolution).
    """

    root: str
    styles_file: str = "styles.csv"
    images_dir: str = "images"
    true_aspect: float | None = None
    unseen_only: bool = True
