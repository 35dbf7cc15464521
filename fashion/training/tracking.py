"""Everything a run records in MLflow beyond Lightning's own metric logging.

All functions here run on global rank zero only, so a DDP job records exactly one run.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import mlflow
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from fashion.config import PROJECT_ROOT, flatten
from fashion.data.datamodule import FashionDataModule
from fashion.training.reports import classification_report, confusion_figure

log = logging.getLogger(__name__)

PARAM_SECTIONS = ("data", "labels", "split", "augmentation", "backbone", "head", "loss", "class_weights",
                  "loss_weighting", "optimizer", "scheduler", "trainer", "callbacks", "module", "seed")
# Paths of this machine, not choices: they would make identical runs look different in the MLflow UI.
MACHINE_PARAMS = ("trainer.default_root_dir", "callbacks.model_checkpoint.dirpath")


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None) -> str:
    """Create the store and experiment once, before parallel jobs race to create tables."""
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:  # another job created it first
        return client.get_experiment_by_name(name).experiment_id


def git_commit() -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"mlflow.source.git.commit": git("rev-parse", "HEAD"), "git.dirty": str(bool(git("status", "--porcelain")))}
    except (OSError, subprocess.CalledProcessError):
        return {}


@rank_zero_only
def log_run_inputs(logger: MLFlowLogger, cfg: DictConfig, datamodule: FashionDataModule, output_dir: Path) -> None:
    """Config, data provenance and data quality counts: what makes a run reproducible and comparable.

    The split is also written to `<output_dir>/split.csv`, ready for `split.path=...`.
    """
    client, run_id = logger.experiment, logger.run_id
    resolved = OmegaConf.to_container(cfg, resolve=True)
    params = flatten({k: resolved[k] for k in PARAM_SECTIONS if k in resolved})
    # data.labels/split/augmentation repeat the top-level sections they are interpolated from.
    params = {k: v for k, v in params.items()
              if not k.startswith(("data.labels.", "data.split.", "data.augmentation.")) and k not in MACHINE_PARAMS}
    logger.log_hyperparams({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in params.items()})
    client.set_tag(run_id, "dataset.fingerprint", datamodule.fingerprint)
    client.set_tag(run_id, "dataset.root", str(datamodule.root))
    for key, value in git_commit().items():
        client.set_tag(run_id, key, value)
    client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    vocabularies = {a: v.to_dict() for a, v in datamodule.vocabularies.items()}
    client.log_dict(run_id, vocabularies, "data/vocabularies.json")
    client.log_dict(run_id, datamodule.report, "data/data_report.json")
    counts = {f"data/{k}": float(v) for k, v in datamodule.report.items() if isinstance(v, (int, float))}
    logger.log_metrics(counts, step=0)
    output_dir.mkdir(parents=True, exist_ok=True)
    split_path = output_dir / "split.csv"
    datamodule.split_table.to_csv(split_path, index=False)
    client.log_artifact(run_id, str(split_path), "data")


class MLflowRunLogger(MLFlowLogger):
    """Lightning's MLFlowLogger that never logs a metric twice at one step.

    Lightning sends `epoch` with every metrics dict of a step, and a resumed run (`run_id=`)
    replays the steps after its last checkpoint: both would leave duplicate points in MLflow.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._continuing = kwargs.get("run_id") is not None
        self._logged: set[tuple[str, int]] | None = None

    def _already_logged(self) -> set[tuple[str, int]]:
        if self._logged is None:
            self._logged = set()
            if self._continuing:
                client, run_id = self.experiment, self.run_id
                for key in client.get_run(run_id).data.metrics:
                    self._logged |= {(key, m.step) for m in client.get_metric_history(run_id, key)}
        return self._logged

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        seen = self._already_logged()
        fresh = {k: v for k, v in metrics.items() if (k, step or 0) not in seen}
        if fresh:
            super().log_metrics(fresh, step)
            seen |= {(k, step or 0) for k in fresh}


class MLflowArtifacts(Callback):
    """Logs the best checkpoint after fit and confusion matrices + classification reports after test
    (and after each evaluation set, under `eval/<set>/`)."""

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
