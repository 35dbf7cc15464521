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
