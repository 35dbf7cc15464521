"""How much of an attribute can be auto-accepted at a target precision, and what bounds it: the decision
rule, or the model's ranking of its own answers?

    python scripts/coverage_ceiling.py --bundle bundles/best_cpu_calibrated --run RUN_ID \
        --root ../shared/data/fashion-product-images-subset --true-aspect 0.75

Scores the run's own validation and test split (its logged `data/split.csv`) with the bundle, then per
attribute and per confidence score:
- `coverage (val threshold)`: test coverage and precision with the threshold chosen on validation, as
  the Calibration callback does (`choose_threshold`);
- `ceiling`: the largest test coverage whose test precision reaches the target, i.e. with the threshold
  chosen on the test rows themselves. No decision rule on this score can do better on these rows.
- `halves`: the mean test-like coverage and precision over 30 random halves of validation + test,
  the threshold chosen on one half and scored on the other (with the smallest coverage seen): how much
  a threshold chosen on ~3,700 rows can be trusted to carry over.
Scores: `head` (the head's calibrated top probability), `margin` (top minus second), and `served` (what
the bundle serves: for articleType, subCategory and masterCategory of a bundle calibrated since the
tenth session, the decoded combination's marginal, Platt-scaled; else the head's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fashion.calibration.selective import choose_threshold, reliability, selective_scores  # noqa: E402
from fashion.config import tracking_uri  # noqa: E402
from fashion.data.dataset import restore_aspect  # noqa: E402
from fashion.data.images import load_rgb  # noqa: E402
from fashion.data.styles import read_styles  # noqa: E402
from fashion.inference.runtime import load_predictor  # noqa: E402


def probabilities(predictor, root: Path, ids: list[int], aspect: float | None) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {a: [] for a in predictor.attributes}
    for start in range(0, len(ids), predictor.batch_size):
        images = [restore_aspect(load_rgb(root / "images" / f"{i}.jpg"), aspect) for i in ids[start:start + predictor.batch_size]]
        for a, p in predictor.probabilities(predictor.to_tensor(images)).items():
            parts[a].append(p)
    return {a: torch.cat(p) for a, p in parts.items()}


def targets(predictor, table: pd.DataFrame) -> dict[str, torch.Tensor]:
    """Class index per attribute, -1 where the label is missing or not in the run's vocabulary."""
    out = {}
    for a in predictor.attributes:
        index = {c: i for i, c in enumerate(predictor.trained.vocabularies[a].classes)}
        out[a] = torch.tensor([index.get(str(v), -1) if pd.notna(v) else -1 for v in table[a]])
    return out


def top_two_gap(p: torch.Tensor) -> torch.Tensor:
    top = p.topk(2, dim=1).values.double()
    return top[:, 0] - top[:, 1]


def ceiling(confidence: torch.Tensor, correct: torch.Tensor, target: float) -> float:
    threshold = choose_threshold(confidence, correct, target)
    return selective_scores(confidence, correct, threshold)["coverage"]


def halves(confidence: torch.Tensor, correct: torch.Tensor, target: float, rounds: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Coverage and precision on one random half with the threshold chosen on the other, `rounds` times."""
    generator = torch.Generator().manual_seed(0)
    results = []
    for _ in range(rounds):
        order = torch.randperm(len(correct), generator=generator)
        chosen, scored = order[: len(order) // 2], order[len(order) // 2:]
        threshold = choose_threshold(confidence[chosen], correct[chosen], target)
        result = selective_scores(confidence[scored], correct[scored], threshold)
        results.append((result["coverage"], result["accepted_precision"]))
    return torch.tensor(results, dtype=torch.float64).T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--run", required=True, help="the training run whose split the bundle was tested on")
    parser.add_argument("--root", required=True, help="the data folder the run trained on (styles.csv, images/)")
    parser.add_argument("--true-aspect", type=float, default=None, help="the folder's data.true_aspect (subset: 0.75)")
    parser.add_argument("--target", type=float, default=0.98)
    args = parser.parse_args()
    root = Path(args.root)
    split = pd.read_csv(MlflowClient(tracking_uri()).download_artifacts(args.run, "data/split.csv"))
    table = split.merge(read_styles(root / "styles.csv")[0], on="id")
    predictor = load_predictor(bundle=args.bundle, runtime="onnx", batch_size=64)
    probs, labels = {}, {}
    for part in ("val", "test"):
        rows = table[table.split == part]
        probs[part], labels[part] = probabilities(predictor, root, rows.id.tolist(), args.true_aspect), targets(predictor, rows)
    scores, predicted = {}, {}
    for part, p in probs.items():
        served, confidence = predictor.choose(p)
        scores[part] = {a: {"head": q.max(1).values.double(), "margin": top_two_gap(q), "served": confidence[a].double()}
                        for a, q in p.items()}
        predicted[part] = {a: {"head": q.argmax(1), "margin": q.argmax(1), "served": served[a]} for a, q in p.items()}
    print(f"| attribute | score | test acc | test ECE | coverage (val threshold) | precision there | ceiling at {args.target:.0%} "
          "| halves: coverage (min) | halves: precision |")
    print("|---|---|---|---|---|---|---|---|---|")
    for a in predictor.attributes:
        for name in scores["test"][a]:
            result = {}
            for part in ("val", "test"):
                keep = labels[part][a] >= 0
                result[part] = (scores[part][a][name][keep], predicted[part][a][name][keep] == labels[part][a][keep])
            threshold = choose_threshold(*result["val"], args.target)
            chosen = selective_scores(*result["test"], threshold)
            ece = f"{float(reliability(*result['test'])['ece']):.3f}" if name != "margin" else "–"
            coverage, precision = halves(*(torch.cat(pair) for pair in zip(result["val"], result["test"])), args.target)
            print(f"| {a} | {name} | {100 * float(result['test'][1].double().mean()):.1f} | {ece} | {100 * chosen['coverage']:.1f} "
                  f"| {100 * chosen['accepted_precision']:.1f} | {100 * ceiling(*result['test'], args.target):.1f} "
                  f"| {100 * coverage.mean():.1f} ({100 * coverage.min():.1f}) | {100 * precision.nanmean():.1f} |")


if __name__ == "__main__":
    main()
