"""Would averaging trained runs beat the best one? Test accuracy of each run and of their ensembles.

    python scripts/ensemble_check.py f8dd19c99a5b45b88ea70d19d2053fb2 7d40ad87... --output docs/ensembles.md

Each run's best checkpoint (tag `best_checkpoint`) scores the images of one split of the runs'
shared fixed split (the `data/split.csv` they logged; runs with different splits are refused, since
their test sets differ). The ensemble averages the runs' softmax probabilities per attribute, for
every pair and for all runs together. An attribute whose class list differs between two runs (e.g.
another `labels.min_count`) is left out of their ensemble rather than averaged wrongly. Accuracy
and macro-F1 are the training run's own torchmetrics (`AttributeMetrics`), so a single run's row
repeats its logged `test/` metrics: that is the check that this script scores what training scored.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from fashion.data.images import load_rgb
from fashion.data.styles import read_styles
from fashion.inference.evaluation import encode_targets
from fashion.export import checkpoint_of_run
from fashion.inference.runtime import load_predictor
from fashion.metrics import AttributeMetrics
from fashion.tracking import tracking_uri

Scores = dict[str, torch.Tensor]


def run_split(client: MlflowClient, run_id: str, workdir: Path) -> pd.DataFrame:
    return pd.read_csv(client.download_artifacts(run_id, "data/split.csv", str(workdir)))


def score_run(checkpoint: Path, frame: pd.DataFrame, batch_size: int) -> tuple[Scores, Scores, dict[str, list[str]]]:
    """Softmax per attribute over `frame`'s images, its targets, and the run's class lists."""
    predictor = load_predictor(checkpoint=checkpoint, runtime="torch", batch_size=batch_size)
    chunks: dict[str, list[torch.Tensor]] = {a: [] for a in predictor.attributes}
    for start in range(0, len(frame), batch_size):
        images = [load_rgb(path) for path in frame["path"][start:start + batch_size]]
        for attribute, p in predictor.probabilities(predictor.to_tensor(images)).items():
            chunks[attribute].append(p)
    targets, _ = encode_targets(predictor, frame)
    classes = {a: list(v.classes) for a, v in predictor.trained.vocabularies.items()}
    return {a: torch.cat(c) for a, c in chunks.items()}, targets, classes


def accuracy_row(name: str, members: tuple[str, ...], scored: dict) -> dict[str, object]:
    """Mean probabilities of `members`; attributes they do not share (or classify differently) are blank."""
    first = scored[members[0]]
    row: dict[str, object] = {"runs": name}
    for attribute in first["probs"]:
        if any(attribute not in scored[m]["probs"] or scored[m]["classes"][attribute] != first["classes"][attribute]
               for m in members):
            continue
        probs = torch.stack([scored[m]["probs"][attribute] for m in members]).mean(0)
        metrics = AttributeMetrics({attribute: probs.shape[1]}, "ens")
        metrics.update({attribute: probs}, {attribute: first["targets"][attribute]})
        values = metrics.compute()
        row[attribute] = 100 * float(values[f"ens/{attribute}/acc"])
        row[f"{attribute} F1"] = 100 * float(values[f"ens/{attribute}/f1"])
    return row


def markdown(rows: list[dict[str, object]], attributes: list[str]) -> str:
    lines = ["| runs | " + " | ".join(attributes) + " | mean |", "|---" * (len(attributes) + 2) + "|"]
    for row in rows:
        values = [row.get(a) for a in attributes]
        present = [v for v in values if v is not None]
        cells = ["–" if v is None else f"{v:.2f}" for v in values]
        lines.append(f"| {row['runs']} | " + " | ".join(cells) + f" | {np.mean(present):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_ids", nargs="+", help="two or more MLflow run ids (full ids)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--data", type=Path, help="folder with styles.csv + images/ (default: the first run's data.root)")
    parser.add_argument("--tracking-uri", default=tracking_uri())
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    if len(args.run_ids) < 2:
        parser.error("an ensemble needs two or more runs")
    if len({run_id[:8] for run_id in args.run_ids}) < len(args.run_ids):
        parser.error("a run is named more than once (runs are told apart by their first 8 characters)")

    client = MlflowClient(args.tracking_uri)
    root = args.data or Path(client.get_run(args.run_ids[0]).data.params["data.root"])
    scored = {}
    with tempfile.TemporaryDirectory() as workdir:
        split = run_split(client, args.run_ids[0], Path(workdir) / args.run_ids[0])
        for run_id in args.run_ids[1:]:
            if not run_split(client, run_id, Path(workdir) / run_id).equals(split):
                parser.error(f"run {run_id} logged another split than {args.run_ids[0]}: their {args.split} sets differ")
        styles, _ = read_styles(root / "styles.csv")
        frame = styles.set_index("id").loc[split.loc[split["split"] == args.split, "id"]].reset_index()
        frame["path"] = [str(root / "images" / f"{i}.jpg") for i in frame["id"]]
        for run_id in args.run_ids:
            checkpoint = checkpoint_of_run(client, run_id, Path(workdir) / run_id)
            probs, targets, classes = score_run(checkpoint, frame, args.batch_size)
            scored[run_id[:8]] = {"probs": probs, "targets": targets, "classes": classes}
            print(f"scored {run_id[:8]} on {len(frame)} {args.split} images", file=sys.stderr)

    names = list(scored)
    groups = [(n,) for n in names] + list(itertools.combinations(names, 2))
    if len(names) > 2:
        groups.append(tuple(names))
    rows = [accuracy_row(" + ".join(g), g, scored) for g in groups]
    attributes = list(scored[names[0]]["probs"])
    report = "\n\n".join([
        f"# Ensembles of trained runs ({args.split} split, {len(frame)} images)",
        "Generated by `python scripts/ensemble_check.py " + " ".join(args.run_ids) + f" --split {args.split}`; "
        "the ensemble averages the runs' softmax probabilities. Accuracy (%):",
        markdown(rows, attributes),
        "Macro-F1 (%):",
        markdown([{"runs": r["runs"], **{a: r.get(f"{a} F1") for a in attributes}} for r in rows], attributes),
    ]) + "\n"
    print(report)
    if args.output:
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
