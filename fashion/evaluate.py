"""`fashion-eval`: a bundle or checkpoint, evaluated on any folder in the Kaggle layout.

    fashion-eval bundle=bundles/best root=../shared/data/fashion-product-images-subset
    fashion-eval checkpoint=best.ckpt root=/data/new-catalogue output=eval_out/

The evaluation sets a training run scores (`data.out_of_time_years`, `data.eval_sets`) are the same calls:
    fashion-eval bundle=b root=../shared/data/fashion-product-images-small years=[2013,2014,2018,2019]
    fashion-eval bundle=b root=../shared/data/fashion-product-images-subset true_aspect=0.75 exclude_split=split.csv
(`split.csv`: the run's `data/split.csv` artifact; its train and val products are left out.) Keys: conf/eval.yaml.

Labels are encoded with the *training* vocabularies: a label the model never learned is counted
(`unseen/<attribute>`) and left out of that attribute's metrics, never a crash. Prints per attribute
accuracy (each head on its own, and with the taxonomy levels decoded together as served), macro-F1,
top-5, calibration error (ECE, 15 bins) and, at the model's thresholds, coverage (share accepted) and
the precision of the accepted tags; counts predictions whose articleType/subCategory/masterCategory
never occur together in the training data (`taxonomy/inconsistent*`). Writes confusion matrices,
per-class reports, reliability diagrams and coverage curves, and logs an MLflow run
(tag `run_type=evaluation`) that points at the training run (`source_run_id`).
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
import torch

from fashion.calibration import selective_scores
from fashion.cli import tool_config
from fashion.config import progress_bar, refuse_a_silent_server
from fashion.data.dataset import restore_aspect
from fashion.data.eval_sets import EvalSource
from fashion.data.images import ImageReadError
from fashion.data.split import load_split
from fashion.data.vocab import IGNORE_INDEX
from fashion.inference.predictor import Predictor
from fashion.inference.runtime import Runtime, load_predictor
from fashion.metrics import AttributeMetrics, classification_report, confused_pairs, confusion_figure
from fashion.metrics.reports import coverage_figure, reliability_figure
from fashion.tracking.run import tool_run
from fashion.validation import Aspect, AtLeastOne


def encode_targets(predictor: Predictor, frame) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Targets in the training vocabularies; labels outside them are IGNORE_INDEX and counted."""
    targets, unseen = {}, {}
    for attribute, vocab in predictor.trained.vocabularies.items():
        values = frame[attribute] if attribute in frame else [None] * len(frame)
        codes = [vocab.encode(v) for v in values]
        unseen[attribute] = sum(1 for v, c in zip(values, codes) if isinstance(v, str) and c == IGNORE_INDEX)
        targets[attribute] = torch.tensor(codes, dtype=torch.long)
    return targets, unseen


def evaluate(predictor: Predictor, source: EvalSource, exclude_ids: set[int] = frozenset(),
             ) -> tuple[dict[str, float], dict, AttributeMetrics]:
    """`source`: the folder (and its years, its true aspect); `exclude_ids`: products to leave out (a run's train/val)."""
    # Images are decoded once, here: an unreadable one is counted and left out, not checked up front first.
    frame, counts = source.table(predictor.attributes, exclude_ids, check_images=False)
    targets, unseen = encode_targets(predictor, frame)
    metrics = AttributeMetrics({a: len(v) for a, v in predictor.trained.vocabularies.items()}, "eval",
                               confusion=True, confidence=True)
    temperatures = predictor.trained.model.temperatures()
    served: dict[str, list[torch.Tensor]] = defaultdict(list)
    unreadable = 0
    for start in progress_bar(range(0, len(frame), predictor.batch_size), unit="batch"):
        images, keep = [], []
        for row, path in enumerate(frame["path"].iloc[start:start + predictor.batch_size], start):
            try:
                images.append(restore_aspect(predictor.load(path), source.true_aspect))
                keep.append(row)
            except ImageReadError:
                unreadable += 1
        if images:
            index = torch.tensor(keep)
            probs = predictor.probabilities(predictor.to_tensor(images))
            batch_targets = {a: t[index] for a, t in targets.items()}
            chosen, confidence = predictor.choose(probs)
            # log-probabilities: softmax gives the calibrated probabilities back, x T the uncalibrated ones
            metrics.update({a: p.clamp_min(1e-30).log() for a, p in probs.items()}, batch_targets, temperatures,
                           {a: (confidence[a], c) for a, c in chosen.items()})
            collect_decisions(predictor, probs, (chosen, confidence), batch_targets, served)
    values = {k: float(v) for k, v in metrics.compute().items()}
    values |= decision_scores(predictor, {k: torch.cat(v) for k, v in served.items()})
    counts = {**counts, "images": len(frame) - unreadable, "unreadable_images": unreadable}
    return values, {**counts, **{f"unseen/{a}": n for a, n in unseen.items()}}, metrics


