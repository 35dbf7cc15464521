"""`train(cfg)`: one training run from a composed config, the function `fashion-train`, the Optuna
study and the tests all call: build, fit, test, score the evaluation sets, inside one MLflow run."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from fashion.config import ConfigError, monitored_metrics, validate_config
from fashion.data.datamodule import FashionDataModule
from fashion.tracking import describe_run, find_resume_point, log_run_inputs, tracked_run
from fashion.tracking.run import ui_hint
from fashion.training.assembly import (build_model, build_module, check_module_keys, check_optimizer,
                                       check_start_checkpoint, check_trainer, refuse_unlogged_monitor,
                                       refuse_weights_that_do_not_fit, use_feature_cache)
from fashion.training.console import QuietConsole, expect_frozen_norms_in_eval, log_lightning_once
from fashion.training.distributed import EndProcessGroupAtExit
from fashion.training.module import evaluate_sets

log = logging.getLogger("fashion.train")


def train(cfg: DictConfig, extra_callbacks: Sequence[Callback] = (),
          stopped_by: tuple[type[BaseException], ...] = ()) -> dict[str, float]:
    """Fit, then test the best checkpoint; return the final metrics (and `best/<monitor>`).

    `time/total_s` (logged) is the whole call, feature-cache filling included: the wall time a
    user waits, which is what the results table reports. `stopped_by`: exceptions that end the run
    as KILLED rather than FAILED (a pruned trial).
    """
    started = time.perf_counter()
    log_lightning_once()
    validate_config(cfg)
    check_module_keys(cfg)
    check_optimizer(cfg)   # torch's and Lightning's own checks of their values, before the slow setup
    check_trainer(cfg)
    start_shapes = check_start_checkpoint(cfg.get("ckpt_path"), "ckpt_path")
    resume = find_resume_point(cfg)
    if resume:
        check_start_checkpoint(resume.ckpt_path, f"resume={resume.run_id}")
    try:
        L.seed_everything(cfg.seed, workers=True)
    except ValueError as err:   # numpy's range, 0 to 2**32 - 1 (a word is refused earlier, as data.seed)
        raise ConfigError(f"seed={cfg.seed}: {err}") from None
    backbone = instantiate(cfg.backbone)
    datamodule: FashionDataModule = instantiate(cfg.data, preprocessing=backbone.preprocessing, _convert_="object")
    datamodule.prepare_labels()
    model = build_model(cfg, datamodule, backbone)
    for key, metric in monitored_metrics(cfg).items():
        refuse_unlogged_monitor(key, metric, model.heads.num_classes)
    cache = use_feature_cache(cfg, model, datamodule)
    module = build_module(cfg, datamodule, model)
    refuse_weights_that_do_not_fit(start_shapes, module, "ckpt_path")
    expect_frozen_norms_in_eval(model.backbone.modules_kept_in_eval)
    with tracked_run(cfg, stopped_by, resume) as (logger, resume):
        resumed_from = resume.ckpt_path if resume else None
        if resumed_from is None:  # a resumed run keeps the inputs it logged first
            log_run_inputs(logger, cfg, datamodule, Path(cfg.paths.output_dir))
            if logger.run_id:
                logger.experiment.set_tag(logger.run_id, "feature_cache", cache.last_status if cache else "off")
                if cache and cache.filled_on:
                    logger.experiment.set_tag(logger.run_id, "feature_cache.filled_on", " and ".join(sorted(cache.filled_on)))
        callbacks = build_callbacks(cfg) + list(extra_callbacks)
        if resumed_from:  # keep writing where the run started, so its best-so-far score carries over
            for callback in callbacks:
                if isinstance(callback, ModelCheckpoint):
                    callback.dirpath = str(Path(resumed_from).parent)
        trainer: L.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resumed_from or cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # last epoch's
        checkpoint = trainer.checkpoint_callback
        if checkpoint and checkpoint.best_model_score is not None:   # logged too: a column, and a sweep's yardstick
            metrics[f"best/{checkpoint.monitor}"] = float(checkpoint.best_model_score)
            logger.log_metrics({f"best/{checkpoint.monitor}": metrics[f"best/{checkpoint.monitor}"]})
        if cfg.get("test", True):
            best = "best" if trainer.checkpoint_callback and not trainer.fast_dev_run else None
            trainer.test(module, datamodule=datamodule, ckpt_path=best)
            metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}
            metrics |= evaluate_sets(trainer, module, datamodule.eval_dataloaders(), best)
        metrics["time/total_s"] = time.perf_counter() - started
        logger.log_metrics({"time/total_s": metrics["time/total_s"]})
        describe_run(logger, metrics, datamodule.attributes)
    print_summary(logger, cfg, metrics, datamodule.attributes)
    return metrics


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """Every `callbacks` entry, the console's filters and the end of DDP's process group, less the progress bar where
    `trainer.enable_progress_bar=false`: Lightning refuses the pair, and would say so only after the data,
    the model and the feature cache were built."""
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None] + [QuietConsole(), EndProcessGroupAtExit()]
    if cfg.trainer.get("enable_progress_bar", True):
        return callbacks
    return [c for c in callbacks if not isinstance(c, ProgressBar)]


@rank_zero_only
def print_summary(logger: MLFlowLogger, cfg: DictConfig, metrics: dict[str, float], attributes: list[str]) -> None:
    stage = "test" if any(k.startswith("test/") for k in metrics) else "val"
    sets = sorted({k.split("/")[1] for k in metrics if k.startswith("eval/")})
    header = f"  {'':<15} {stage + ' acc, macro-F1':<26}" + "".join(f"   {name} acc" for name in sets)
    rows = [header] + [f"  {a:<15} acc {metrics.get(f'{stage}/{a}/acc', float('nan')):.3f}   "
                       f"macro-F1 {metrics.get(f'{stage}/{a}/f1', float('nan')):.3f}"
                       + "".join(f"   {metrics.get(f'eval/{n}/{a}/acc', float('nan')):>{len(n) + 4}.3f}" for n in sets)
                       for a in attributes]
    print(
        f"\nMLflow run {logger.run_id} (experiment '{cfg.logger.experiment_name}', {cfg.logger.tracking_uri})\n"
        f"{stage} metrics:\n" + "\n".join(rows) +
        f"\n  {'mean':<15} acc {metrics.get(f'{stage}/mean_acc', float('nan')):.3f}\n"
        f"{ui_hint(cfg.logger.tracking_uri, cfg.logger.experiment_name)}\n"
    )
