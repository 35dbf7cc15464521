"""Build the small sample bundled in `data/sample/` from the real Fashion Product Images subset.

The sample keeps every articleType the subset has (a few images each at least), so the default
training run exercises rare classes, `min_count` and the split the same way a real run does.
Run once by a maintainer; the output is committed:

    python scripts/make_sample.py --source ../shared/data/fashion-product-images-subset --size 1000
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

LICENCE = """# Bundled sample of Fashion Product Images

{n} real product photos (224x224 JPEG) and their rows of `styles.csv`, taken from the Kaggle
"Fashion Product Images Dataset" by Param Aggarwal (MIT licence,
kaggle.com/datasets/paramaggarwal/fashion-product-images-dataset), via the 9,583-image subset
that the project benchmarks on. Selected by `scripts/make_sample.py` (seed {seed}): up to a
proportional share of every articleType, at least {min_per_class} per class where the subset has them.

Layout is the Kaggle one: `styles.csv` + `images/<id>.jpg`. The `productDisplayName` column is
not included.
"""


def select_ids(styles: pd.DataFrame, size: int, seed: int, min_per_class: int) -> list[int]:
    """Proportional per-articleType sample with a floor, so rare classes stay represented."""
    shuffled = styles.sample(frac=1.0, random_state=seed)
    share = size / len(styles)
    picked = []
    for _, group in shuffled.groupby("articleType", sort=True):
        take = max(min_per_class, round(len(group) * share))
        picked.extend(group["id"].head(take).tolist())
    rest = shuffled[~shuffled["id"].isin(picked)]["id"]
    picked = picked[:size] + rest.head(max(0, size - len(picked))).tolist()
    return sorted(picked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("data/sample"))
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-per-class", type=int, default=3)
    args = parser.parse_args()

    styles = pd.read_csv(args.source / "styles.csv")
    have = {int(p.stem) for p in (args.source / "images").glob("*.jpg")}
    styles = styles[styles["id"].isin(have)]
    ids = select_ids(styles, args.size, args.seed, args.min_per_class)

    (args.out / "images").mkdir(parents=True, exist_ok=True)
    for i in ids:
        shutil.copyfile(args.source / "images" / f"{i}.jpg", args.out / "images" / f"{i}.jpg")
    styles[styles["id"].isin(ids)].sort_values("id").to_csv(args.out / "styles.csv", index=False)
    (args.out / "README.md").write_text(
        LICENCE.format(n=len(ids), seed=args.seed, min_per_class=args.min_per_class)
    )
    print(f"wrote {len(ids)} images to {args.out}")


if __name__ == "__main__":
    main()
