"""Train a multi-attribute tagger from a composed Hydra config: `fashion-train [overrides]`.

    fashion-train                                   # default: lite0 on the bundled sample, CPU
    fashion-train experiment=linear_probe data=subset
    fashion-train -m loss_weighting=fixed,uncertainty,dwa   # one MLflow run per job
    fashion-train hparams_search=optuna                     # Optuna study, see fashion/tune.py
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from fashion.config import CONFIG_DIR
from fashion.data.datamodule import FashionDataModule
from fashion.training.assembly import build_model, build_module, use_feature_cache
from fashion.training.module import evaluate_sets
from fashion.training.resume import CHECKPOINT_TAG, ResumePoint, config_hash, find_resume_point
from fashion.training.tracking import ensure_experiment, log_run_inputs

log = logging.getLogger("fashion.train")


def sweep_tags() -> dict[str, str]:
    """Tags that group the jobs of one `-m` sweep in the MLflow UI."""
    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    tags = {"hydra.overrides": hydra_cfg.job.override_dirname or "(defaults)"}
    if hydra_cfg.mode == RunMode.MULTIRUN:
        tags |= {"sweep": str(hydra_cfg.sweep.dir), "sweep.job": str(hydra_cfg.job.num)}
    return tags


def hardware(cfg: DictConfig) -> str:
    """What the run trained on, in words, for the results table."""
    if cfg.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return f"{cfg.trainer.devices}x {torch.cuda.get_device_name(0)} x {cfg.trainer.num_nodes} node(s)"
    return f"CPU, {torch.get_num_threads()} threads on {os.cpu_count()} cores"


def build_logger(cfg: DictConfig, resume: ResumePoint | None) -> MLFlowLogger:
    """The MLflow logger with its run created (or reopened) now, on rank zero, so spawned
    workers and the test stage share one run."""
    ensure_experiment(cfg.logger.tracking_uri, cfg.logger.experiment_name, cfg.logger.get("artifact_location"))
    tags = {**sweep_tags(), **(cfg.get("tags") or {}), "config.hash": config_hash(cfg), "hardware": hardware(cfg)}
    run_name = cfg.logger.get("run_name") or tags.get("hydra.overrides", "run")
    logger = instantiate(cfg.logger, run_name=run_name, tags=tags, run_id=resume.run_id if resume else None)
    _ = logger.experiment, logger.run_id  # rank zero creates the run; others get a dummy
    if logger.run_id:
        client = logger.experiment
        if resume:
            client.update_run(logger.run_id, status="RUNNING")
            client.set_tag(logger.run_id, "resumed_from", resume.ckpt_path)
        else:
            client.set_tag(logger.run_id, CHECKPOINT_TAG, str(Path(cfg.paths.output_dir) / "checkpoints"))
    return logger


def train(cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Fit, then test the best checkpoint; return the final metrics (and `best/<monitor>`).

    `time/total_s` (logged) is the whole call, feature-cache filling included: the wall time a
    user waits, which is what the results table reports.
    """
    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    backbone = instantiate(cfg.backbone)
    datamodule: FashionDataModule = instantiate(cfg.data, preprocessing=backbone.preprocessing, _convert_="object")
    datamodule.prepare_labels()
    model = build_model(cfg, datamodule, backbone)
    cache = use_feature_cache(cfg, model, datamodule)
    module = build_module(cfg, datamodule, model)
    resume = find_resume_point(cfg)
    logger = build_logger(cfg, resume)
    try:
        if resume is None:  # a resumed run keeps the inputs it logged first
            log_run_inputs(logger, cfg, datamodule, Path(cfg.paths.output_dir))
            if logger.run_id:
                logger.experiment.set_tag(logger.run_id, "feature_cache", cache.last_status if cache else "off")
        callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None] + list(extra_callbacks)
        if resume:  # keep writing where the run started, so its best-so-far score carries over
            for callback in callbacks:
                if isinstance(callback, ModelCheckpoint):
                    callback.dirpath = str(Path(resume.ckpt_path).parent)
        trainer: L.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.ckpt_path if resume else cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # last epoch's
        if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_score is not None:
            metrics[f"best/{trainer.checkpoint_callback.monitor}"] = float(trainer.checkpoint_callback.best_model_score)
        if cfg.get("test", True):
            best = "best" if trainer.checkpoint_callback else None
            trainer.test(module, datamodule=datamodule, ckpt_path=best)
            metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}
            metrics |= evaluate_sets(trainer, module, datamodule.eval_dataloaders(), best)
        metrics["time/total_s"] = time.perf_counter() - started
        logger.log_metrics({"time/total_s": metrics["time/total_s"]})
    except BaseException:
        if logger.run_id and run_is_running(logger):
            logger.experiment.set_terminated(logger.run_id, "FAILED")
        raise
    print_summary(logger, metrics, datamodule.attributes)
    return metrics


def run_is_running(logger: MLFlowLogger) -> bool:
    return logger.experiment.get_run(logger.run_id).info.status == "RUNNING"


@rank_zero_only
def print_summary(logger: MLFlowLogger, metrics: dict[str, float], attributes: list[str]) -> None:
    stage = "test" if any(k.startswith("test/") for k in metrics) else "val"
    sets = sorted({k.split("/")[1] for k in metrics if k.startswith("eval/")})
    header = f"  {'':<15} {stage + ' acc, macro-F1':<26}" + "".join(f"   {name} acc" for name in sets)
    rows = [header] + [f"  {a:<15} acc {metrics.get(f'{stage}/{a}/acc', float('nan')):.3f}   "
                       f"macro-F1 {metrics.get(f'{stage}/{a}/f1', float('nan')):.3f}"
                       + "".join(f"   {metrics.get(f'eval/{n}/{a}/acc', float('nan')):>{len(n) + 4}.3f}" for n in sets)
                       for a in attributes]
    print(
        f"\nMLflow run {logger.run_id} (experiment '{logger._experiment_name}', {logger._tracking_uri})\n"
        f"{stage} metrics:\n" + "\n".join(rows) +
        f"\n  {'mean':<15} acc {metrics.get(f'{stage}/mean_acc', float('nan')):.3f}\n"
        "Open the MLflow UI with: make ui   (then http://127.0.0.1:5000)\n"
    )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    if cfg.get("hparams_search"):
        from fashion.tune import tune

        return tune(cfg)
    metrics = train(cfg)
    monitored = cfg.get("optimized_metric", "val/mean_acc")
    return metrics.get(f"best/{monitored}", metrics.get(monitored, float("nan")))


if __name__ == "__main__":
    main()
