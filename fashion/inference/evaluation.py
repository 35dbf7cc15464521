"""A predictor scored against a labelled folder: the numbers `fashion-eval` prints and logs, the gate
`fashion-promote` applies, and the figures and tables beside them. Apart from the command line
(fashion/evaluate.py) so that `fashion-eval --help` and a refused key answer before torch, torchmetrics and
matplotlib load.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from fashion.calibration import selective_scores
from fashion.config import progress_bar
from fashion.data.dataset import restore_aspect
from fashion.data.eval_sets import EvalSource
from fashion.data.vocab import IGNORE_INDEX
from fashion.inference.batch import ImageFiles, helpers_on_one_thread, probabilities_in_order
from fashion.inference.predictor import Predictor
from fashion.metrics import AttributeMetrics, classification_report, confused_pairs, confusion_figure
from fashion.metrics.reports import coverage_figure, reliability_figure

log = logging.getLogger(__name__)


def encode_targets(predictor: Predictor, frame) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Targets in the training vocabularies, the labels mapped first as training mapped them (colour_families: Navy
    Blue is Blue); labels outside them are IGNORE_INDEX and counted."""
    targets, unseen = {}, {}
    mapping = predictor.trained.label_mapping
    for attribute, vocab in predictor.trained.vocabularies.items():
        values = frame[attribute] if attribute in frame else [None] * len(frame)
        if mapping and attribute in frame:
            values = mapping.map_values(attribute, values)
        codes = [vocab.encode(v) for v in values]
        unseen[attribute] = sum(1 for v, c in zip(values, codes) if isinstance(v, str) and c == IGNORE_INDEX)
        targets[attribute] = torch.tensor(codes, dtype=torch.long)
    return targets, unseen


def evaluate(predictor: Predictor, source: EvalSource, exclude_ids: set[int] = frozenset(), lanes: int = 1,
             ) -> tuple[dict[str, float], dict, AttributeMetrics]:
    """`source`: the folder (and its years, its true aspect); `exclude_ids`: products to leave out (a run's train/val);
    `lanes`: batches decoded and scored at once, as fashion-predict's (`lanes_for`: the predictor's runtime decides)."""
    # Images are decoded once, here: an unreadable one is counted and left out, not checked up front first.
    frame, counts = source.table(predictor.attributes, exclude_ids, check_images=False)
    targets, unseen = encode_targets(predictor, frame)
    metrics = AttributeMetrics({a: len(v) for a, v in predictor.trained.vocabularies.items()}, "eval",
                               confusion=True, confidence=True)
    temperatures = predictor.trained.temperatures()
    served: dict[str, list[torch.Tensor]] = defaultdict(list)
    files = ImageFiles(frame["path"].tolist(), partial(load_restored, predictor, source.true_aspect), predictor.preprocess)
    unreadable: list[str] = []   # why each was left out (the reason names the file)
    batches = probabilities_in_order(predictor, files, lanes=lanes)
    with helpers_on_one_thread(predictor.runtime == "onnx" and lanes > 1):
        for rows, probs, errors in progress_bar(batches, total=-(-len(files) // predictor.batch_size), unit="batch"):
            unreadable += errors.values()
            if probs is None:
                continue
            index = torch.tensor([row for row in rows if row not in errors])
            batch_targets = {a: t[index] for a, t in targets.items()}
            chosen, confidence = predictor.choose(probs)
            # log-probabilities: softmax gives the calibrated probabilities back, x T the uncalibrated ones
            metrics.update({a: p.clamp_min(1e-30).log() for a, p in probs.items()}, batch_targets, temperatures,
                           {a: (confidence[a], c) for a, c in chosen.items()})
            collect_decisions(predictor, probs, (chosen, confidence), batch_targets, served)
    values = {k: float(v) for k, v in metrics.compute().items()}
    values |= decision_scores(predictor, {k: torch.cat(v) for k, v in served.items()})
    if unreadable:   # named, as fashion-predict and training name theirs: a folder to mend (after the bar, not through it)
        log.warning("left out %d unreadable image(s): %s", len(unreadable),
                    "; ".join(unreadable[:5]) + ("; ..." if len(unreadable) > 5 else ""))
    counts = {**counts, "images": len(frame) - len(unreadable), "unreadable_images": len(unreadable)}
    return values, {**counts, **{f"unseen/{a}": n for a, n in unseen.items()}}, metrics


def load_restored(predictor: Predictor, true_aspect: float | None, path: str) -> np.ndarray:
    """A photo decoded as the model's training decoded it, its true aspect restored where it was stored squashed."""
    return restore_aspect(predictor.load(path), true_aspect)


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