def collect_decisions(predictor: Predictor, probs: dict[str, torch.Tensor],
                      decided: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]], targets: dict[str, torch.Tensor],
                      served: dict[str, list[torch.Tensor]]) -> None:
    """Per attribute: each head's own choice, the jointly decoded (served) one, its confidence, the target."""
    chosen, confidence = decided   # predictor.choose(probs): what is served
    joint = chosen if predictor.taxonomy else predictor.choose(probs, taxonomy=True)[0]
    for attribute, p in probs.items():
        served[f"{attribute}/own"].append(p.argmax(dim=1))
        served[f"{attribute}/joint"].append(joint[attribute])
        served[f"{attribute}/served"].append(chosen[attribute])
        served[f"{attribute}/confidence"].append(confidence[attribute])
        served[f"{attribute}/target"].append(targets[attribute])


def decision_scores(predictor: Predictor, served: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy with the taxonomy decoded jointly, coverage and accepted precision of what is served,
    and how many predictions pair taxonomy levels the training data never pairs (with and without)."""
    values = {}
    for attribute in predictor.attributes:
        target = served[f"{attribute}/target"]
        labelled = target != IGNORE_INDEX
        if not labelled.any():
            continue
        values[f"eval/{attribute}/acc_taxonomy"] = float((served[f"{attribute}/joint"] == target)[labelled].double().mean())
        correct = (served[f"{attribute}/served"] == target)[labelled]
        threshold = predictor.trained.decision.threshold(attribute, predictor.taxonomy)
        for name, value in selective_scores(served[f"{attribute}/confidence"][labelled], correct, threshold).items():
            if math.isfinite(value):   # precision is undefined (NaN) when nothing is accepted
                values[f"eval/{attribute}/{name}"] = value
    taxonomy = predictor.trained.taxonomy
    if taxonomy:
        seen = set(taxonomy.combinations)
        for decoding, name in (("own", "taxonomy/inconsistent_independent"), ("joint", "taxonomy/inconsistent")):
            labels = [[predictor.trained.vocabularies[a].classes[i] for i in served[f"{a}/{decoding}"].tolist()]
                      for a in taxonomy.attributes]
            values[name] = float(sum(tuple(row) not in seen for row in zip(*labels)))
    return values


def write_reports(metrics: AttributeMetrics, predictor: Predictor, output: Path) -> dict[str, pd.DataFrame]:
    """The figures and tables under `output`; returns each attribute's mix-ups (`confused_pairs`) for the summary."""
    output.mkdir(parents=True, exist_ok=True)
    decision = predictor.trained.decision
    mix_ups = {}
    for attribute, matrix in metrics.confusion_matrices().items():
        classes = predictor.trained.vocabularies[attribute].classes
        save_figure(confusion_figure(matrix, classes, f"{attribute} (eval)"), output / f"confusion_{attribute}.png")
        classification_report(matrix, classes).to_csv(output / f"report_{attribute}.csv", float_format="%.4f")
        mix_ups[attribute] = confused_pairs(matrix, classes)
        mix_ups[attribute].to_csv(output / f"confusions_{attribute}.csv", index=False, float_format="%.4f")
    for attribute, (confidence, correct, uncalibrated) in metrics.confidence_records().items():
        if len(correct):
            save_figure(reliability_figure(confidence, correct, uncalibrated, f"{attribute} (eval)"),
                        output / f"reliability_{attribute}.png")
            save_figure(coverage_figure(confidence, correct, decision.threshold(attribute, predictor.taxonomy),
                                        decision.target_precision.get(attribute), f"{attribute} (eval)"),
                        output / f"coverage_{attribute}.png")
    return mix_ups


def save_figure(figure, path: Path) -> None:
    figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    cfg = tool_config("fashion-eval", "eval", sys.argv[1:] if argv is None else argv, evaluate_folder,
                      renamed={"data": "root"})
    return evaluate_folder(**cfg)


def evaluate_folder(root: str, bundle: str | None = None, checkpoint: str | None = None, styles_file: str = "styles.csv",
                    true_aspect: Aspect | None = None, years: list[int] | None = None, exclude_split: str | None = None,
                    output: str = "eval_output", batch_size: AtLeastOne = 64, runtime: Runtime = "auto", taxonomy: bool = True,
                    mlflow: bool = True,
                    tracking_uri: str | None = None, experiment: str = "fashion") -> int:
    """Scores the model on the folder, writes reports under `output`, logs an evaluation run; 2 on bad input."""
    try:
        predictor = load_predictor(bundle=bundle, checkpoint=checkpoint, runtime=runtime, top_k=5, batch_size=batch_size,
                                   taxonomy=taxonomy)
    except (ValueError, OSError) as err:  # a refused, tampered or missing bundle/checkpoint: say why, no traceback
        print(f"fashion-eval: cannot load the model: {err}", file=sys.stderr)
        return 2
    out = Path(output)
    try:   # before the scoring, which can take minutes: a folder that cannot be made is known now
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"fashion-eval: cannot write to {out}: {err}", file=sys.stderr)
        return 2
    try:
        split = load_split(exclude_split) if exclude_split else pd.Series(dtype=str)
    except (ValueError, OSError) as err:
        print(f"fashion-eval: cannot read exclude_split: {err}", file=sys.stderr)
        return 2
    try:   # the run is logged after the scoring: a server that does not answer is known now
        refuse_a_silent_server(tracking_uri if mlflow else None)
    except ValueError as err:
        print(f"fashion-eval: {err} (or mlflow=false)", file=sys.stderr)
        return 2
    exclude = set(split.index[split.isin(["train", "val"])])
    source = EvalSource(root=root, styles_file=styles_file, true_aspect=true_aspect, years=years)
    try:
        values, counts, metrics = evaluate(predictor, source, exclude)
    except (ValueError, FileNotFoundError) as err:
        print(f"fashion-eval: {err}", file=sys.stderr)
        return 2
    mix_ups = write_reports(metrics, predictor, out)
    (out / "metrics.json").write_text(json.dumps({**values, **counts}, indent=2))
    print_table(predictor.attributes, values, counts)
    print_mix_ups(mix_ups, out)
    print(f"images evaluated: {counts['images']}, rows without image: {counts['rows_without_image']}, unreadable: {counts['unreadable_images']}")
    if mlflow:
        settings = {"model": bundle or checkpoint, "data": root, "runtime": predictor.runtime, "taxonomy": taxonomy,
                    "true_aspect": true_aspect,
                    "years": years, "exclude_split": exclude_split}
        log_evaluation(tracking_uri, experiment, bundle, settings, values, counts, out)
    return 0


