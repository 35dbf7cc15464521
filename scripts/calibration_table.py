"""The calibration of a training run, and of evaluation runs of its bundle, as Markdown tables.

    python scripts/calibration_table.py RUN_ID                       # its validation fit and test split
    python scripts/calibration_table.py RUN_ID --eval EVAL_RUN ...   # + fashion-eval runs (out of time, ...)

Per attribute: the fitted temperature, ECE (15 bins, top label) before and after on validation and
test, the threshold and target precision, coverage and the precision of the accepted tags. Reads
what the runs logged; computes nothing.
"""

from __future__ import annotations

import argparse
import sys

from mlflow.tracking import MlflowClient

from fashion.config import tracking_uri


def cell(value: float | None, percent: bool = False, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}" if percent else f"{value:.{digits}f}"


def training_table(metrics: dict[str, float], attributes: list[str]) -> list[str]:
    lines = ["| attribute | T | val ECE before → after | test ECE before → after | threshold (target) | test coverage | test precision of accepted |",
             "|---|---|---|---|---|---|---|"]
    for a in attributes:
        get = lambda key: metrics.get(key.format(a=a))  # noqa: E731
        lines.append(
            f"| {a} | {cell(get('calibration/{a}/temperature'), digits=2)} "
            f"| {cell(get('calibration/{a}/val_ece_before'))} → {cell(get('calibration/{a}/val_ece_after'))} "
            f"| {cell(get('test/{a}/ece_uncalibrated'))} → {cell(get('test/{a}/ece'))} "
            f"| {cell(get('calibration/{a}/threshold'))} | {cell(get('test/{a}/coverage'), True)} "
            f"| {cell(get('test/{a}/accepted_precision'), True)} |")
    return lines


def eval_table(name: str, metrics: dict[str, float], attributes: list[str]) -> list[str]:
    lines = [f"**{name}**", "", "| attribute | acc | acc, taxonomy decoded | ECE before → after | coverage | precision of accepted |",
             "|---|---|---|---|---|---|"]
    for a in attributes:
        get = lambda key: metrics.get(f"eval/{a}/{key}")  # noqa: E731
        lines.append(f"| {a} | {cell(get('acc'), True)} | {cell(get('acc_taxonomy'), True)} "
                     f"| {cell(get('ece_uncalibrated'))} → {cell(get('ece'))} | {cell(get('coverage'), True)} "
                     f"| {cell(get('accepted_precision'), True)} |")
    if "taxonomy/inconsistent" in metrics:
        lines += ["", f"Inconsistent taxonomy predictions: {metrics['taxonomy/inconsistent']:.0f} decoded jointly, "
                      f"{metrics['taxonomy/inconsistent_independent']:.0f} with each head alone "
                      f"(of {metrics.get('eval_data/images', float('nan')):.0f} images)."]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_id")
    parser.add_argument("--eval", nargs="*", default=[], help="fashion-eval run ids of the run's bundle")
    parser.add_argument("--uri", default=tracking_uri())
    args = parser.parse_args(argv)
    client = MlflowClient(args.uri)
    metrics = client.get_run(args.run_id).data.metrics
    attributes = [k.split("/")[1] for k in metrics if k.startswith("calibration/") and k.endswith("/temperature")]
    print("\n".join(training_table(metrics, attributes)))
    for run_id in args.eval:
        run = client.get_run(run_id)
        print("\n" + "\n".join(eval_table(f"{run.info.run_name} ({run_id[:8]})", run.data.metrics, attributes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
