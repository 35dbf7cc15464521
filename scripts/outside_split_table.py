"""Write docs/outside_the_split.md: each run's in-split test accuracy beside its evaluation sets.

    python scripts/outside_split_table.py                     # every finished run that logged eval/<set>/ metrics
    python scripts/outside_split_table.py --tag recipe=catalogue_trial --output docs/outside_the_split.md
    python scripts/outside_split_table.py --runs 314439f3 3460e25b --intro intro.md   # these runs, this order

One row per run and set (test, then out_of_time, cross_resolution, ...), accuracy per attribute in %,
read from the MLflow store: nothing here is typed by hand. Below each evaluation set, the accuracy of
always answering that set's most common class (`data/majority_rate/<set>/<attribute>`, logged by the
run): the floor a model must beat there, which is what season's out-of-time number is measured against.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import mlflow
import pandas as pd

from fashion.config import PROJECT_ROOT, tracking_uri
from fashion.data.styles import ATTRIBUTES


def eval_sets_of(run: pd.Series) -> list[str]:
    """The evaluation sets a run logged metrics for (`eval/<set>/...`), by name."""
    return sorted({c.split("/")[1] for c in run.index if c.startswith("metrics.eval/") and not pd.isna(run[c])})


def rows_of(run: pd.Series) -> list[tuple[str, list[str]]]:
    rows = []
    for stage in ["test", *[f"eval/{s}" for s in eval_sets_of(run)]]:
        values = [run.get(f"metrics.{stage}/{a}/acc") for a in ATTRIBUTES]
        if all(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
            continue
        rows.append((stage.removeprefix("eval/"), [percent(v) for v in values]))
        if stage.startswith("eval/"):
            floor = [run.get(f"metrics.data/majority_rate/{stage.removeprefix('eval/')}/{a}") for a in ATTRIBUTES]
            rows.append((f"{stage.removeprefix('eval/')}: majority class", [percent(v) for v in floor]))
    return rows


def cell(value: object) -> str:
    """A tag or param as Markdown table text: run tags are free text, and a `|` or a line break in one
    would otherwise split or end the row."""
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def percent(value: object) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * float(value):.1f}"


def table(runs: pd.DataFrame) -> str:
    lines = ["| run | what | set | " + " | ".join(ATTRIBUTES) + " | wall min |", "|---" * (len(ATTRIBUTES) + 4) + "|"]
    for _, run in runs.iterrows():
        what = next((cell(run[k]) for k in ("tags.trial", "tags.recipe", "tags.hydra.overrides")
                     if isinstance(run.get(k), str) and run[k]), "")   # a missing tag reads as NaN
        minutes = run.get("metrics.time/total_s")
        wall = "–" if minutes is None or math.isnan(minutes) else f"{minutes / 60:.1f}"
        for stage, values in rows_of(run):
            lines.append(f"| {run['run_id'][:8]} | {what} | {stage} | " + " | ".join(values) + f" | {wall} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=tracking_uri())
    parser.add_argument("--experiment", default="fashion")
    parser.add_argument("--tag", help="only runs with this tag, e.g. recipe=catalogue_trial")
    parser.add_argument("--runs", nargs="+", help="only these runs (ids or their first 8 characters), in this order")
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "docs" / "outside_the_split.md")
    parser.add_argument("--intro", type=Path, help="a Markdown file to put above the table (the runs' commands)")
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[args.experiment], order_by=["start_time ASC"])
    runs = runs[(runs["status"] == "FINISHED") & runs.columns.str.startswith("metrics.eval/").any()]
    if args.tag:
        key, value = args.tag.split("=", 1)
        runs = runs[runs.get(f"tags.{key}") == value]
    if args.runs:
        runs = pd.concat([runs[runs["run_id"].str.startswith(prefix)] for prefix in args.runs])
    runs = runs[[any(c.startswith("metrics.eval/") and not pd.isna(r[c]) for c in runs.columns) for _, r in runs.iterrows()]]
    if runs.empty:
        raise SystemExit("outside_split_table: no finished run with eval/<set>/ metrics in that store")
    intro = args.intro.read_text() if args.intro else ""
    args.output.write_text("# Accuracy inside and outside the split\n\nWritten by `scripts/outside_split_table.py` "
                           "from the MLflow runs.\n\n" + intro + "\n" + table(runs) + "\n")
    print(args.output.read_text())


if __name__ == "__main__":
    main()
