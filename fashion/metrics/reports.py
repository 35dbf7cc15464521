"""Per-attribute evaluation reports built from a (DDP-synchronised) confusion matrix."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def classification_report(confusion: torch.Tensor, classes: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (rows = true, columns = predicted), plus averages."""
    cm = confusion.double().numpy()
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    table = pd.DataFrame({"precision": precision, "recall": recall, "f1": f1, "support": support.astype(int)}, index=classes)
    present = table[table["support"] > 0]
    table.loc["macro avg"] = [*present[["precision", "recall", "f1"]].mean().tolist(), int(present["support"].sum())]
    weights = present["support"] / max(1, present["support"].sum())
    table.loc["weighted avg"] = [*(present[["precision", "recall", "f1"]].mul(weights, axis=0).sum()).tolist(), int(present["support"].sum())]
    table.loc["accuracy"] = [np.nan, np.nan, tp.sum() / max(1.0, cm.sum()), int(cm.sum())]
    table.index.name = "class"
    return table


def confused_pairs(confusion: torch.Tensor, classes: list[str]) -> pd.DataFrame:
    """Every (true, predicted) pair the model mixed up, most frequent first: what a 125-class confusion
    image cannot show. `share_of_errors` says how much of the attribute's error one pair is (a handful of
    pairs, shoe kinds say, often make up half of it); `share_of_true` how often that class goes that way."""
    cm = confusion.long().numpy()
    errors = cm.sum() - np.trace(cm)
    true, predicted = np.nonzero(cm * (1 - np.eye(len(cm), dtype=cm.dtype)))
    counts = cm[true, predicted]
    table = pd.DataFrame({
        "true": [classes[i] for i in true], "predicted": [classes[j] for j in predicted], "count": counts,
        "share_of_errors": counts / max(errors, 1), "share_of_true": counts / cm.sum(axis=1)[true],
    })
    return table.sort_values(["count", "true", "predicted"], ascending=[False, True, True], ignore_index=True)


def confusion_figure(confusion: torch.Tensor, classes: list[str], title: str) -> Figure:
    """Row-normalised confusion matrix, sized to stay readable for ~70 classes."""
    cm = confusion.double().numpy()
    rows = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = min(30.0, 2.0 + 0.28 * len(classes))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(classes) <= 20:
        for (i, j), value in np.ndenumerate(cm):
            if value:
                ax.text(j, i, int(value), ha="center", va="center", fontsize=7, color="white" if normalised[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig


def reliability_figure(confidence: torch.Tensor, correct: torch.Tensor, uncalibrated: torch.Tensor, title: str) -> Figure:
    """Accuracy against confidence per equal-width bin, before (grey) and after calibration (blue);
    the diagonal is perfect calibration; ECE of each in the legend, bin counts underneath."""
    from fashion.calibration.selective import ECE_BINS, reliability

    fig, (ax, counts) = plt.subplots(2, 1, figsize=(4.6, 5.4), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    centres = (np.arange(ECE_BINS) + 0.5) / ECE_BINS
    for scores, colour, name in ((uncalibrated, "0.6", "uncalibrated"), (confidence, "tab:blue", "calibrated")):
        bins = reliability(scores, correct)
        filled = bins["count"].numpy() > 0
        ax.plot(bins["confidence"].numpy()[filled], bins["accuracy"].numpy()[filled], "o-", color=colour,
                label=f"{name} (ECE {bins['ece']:.3f})")
        if name == "calibrated":
            counts.bar(centres, bins["count"].numpy(), width=1 / ECE_BINS, color=colour, alpha=0.7)
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{title}: {len(correct)} rows")
    ax.legend(loc="upper left", fontsize=8)
    counts.set(xlabel="confidence", ylabel="rows")
    fig.tight_layout()
    return fig


def coverage_figure(confidence: torch.Tensor, correct: torch.Tensor, threshold: float | None, target: float | None,
                    title: str) -> Figure:
    """Precision of the accepted tags against the share accepted, as the threshold falls; the model's
    threshold and the target precision are marked."""
    order = torch.argsort(confidence, descending=True)
    hits = correct[order].double().numpy()
    n = len(hits)
    coverage = np.arange(1, n + 1) / max(n, 1)
    precision = np.cumsum(hits) / np.arange(1, n + 1)
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    ax.plot(coverage, precision, color="tab:blue")
    if target is not None:
        ax.axhline(target, color="tab:red", linestyle="--", linewidth=0.8, label=f"target precision {target:.2f}")
    if threshold is not None and n:
        accepted = confidence >= threshold
        share, precise = float(accepted.double().mean()), float(correct[accepted].double().mean()) if accepted.any() else float("nan")
        ax.plot([share], [precise], "o", color="tab:red", label=f"threshold {threshold:.3f}: {share:.1%} at {precise:.1%}")
    ax.set(xlabel="coverage (share accepted)", ylabel="precision of accepted", xlim=(0, 1),
           ylim=(min(0.5, float(precision.min()) if n else 0.5), 1.005), title=title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig
