"""The dataset report: what a user looks at before choosing `labels.min_count`, mappings and weights.

It works on the same table the datamodule trains on (after malformed rows, missing images and
label mappings), so what it shows is what a run with the same `data`/`labels` config would see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fashion.data.datamodule import FashionDataModule  # noqa: E402
from fashion.data.images import load_rgb  # noqa: E402

GRID_CLASSES = 12   # classes shown per sample grid (the most frequent)
GRID_SAMPLES = 6    # images per class in a grid
TOP_ARTICLE_TYPES = 30


@dataclass
class DatasetReport:
    """Tables and figures of one dataset + label config; `write` puts them in a folder."""

    summary: pd.DataFrame                        # per attribute: classes, kept, imbalance, missing
    counts: dict[str, pd.Series]                 # per attribute: training-split count per raw class
    removed: dict[str, list[str]]                # per attribute: classes min_count drops (or folds)
    input_report: dict
    figures: dict[str, Figure] = field(default_factory=dict)

    def markdown(self, title: str) -> str:
        rows = self.input_report
        lines = [
            f"# {title}",
            "",
            f"- styles.csv rows kept: {rows.get('rows_read', '?')}; malformed rows skipped: {rows.get('malformed_rows', '?')}; "
            f"rows without an image file: {rows.get('missing_images', '?')}; corrupt images: {rows.get('corrupt_images', '?')}",
            "- split sizes: " + ", ".join(f"{s} {rows.get(f'split_size/{s}', '?')}" for s in ("train", "val", "test")),
            "",
            "## Per attribute (training split)",
            "",
            "Imbalance = largest class / smallest kept class. Missing = rows with no label for that attribute.",
            "",
            markdown_table(self.summary),
            "",
            "## Classes `labels.min_count` removes",
            "",
        ]
        for attribute, classes in self.removed.items():
            lines.append(f"- **{attribute}** ({len(classes)}): {', '.join(classes) if classes else 'none'}")
        lines += ["", "## Figures", ""]
        lines += [f"![{name}]({name}.png)" for name in self.figures]
        return "\n".join(lines) + "\n"

    def write(self, directory: Path, title: str) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        for name, figure in self.figures.items():
            figure.savefig(directory / f"{name}.png", dpi=90, bbox_inches="tight")
            plt.close(figure)
        self.summary.to_csv(directory / "summary.csv")
        pd.DataFrame({a: c for a, c in self.counts.items()}).to_csv(directory / "class_counts.csv")
        path = directory / "README.md"
        path.write_text(self.markdown(title))
        return path


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub table without the optional `tabulate` dependency of DataFrame.to_markdown."""
    header = [frame.index.name or "", *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(i), *map(str, row)]) + " |" for i, row in zip(frame.index, frame.itertuples(index=False))]
    return "\n".join(lines)


def build_report(datamodule: FashionDataModule, with_images: bool = True) -> DatasetReport:
    datamodule.prepare_labels()
    table, vocabularies = datamodule.table, datamodule.vocabularies
    train = table[table["split"] == "train"]
    counts, removed, rows = {}, {}, []
    for attribute in datamodule.attributes:
        count = train[attribute].value_counts()
        kept = set(vocabularies[attribute].classes)
        counts[attribute] = count
        removed[attribute] = sorted(c for c in count.index if c not in kept)
        kept_counts = count[count.index.isin(kept)]
        rows.append({
            "attribute": attribute,
            "classes": int(len(count)),
            "kept": int(len(kept_counts)),
            "largest": f"{count.index[0]} ({int(count.iloc[0])})",
            "imbalance": round(float(kept_counts.max() / max(1, kept_counts.min())), 1),
            "majority share": round(float(count.iloc[0] / max(1, count.sum())), 3),
            "missing": int(table[attribute].isna().sum()),
            "samples masked by min_count": int(train[attribute].isin(removed[attribute]).sum()),
        })
    summary = pd.DataFrame(rows).set_index("attribute")
    report = DatasetReport(summary, counts, removed, datamodule.report)
    report.figures["class_counts"] = class_count_figure(counts, datamodule.labels)
    report.figures["missing_values"] = missing_values_figure(table, datamodule.attributes)
    for rows_attr, cols_attr in (("gender", "articleType"), ("season", "baseColour")):
        if {rows_attr, cols_attr} <= set(datamodule.attributes):
            report.figures[f"cooccurrence_{rows_attr}_x_{cols_attr}"] = cooccurrence_figure(train, rows_attr, cols_attr)
    if with_images:
        for attribute in datamodule.attributes:
            report.figures[f"samples_{attribute}"] = sample_grid_figure(train, attribute)
    return report


