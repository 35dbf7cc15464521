"""`fashion-data report [overrides]`: class counts, imbalance, missing values, co-occurrences and
sample grids of a dataset under a label config, written as PNGs + README.md and logged to MLflow
as its own run (tag `run_type=data_report`). Read it before choosing `labels.min_count` and mappings.
`fashion-data export-feedback output=<folder>`: the review queue's corrections as training data
(fashion/feedback/export.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from fashion.cli import first_few, one_line_errors, refuse_what_no_config_has, tool_config
from fashion.config import CONFIG_DIR, validate_config
from fashion.validation import AtLeastOne

if TYPE_CHECKING:
    from fashion.data.datamodule import FashionDataModule

COMMANDS = ("report", "export-feedback")


def write_data_report(cfg: DictConfig) -> tuple[Path, str | None]:
    """Build the report, write it to `report.output_dir`, log it; return (README path, run id).
    Lightning, MLflow and the plots load here, once the command line has composed: a misspelt key is
    refused in about 2 s rather than 8 on 2 cores."""
    import mlflow
    from hydra.utils import instantiate

    from fashion.data.report import build_report
    from fashion.tracking.run import tool_run

    validate_config(cfg)
    datamodule: FashionDataModule = instantiate(cfg.data, preprocessing=None, _convert_="object")
    report = build_report(datamodule, with_images=cfg.report.images)
    title = f"Dataset report: {datamodule.root.name}"
    readme = report.write(Path(cfg.report.output_dir), title)
    with tool_run(cfg.logger.tracking_uri, cfg.logger.experiment_name, cfg.logger.run_name, "data_report",
                  artifact_location=cfg.logger.get("artifact_location")) as run:
        mlflow.log_params({"data.root": str(datamodule.root), "data.fingerprint": datamodule.fingerprint,
                           "labels": OmegaConf.to_yaml(cfg.labels)[:6000]})
        mlflow.log_metrics({k: float(v) for k, v in datamodule.report.items() if isinstance(v, (int, float))})
        for attribute, row in report.summary.iterrows():
            mlflow.log_metrics({f"{attribute}/classes": row["classes"], f"{attribute}/kept": row["kept"],
                                f"{attribute}/imbalance": row["imbalance"], f"{attribute}/missing": row["missing"]})
        mlflow.log_artifacts(str(readme.parent), artifact_path="data_report")
    return readme, run.info.run_id


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="data_report")
@one_line_errors("fashion-data report")
def report_main(cfg: DictConfig) -> None:
    readme, run_id = write_data_report(cfg)
    print(f"dataset report: {readme}\nMLflow run {run_id} (experiment '{cfg.logger.experiment_name}')")


USAGE = (f"usage: fashion-data {{{'|'.join(COMMANDS)}}} [overrides]\n"
         "  report           class counts, imbalance, missing values and sample grids of a dataset (fashion-data report data=subset)\n"
         "  export-feedback  the review queue's corrections as a folder to train on (fashion-data export-feedback output=feedback)\n"
         "fashion-data <command> --help lists the command's keys.")


def main() -> None:
    """Subcommand dispatch; everything after the subcommand is overrides."""
    command = sys.argv.pop(1) if len(sys.argv) > 1 else None
    if command in ("-h", "--help"):
        print(USAGE)
        sys.exit(0)
    if command not in COMMANDS:
        print(f"fashion-data: {'no command' if command is None else f'unknown command {command!r}'}\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    if command == "export-feedback":
        cfg = tool_config("fashion-data export-feedback", "export_feedback", sys.argv[1:], export_feedback_cli)
        sys.exit(export_feedback_cli(**cfg))
    refuse_what_no_config_has("fashion-data report", "data_report", sys.argv[1:])   # one line, before Hydra's refusal
    report_main()


def export_feedback_cli(output: str, review_url: str = "sqlite:///review/review.db",
                        review_images: str = "review/images", queue: AtLeastOne = 1) -> int:
    """Writes the review queue's corrections as a Kaggle-layout folder (fashion/feedback/export.py)."""
    from fashion.feedback.export import export_feedback
    from fashion.feedback.store import ReviewStore

    try:
        store = ReviewStore(review_url, review_images, create=False)
    except (ValueError, OSError) as err:
        print(f"fashion-data export-feedback: cannot open the review queue: {err}", file=sys.stderr)
        return 2
    try:
        table, left_out = export_feedback(store, Path(output), queue)
    except OSError as err:   # a catalogue's folder named by mistake, or one that cannot be written
        print(f"fashion-data export-feedback: {err}", file=sys.stderr)
        return 2
    print(f"{len(table)} corrected photos written to {output} (styles.csv + images/)\n"
          f"  train on them: fashion-train data=catalogue 'data.train_only=[{output}]'", file=sys.stderr)
    if left_out:   # as fashion-predict's error rows: the rest is written, the status says not all of it
        print(f"{len(left_out)} correction(s) left out; they stay in the review database, so restoring a photo and "
              f"exporting again adds it: {first_few(left_out, sep='; ')}", file=sys.stderr)
    return 1 if left_out else 0


if __name__ == "__main__":
    main()
