"""How much of an attribute's drop outside the split is the evaluation set's class mix, and how much its classes?

    python scripts/class_mix.py RUN --attribute articleType \
        --group "footwear=Casual Shoes,Formal Shoes,Sports Shoes,Flats,Heels,Sandals,Flip Flops,Sports Sandals" \
        --output docs/class_mix.md

Reads the run's per-class reports (`test/report_<attribute>.csv`, `eval/<set>/report_<attribute>.csv`), so it
works on any finished run. A set can score lower than the test because the model does worse on each class there,
or because the set holds more of the classes the model finds hard everywhere. Per set:
- `test at the set's mix`: the test's per-class recall weighted by the set's class counts: what the in-split model
  would score on a set of that mix and nothing else new;
- `set at the test's mix`: the set's per-class recall weighted by the test's class counts: the set's own classes,
  at in-split proportions;
- per `--group` of classes: its share of the set's rows, its accuracy there, and its share of the set's errors.
Classes absent from either side leave the reweighted figures; the rows they cover are counted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from fashion.config import tracking_uri

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def per_class(report: pd.DataFrame) -> pd.DataFrame:
    """Support and recall per class: the report's rows less its averages."""
    classes = report.drop(index=["macro avg", "weighted avg", "accuracy"], errors="ignore")
    return classes[["support", "recall"]].astype(float)


def weighted_recall(recall: pd.Series, weights: pd.Series) -> float:
    shared = recall.index.intersection(weights[weights > 0].index)
    return float((recall[shared] * weights[shared]).sum() / weights[shared].sum())


def set_row(name: str, test: pd.DataFrame, other: pd.DataFrame, groups: dict[str, list[str]]) -> dict[str, object]:
    """One set's figures against the test's (see the module docstring)."""
    both = test.index[(test.support > 0)].intersection(other.index[other.support > 0])
    errors = (other.support * (1 - other.recall)).sum()
    row: dict[str, object] = {
        "set": name, "rows": int(other.support.sum()),
        "accuracy": weighted_recall(other.recall, other.support),
        "test at the set's mix": weighted_recall(test.recall[both], other.support[both]),
        "set at the test's mix": weighted_recall(other.recall[both], test.support[both]),
        "rows of classes the test lacks": int(other.support.drop(both).sum()),
    }
    for group, classes in groups.items():
        members = other.index.intersection(classes)
        support = other.support[members]
        row[f"{group}: share of rows"] = float(support.sum() / other.support.sum())
        row[f"{group}: accuracy"] = weighted_recall(other.recall[members], support) if support.sum() else float("nan")
        row[f"{group}: share of errors"] = float((support * (1 - other.recall[members])).sum() / errors) if errors else float("nan")
    return row


def reports(client: MlflowClient, run_id: str, attribute: str) -> dict[str, pd.DataFrame]:
    """Per stage (test, eval/<set>), the run's per-class report for `attribute`."""
    stages = ["test"] + [a.path for a in client.list_artifacts(run_id, "eval") if a.is_dir]
    found = {}
    with tempfile.TemporaryDirectory() as folder:
        for stage in stages:
            names = {a.path for a in client.list_artifacts(run_id, stage)}
            if f"{stage}/report_{attribute}.csv" in names:
                path = client.download_artifacts(run_id, f"{stage}/report_{attribute}.csv", folder)
                found[stage] = per_class(pd.read_csv(path, index_col="class"))
    if "test" not in found:
        raise SystemExit(f"run {run_id} has no test/report_{attribute}.csv: is {attribute!r} one of its attributes?")
    return found


def parse_groups(specs: list[str]) -> dict[str, list[str]]:
    groups = {}
    for spec in specs:
        name, sep, classes = spec.partition("=")
        if not sep or not classes:
            raise SystemExit(f"--group {spec!r}: expected NAME=class,class,...")
        groups[name] = [c.strip() for c in classes.split(",") if c.strip()]
    return groups


def markdown(rows: list[dict[str, object]]) -> str:
    """One column per set; shares and accuracies in %, counts as they are."""
    lines = ["| | " + " | ".join(str(r["set"]) for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for field in [f for f in rows[0] if f != "set"]:
        cells = [("–" if r[field] != r[field] else f"{r[field] * 100:.1f}") if isinstance(r[field], float) else f"{r[field]:,}"
                 for r in rows]
        lines.append(f"| {field} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_ids", nargs="+", metavar="RUN")
    parser.add_argument("--attribute", default="articleType")
    parser.add_argument("--group", action="append", default=[], help="NAME=class,class,... (repeatable)")
    parser.add_argument("--tracking-uri", default=tracking_uri())
    parser.add_argument("--output", type=Path, help="write the table as markdown here (default: print it)")
    args = parser.parse_args(argv)
    groups = parse_groups(args.group)
    client = MlflowClient(args.tracking_uri)
    text = (f"# {args.attribute} outside the split: the sets' class mix, or the classes?\n\n"
            "Written by `scripts/class_mix.py` from the runs' per-class reports; what each row means is in its docstring.\n\n"
            f"`python scripts/class_mix.py {' '.join(args.run_ids)} --attribute {args.attribute}"
            + "".join(f' --group "{g}={",".join(c)}"' for g, c in groups.items())
            + f"`: {args.attribute}, accuracy and shares in %\n")
    for run_id in args.run_ids:
        found = reports(client, run_id, args.attribute)
        rows = [set_row(stage.removeprefix("eval/"), found["test"], frame, groups) for stage, frame in found.items()]
        text += f"\nRun `{run_id}`:\n\n" + markdown(rows) + "\n"
    if args.output:
        args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