def class_count_figure(counts: dict[str, pd.Series], labels) -> Figure:
    """One panel per attribute, classes by count on a log axis, the min_count threshold as a line."""
    heights = [max(2.0, 0.12 * len(c)) for c in counts.values()]
    figure, axes = plt.subplots(len(counts), 1, figsize=(9, sum(heights) + 1), gridspec_kw={"height_ratios": heights})
    for ax, (attribute, count) in zip(np.atleast_1d(axes), counts.items()):
        ax.barh(range(len(count)), count.to_numpy(), color="tab:blue")
        ax.set_yticks(range(len(count)), count.index, fontsize=6)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.axvline(labels.min_count_for(attribute), color="tab:red", linestyle="--", linewidth=1)
        ax.set_title(f"{attribute}: {len(count)} classes (red: min_count {labels.min_count_for(attribute)})", fontsize=9)
    figure.tight_layout()
    return figure


def missing_values_figure(table: pd.DataFrame, attributes: list[str]) -> Figure:
    missing = table[attributes].isna().sum()
    figure, ax = plt.subplots(figsize=(6, 3))
    ax.bar(missing.index, missing.to_numpy(), color="tab:orange")
    ax.set_ylabel("rows without a label")
    ax.tick_params(axis="x", rotation=30)
    ax.set_title("Missing values per attribute")
    figure.tight_layout()
    return figure


def cooccurrence_figure(train: pd.DataFrame, rows: str, columns: str) -> Figure:
    """Counts of (rows, columns) label pairs, log-coloured; articleType limited to the most frequent."""
    keep = train[columns].value_counts().index[:TOP_ARTICLE_TYPES]
    cross = pd.crosstab(train[rows], train[columns].where(train[columns].isin(keep)))
    figure, ax = plt.subplots(figsize=(max(6, 0.3 * cross.shape[1] + 2), max(2.5, 0.35 * cross.shape[0] + 1.5)))
    image = ax.imshow(np.log10(cross.to_numpy() + 1), cmap="viridis", aspect="auto")
    ax.set_xticks(range(cross.shape[1]), cross.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(cross.shape[0]), cross.index, fontsize=7)
    ax.set_title(f"{rows} x {columns} (log10 count + 1; top {len(keep)} {columns})", fontsize=9)
    figure.colorbar(image, ax=ax)
    figure.tight_layout()
    return figure


def sample_grid_figure(train: pd.DataFrame, attribute: str, seed: int = 0) -> Figure:
    """A row of random training images per class, for checking by eye that labels mean what they say."""
    classes = train[attribute].value_counts().index[:GRID_CLASSES]
    figure, axes = plt.subplots(len(classes), GRID_SAMPLES, figsize=(GRID_SAMPLES * 1.1, len(classes) * 1.2), squeeze=False)
    for row, label in enumerate(classes):
        members = train[train[attribute] == label]
        picks = members.sample(min(GRID_SAMPLES, len(members)), random_state=seed)["path"].tolist()
        for col, ax in enumerate(axes[row]):
            ax.axis("off")
            if col < len(picks):
                ax.imshow(load_rgb(picks[col], min_side=96))
        axes[row][0].set_title(str(label), fontsize=7, loc="left")
    figure.suptitle(f"{attribute}: {GRID_SAMPLES} random training images of the {len(classes)} largest classes", fontsize=9)
    figure.tight_layout()
    return figure
