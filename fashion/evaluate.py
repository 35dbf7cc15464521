"""`fashion-eval`: a bundle or checkpoint, evaluated on any folder in the Kaggle layout.

    fashion-eval --bundle bundles/best --data ../shared/data/fashion-product-images-subset
    fashion-eval --checkpoint best.ckpt --data /data/new-catalogue --output eval_out/

The evaluation sets a training run scores (`data.out_of_time_years`, `data.eval_sets`) are the same calls:
    fashion-eval --bundle b --data ../shared/data/fashion-product-images-small --years 2013 2014 2018 2019
    fashion-eval --bundle b --data ../shared/data/fashion-product-images-subset --true-aspect 0.75 --exclude-split split.csv
(`split.csv`: the run's `data/split.csv` artifact; its train and val products are left out.)

Labels are encoded with the *training* vocabularies: a label the model never learned is counted
(`unseen/<attribute>`) and left out of that attribute's metrics, never a crash. Prints accuracy,
macro-F1 and top-5 per attribute, writes confusion matrices and per-class reports, and logs an
MLflow run (tag `run_type=evaluation`) that points at the training run (`source_run_id`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from fashion.data.dataset import restore_aspect
from fashion.data.images import ImageReadError, load_rgb
from fashion.data.styles import read_styles
from fashion.data.vocab import IGNORE_INDEX
from fashion.inference.predictor import Predictor
from fashion.inference.runtime import RUNTIMES, load_predictor
from fashion.training.metrics import AttributeMetrics
from fashion.training.reports import classification_report, confusion_figure
from fashion.training.tracking import ensure_experiment

DEFAULT_TRACKING_URI = f"sqlite:///{Path(__file__).resolve().parents[1] / 'mlruns' / 'mlflow.db'}"


def encode_targets(predictor: Predictor, frame) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Targets in the training vocabularies; labels outside them are IGNORE_INDEX and counted."""
    targets, unseen = {}, {}
    for attribute, vocab in predictor.trained.vocabularies.items():
        values = frame[attribute] if attribute in frame else [None] * len(frame)
        codes = [vocab.encode(v) for v in values]
        unseen[attribute] = sum(1 for v, c in zip(values, codes) if isinstance(v, str) and c == IGNORE_INDEX)
        targets[attribute] = torch.tensor(codes, dtype=torch.long)
    return targets, unseen


def evaluate(predictor: Predictor, root: Path, styles_file: str = "styles.csv", true_aspect: float | None = None,
             years: list[int] | None = None, exclude_ids: set[int] = frozenset()) -> tuple[dict[str, float], dict, AttributeMetrics]:
    """`years`: only products of those catalogue years; `exclude_ids`: products to leave out (a run's train/val)."""
    frame, styles_report = read_styles(root / styles_file, [*predictor.attributes, *(["year"] if years else [])])
    if years:
        frame = frame[pd.to_numeric(frame["year"], errors="coerce").isin(years)]
    frame = frame[~frame["id"].isin(exclude_ids)].reset_index(drop=True)
    frame["path"] = [str(root / "images" / f"{i}.jpg") for i in frame["id"]]
    exists = np.array([Path(p).is_file() for p in frame["path"]], dtype=bool)
    frame = frame[exists].reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"no product of {root / styles_file} with an image is left to evaluate"
                         + (f" (years {years})" if years else "") + (" after --exclude-split" if exclude_ids else ""))
    targets, unseen = encode_targets(predictor, frame)
    metrics = AttributeMetrics({a: len(v) for a, v in predictor.trained.vocabularies.items()}, "eval", confusion=True)
    unreadable = []
    for start in tqdm(range(0, len(frame), predictor.batch_size), unit="batch", file=sys.stderr):
        rows = list(range(start, min(start + predictor.batch_size, len(frame))))
        images, keep = [], []
        for row in rows:
            try:
                images.append(restore_aspect(load_rgb(frame.at[row, "path"]), true_aspect))
                keep.append(row)
            except ImageReadError:
                unreadable.append(int(frame.at[row, "id"]))
        if images:
            probs = predictor.probabilities(predictor.to_tensor(images))
            index = torch.tensor(keep)
            metrics.update(probs, {a: t[index] for a, t in targets.items()})
    values = {k: float(v) for k, v in metrics.compute().items()}
    counts = {"images": int(len(frame) - len(unreadable)), "rows_without_image": int((~exists).sum()),
              "unreadable_images": len(unreadable), "malformed_rows": styles_report.malformed_rows,
              **{f"unseen/{a}": n for a, n in unseen.items()}}
    return values, counts, metrics