def print_table(attributes: list[str], values: dict[str, float], counts: dict) -> None:
    columns = [("acc", "acc"), ("acc_taxonomy", "acc+tax"), ("f1", "macro-F1"), ("top5", "top-5"), ("ece", "ECE"),
               ("coverage", "coverage"), ("accepted_precision", "prec@acc")]
    print(f"{'attribute':<15}" + "".join(f" {title:>9}" for _, title in columns) + f" {'unseen':>7}")
    for attribute in attributes:
        cells = [values.get(f"eval/{attribute}/{key}") for key, _ in columns]
        print(f"{attribute:<15}" + "".join(f" {'':>9}" if v is None else f" {v:9.4f}" for v in cells)
              + f" {counts[f'unseen/{attribute}']:7d}")
    if "taxonomy/inconsistent" in values:
        print(f"taxonomy: {values['taxonomy/inconsistent']:.0f} inconsistent predictions decoded jointly (as served), "
              f"{values['taxonomy/inconsistent_independent']:.0f} with each head on its own")


def print_mix_ups(mix_ups: dict[str, pd.DataFrame], output: Path, most: int = 3) -> None:
    """Each attribute's most frequent mix-ups, the first thing to read after the accuracies."""
    if not any(len(pairs) for pairs in mix_ups.values()):
        return
    print(f"most mixed up (true -> predicted: count; every pair in {output}/confusions_<attribute>.csv):")
    for attribute, pairs in mix_ups.items():
        if len(pairs):
            print(f"  {attribute}: " + ", ".join(f"{row.true} -> {row.predicted}: {row.count}"
                                                 for row in pairs.head(most).itertuples()))


def log_evaluation(tracking_uri: str, experiment: str, bundle: str | None, settings: dict, values: dict, counts: dict,
                   output: Path) -> None:
    source_run = source_run_id(bundle)
    tags = {"eval.data": str(Path(settings["data"]).resolve())}
    if source_run:
        tags["source_run_id"] = source_run
    with tool_run(tracking_uri, experiment, f"eval {Path(settings['data']).name}", "evaluation", tags) as run:
        mlflow.log_params(settings)
        mlflow.log_metrics(values)
        mlflow.log_metrics({f"eval_data/{k}": float(v) for k, v in counts.items()})
        mlflow.log_artifacts(str(output), artifact_path="evaluation")
    print(f"MLflow evaluation run {run.info.run_id}" + (f" (of training run {source_run})" if source_run else ""))


def source_run_id(bundle: str | None) -> str | None:
    if not bundle:
        return None
    manifest = Path(bundle) / "manifest.json"
    return json.loads(manifest.read_text()).get("source", {}).get("mlflow_run_id") if manifest.is_file() else None


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
