"""What a run records in MLflow beyond Lightning's own metric logging: its inputs (config, data
provenance and quality counts) before training, its best checkpoint and reports after.

All of it runs on global rank zero only, so a DDP job records exactly one run.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow.data
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from omegaconf import DictConfig, OmegaConf

from fashion.data.datamodule import FashionDataModule
from fashion.data.split import SPLITS
from fashion.metrics import classification_report, confused_pairs, confusion_figure
from fashion.metrics.reports import coverage_figure, reliability_figure
from fashion.tracking.run import git_commit, run_params


@rank_zero_only
def log_run_inputs(logger: MLFlowLogger, cfg: DictConfig, datamodule: FashionDataModule, output_dir: Path) -> None:
    """Config, data provenance and data quality counts: what makes a run reproducible and comparable.

    The split is also written to `<output_dir>/split.csv`, ready for `split.path=...`.
    """
    client, run_id = logger.experiment, logger.run_id
    logger.log_hyperparams(run_params(cfg))
    client.set_tag(run_id, "dataset.fingerprint", datamodule.fingerprint)
    client.set_tag(run_id, "dataset.root", str(datamodule.root))
    for key, value in git_commit().items():
        client.set_tag(run_id, key, value)
    client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    vocabularies = {a: v.to_dict() for a, v in datamodule.vocabularies.items()}
    client.log_dict(run_id, vocabularies, "data/vocabularies.json")
    client.log_dict(run_id, datamodule.report, "data/data_report.json")
    client.log_inputs(run_id, datasets=dataset_inputs(datamodule))
    counts = {f"data/{k}": float(v) for k, v in datamodule.report.items() if isinstance(v, (int, float))}
    logger.log_metrics(counts, step=0)
    output_dir.mkdir(parents=True, exist_ok=True)
    split_path = output_dir / "split.csv"
    datamodule.split_table.to_csv(split_path, index=False)
    client.log_artifact(run_id, str(split_path), "data")


def dataset_inputs(datamodule: FashionDataModule) -> list[DatasetInput]:
    """train / val / test and each evaluation set as MLflow dataset inputs (the UI's Dataset column and
    filter): named `<folder>/<split or set>`, digested over ids and labels, so equal digests mean the
    same products with the same labels."""
    tables = {split: datamodule.table[datamodule.table["split"] == split] for split in SPLITS} | datamodule.eval_tables
    sources = {name: source.root for name, source in datamodule.eval_sources.items()}
    inputs = []
    for context, table in tables.items():
        if table.empty:   # a split a tiny folder left empty: MLflow cannot digest a table without rows
            continue
        root = sources.get(context, datamodule.root)
        rows = table[["id", *datamodule.attributes]].astype({"id": str}).reset_index(drop=True)   # ids name, not count
        with warnings.catch_warnings():   # MLflow registers its local-path source twice and warns that it cannot choose
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
            dataset = mlflow.data.from_pandas(rows, source=str(root), name=f"{Path(root).name}/{context}")
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return inputs


@rank_zero_only
def describe_run(logger: MLFlowLogger, metrics: dict[str, float], attributes: list[str]) -> None:
    """The run page's description: per attribute, test accuracy and macro-F1 beside each evaluation set's accuracy."""
    if not logger.run_id:
        return
    sets = sorted({k.split("/")[1] for k in metrics if k.startswith("eval/")})
    lines = ["| attribute | test acc | test macro-F1 | test ECE | accepted (precision) |" + "".join(f" {s} acc |" for s in sets),
             "|---|---|---|---|---|" + "---|" * len(sets)]
    for a in attributes:
        cells = [metrics.get(f"test/{a}/acc"), metrics.get(f"test/{a}/f1")]
        ece, coverage, precision = (metrics.get(f"test/{a}/{k}") for k in ("ece", "coverage", "accepted_precision"))
        accepted = "–" if coverage is None else f"{100 * coverage:.1f}" + ("" if precision is None else f" ({100 * precision:.1f})")
        lines.append(f"| {a} | " + " | ".join("–" if v is None else f"{100 * v:.1f}" for v in cells)
                     + f" | {'–' if ece is None else f'{ece:.3f}'} | {accepted} |"
                     + "".join(" – |" if v is None else f" {100 * v:.1f} |" for v in (metrics.get(f"eval/{s}/{a}/acc") for s in sets)))
    minutes = metrics.get("time/total_s", float("nan")) / 60
    best = next((k for k in metrics if k.startswith("best/")), "best/val/mean_acc")   # the run's optimized_metric
    note = "\n".join(lines) + (f"\n\nWall time {minutes:.1f} min. Columns worth adding: `{best}`, "
                                 "`test/<attribute>/acc`, `time/total_s`.")
    logger.experiment.set_tag(logger.run_id, "mlflow.note.content", note)


class MLflowArtifacts(Callback):
    """Logs the best checkpoint after fit; after test (and each evaluation set, under `eval/<set>/`)
    confusion matrices, classification reports, reliability diagrams and coverage-precision curves."""

    def __init__(self, log_checkpoint: bool = True) -> None:
        self.log_checkpoint = log_checkpoint

    @staticmethod
    def _mlflow(trainer: Trainer) -> MLFlowLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)), None)

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger, ckpt = self._mlflow(trainer), trainer.checkpoint_callback
        if not (self.log_checkpoint and logger and ckpt):
            return
        best = ckpt.best_model_path or ckpt.last_model_path
        if best:
            logger.experiment.log_artifact(logger.run_id, best, "checkpoints")
            logger.experiment.set_tag(logger.run_id, "best_checkpoint", f"checkpoints/{Path(best).name}")
            if ckpt.best_model_score is not None:
                logger.experiment.set_tag(logger.run_id, "best_score", f"{float(ckpt.best_model_score):.4f}")

    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = self._mlflow(trainer)
        vocabularies: dict[str, Any] = pl_module.hparams.get("vocabularies") or {}
        if logger is None:
            return
        import matplotlib.pyplot as plt

        stage = getattr(pl_module, "test_stage", "test")   # test, or eval/<set>
        for attribute, matrix in pl_module.test_confusion.items():
            classes = vocabularies.get(attribute, {}).get("classes") or [str(i) for i in range(matrix.shape[0])]
            fig = confusion_figure(matrix, classes, f"{attribute} ({stage})")
            logger.experiment.log_figure(logger.run_id, fig, f"{stage}/confusion_{attribute}.png")
            plt.close(fig)
            report = classification_report(matrix, classes)
            logger.experiment.log_text(logger.run_id, report.to_csv(float_format="%.4f"), f"{stage}/report_{attribute}.csv")
            pairs = confused_pairs(matrix, classes).to_csv(index=False, float_format="%.4f")
            logger.experiment.log_text(logger.run_id, pairs, f"{stage}/confusions_{attribute}.csv")
        decision = getattr(pl_module, "decision", None)
        for attribute, (confidence, correct, uncalibrated) in getattr(pl_module, "test_confidence", {}).items():
            if not len(correct):
                continue
            fig = reliability_figure(confidence, correct, uncalibrated, f"{attribute} ({stage})")
            logger.experiment.log_figure(logger.run_id, fig, f"{stage}/reliability_{attribute}.png")
            plt.close(fig)
            threshold = decision.thresholds.get(attribute) if decision else None
            target = decision.target_precision.get(attribute) if decision else None
            fig = coverage_figure(confidence, correct, threshold, target, f"{attribute} ({stage})")
            logger.experiment.log_figure(logger.run_id, fig, f"{stage}/coverage_{attribute}.png")
            plt.close(fig)