def write_reports(metrics: AttributeMetrics, predictor: Predictor, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    for attribute, matrix in metrics.confusion_matrices().items():
        classes = predictor.trained.vocabularies[attribute].classes
        figure = confusion_figure(matrix, classes, f"{attribute} (eval)")
        figure.savefig(output / f"confusion_{attribute}.png", dpi=90, bbox_inches="tight")
        plt.close(figure)
        classification_report(matrix, classes).to_csv(output / f"report_{attribute}.csv", float_format="%.4f")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle")
    source.add_argument("--checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="folder with styles.csv and images/<id>.jpg")
    parser.add_argument("--styles-file", default="styles.csv")
    parser.add_argument("--true-aspect", type=float, help="width/height of the real photos when the folder stores them squashed (the subset: 0.75)")
    parser.add_argument("--years", type=int, nargs="+", help="only these catalogue years (an out-of-time set)")
    parser.add_argument("--exclude-split", type=Path, help="a run's split.csv: its train and val products are left out")
    parser.add_argument("--output", type=Path, default=Path("eval_output"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help="as in fashion-predict")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    parser.add_argument("--experiment", default="fashion")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    if not (args.data / args.styles_file).is_file():
        parser.error(f"{args.data / args.styles_file} not found (expected the Kaggle layout: styles.csv + images/)")

    try:
        predictor = load_predictor(bundle=args.bundle, checkpoint=args.checkpoint, runtime=args.runtime, top_k=5,
                                   batch_size=args.batch_size)
    except (ValueError, OSError) as err:  # a refused, tampered or missing bundle/checkpoint: say why, no traceback
        print(f"fashion-eval: cannot load the model: {err}", file=sys.stderr)
        return 2
    exclude = set()
    if args.exclude_split:
        split = pd.read_csv(args.exclude_split)
        exclude = set(split.loc[split["split"].isin(["train", "val"]), "id"].astype(int))
    try:
        values, counts, metrics = evaluate(predictor, args.data, args.styles_file, args.true_aspect, args.years, exclude)
    except ValueError as err:
        print(f"fashion-eval: {err}", file=sys.stderr)
        return 2
    write_reports(metrics, predictor, args.output)
    (args.output / "metrics.json").write_text(json.dumps({**values, **counts}, indent=2))
    print(f"{'attribute':<15} {'acc':>7} {'macro-F1':>9} {'top-5':>7} {'unseen':>7}")
    for attribute in predictor.attributes:
        top5 = values.get(f"eval/{attribute}/top5")
        print(f"{attribute:<15} {values[f'eval/{attribute}/acc']:7.4f} {values[f'eval/{attribute}/f1']:9.4f} "
              f"{'' if top5 is None else f'{top5:7.4f}':>7} {counts[f'unseen/{attribute}']:7d}")
    print(f"images evaluated: {counts['images']}, rows without image: {counts['rows_without_image']}, unreadable: {counts['unreadable_images']}")
    if not args.no_mlflow:
        source_run = source_run_id(args.bundle)
        mlflow.set_tracking_uri(args.tracking_uri)
        experiment_id = ensure_experiment(args.tracking_uri, args.experiment, None)
        tags = {"run_type": "evaluation", "eval.data": str(args.data.resolve())}
        if source_run:
            tags["source_run_id"] = source_run
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"eval {args.data.name}", tags=tags) as run:
            mlflow.log_params({"model": args.bundle or args.checkpoint, "data": str(args.data), "runtime": predictor.runtime,
                               "true_aspect": args.true_aspect, "years": args.years,
                               "exclude_split": str(args.exclude_split) if args.exclude_split else None})
            mlflow.log_metrics(values)
            mlflow.log_metrics({f"eval_data/{k}": float(v) for k, v in counts.items()})
            mlflow.log_artifacts(str(args.output), artifact_path="evaluation")
        print(f"MLflow evaluation run {run.info.run_id}" + (f" (of training run {source_run})" if source_run else ""))
    return 0


def source_run_id(bundle: str | None) -> str | None:
    if not bundle:
        return None
    manifest = Path(bundle) / "manifest.json"
    return json.loads(manifest.read_text()).get("source", {}).get("mlflow_run_id") if manifest.is_file() else None


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
