"""Lightning callbacks of our own (the rest come from Lightning via the `callbacks` config)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.loggers import MLFlowLogger

from fashion.calibration import Decision, calibrate
from fashion.validation import AtLeastOne, AtLeastZero, Probability


class EpochSeed(Callback):
    """Reseed every RNG with `seed + epoch` at each epoch start.

    Shuffling, dropout and augmentation of epoch k then depend only on (seed, k), so a run resumed
    from the checkpoint of epoch k-1 trains exactly as the uninterrupted run did.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        L.seed_everything(self.seed + trainer.current_epoch, workers=True, verbose=False)


class EMAWeights(EMAWeightAveraging):
    """Lightning's exponential moving average of the weights, tested as it was validated and saved.

    Validation, checkpoints and the end of training use the averaged weights. The stock callback keeps
    its averaged copy after `fit`, so `trainer.test(ckpt_path="best")` restores the raw weights saved
    beside the average (`current_model_state`) and tests weights that validation never scored.
    Dropping the copy when training ends makes test, like inference, load the averaged `state_dict`.
    Enable with `callbacks.ema='{_target_: fashion.training.callbacks.EMAWeights, decay: 0.998}'`.
    """

    def __init__(self, decay: Probability = 0.999, update_every_n_steps: AtLeastOne = 1,
                 update_starting_at_step: AtLeastZero | None = None,
                 update_starting_at_epoch: AtLeastZero | None = None,
                 device: torch.device | str | int | None = None, use_buffers: bool = True) -> None:
        # Named and typed: the config check refuses `decay: 1.5` (Lightning's is any float) and, as for any class whose
        # **kwargs reach no base __init__, a misspelt key, before the run opens.
        super().__init__(device=device, use_buffers=use_buffers, decay=decay, update_every_n_steps=update_every_n_steps,
                         update_starting_at_step=update_starting_at_step,
                         update_starting_at_epoch=update_starting_at_epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._average_model = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None:  # resuming `fit`: restore both the raw and the averaged weights
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


class Calibration(Callback):
    """After fit, on the validation split and the weights that are tested and exported (the best
    checkpoint's): a temperature per attribute, then the confidence threshold that reaches
    `target_precision` (per attribute: `target_precision_per_attribute`); `review_always` attributes get
    none, so every one of their tags goes to a person (a tag whose validation precision does not carry to
    new data: season on a new catalogue year, docs/calibration.md). Both are written into that
    checkpoint (`model.temperature`, key `decision`), so test, export and every runtime use them, and
    logged as `calibration/<attribute>/*` with `calibration/decision.json`.

    Runs on global rank zero over the whole validation split (a few thousand rows), then broadcasts.
    Listed first in `callbacks`, so the checkpoint is calibrated before it is logged as an artifact.
    """

    def __init__(self, target_precision: Probability = 0.98, target_precision_per_attribute: Mapping[str, Probability] | None = None,
                 review_always: Sequence[str] = ()) -> None:
        self.target_precision = float(target_precision)
        self.per_attribute = dict(target_precision_per_attribute or {})
        self.review_always = list(review_always)

    def targets(self, attributes: list[str]) -> dict[str, float]:
        for key, named in (("target_precision_per_attribute", self.per_attribute), ("review_always", self.review_always)):
            stray = sorted(set(named) - set(attributes))
            if stray:
                raise ValueError(f"callbacks.calibration.{key} names {stray}, which are not trained attributes {attributes}")
        return {a: float(self.per_attribute.get(a, self.target_precision)) for a in attributes}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.targets(pl_module.model.attributes)   # a misspelt attribute fails before training, not after

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        path = checkpoint.best_model_path if checkpoint else ""
        decision = None
        if trainer.is_global_zero:
            if path:
                pl_module.load_state_dict(torch.load(path, map_location=pl_module.device, weights_only=True)["state_dict"])
            logits, targets = validation_logits(trainer, pl_module)
            decision, report = calibrate(logits, targets, self.targets(pl_module.model.attributes),
                                         pl_module.taxonomy_levels, pl_module.classes, self.review_always)
            if path:
                write_into_checkpoint(Path(path), decision)
            log_calibration(trainer, decision, report)
        saved = trainer.strategy.broadcast(decision.to_dict() if decision else None, src=0)
        pl_module.decision = Decision.from_dict(saved, pl_module.model.attributes, "calibration")
        pl_module.model.set_temperatures(pl_module.decision.temperatures)
        trainer.strategy.barrier()


@torch.no_grad()
def validation_logits(trainer: L.Trainer, module: L.LightningModule) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Uncalibrated logits and targets of the whole validation split, in the trainer's precision."""
    module.eval()
    temperatures = module.model.temperatures()
    logits, targets = defaultdict(list), defaultdict(list)
    for inputs, batch_targets in trainer.datamodule.whole_split("val"):
        with trainer.precision_plugin.forward_context():   # the inputs in the weights' dtype, as Lightning's loops give them
            outputs = module(trainer.precision_plugin.convert_input(move_data_to_device(inputs, module.device)))
        for attribute, values in outputs.items():
            logits[attribute].append(values.float().cpu() * temperatures[attribute])
            targets[attribute].append(batch_targets[attribute])
    return {a: torch.cat(v) for a, v in logits.items()}, {a: torch.cat(v) for a, v in targets.items()}


def write_into_checkpoint(path: Path, decision: Decision) -> None:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    attributes = list(decision.thresholds)
    checkpoint["state_dict"]["model.temperature"] = torch.tensor([decision.temperatures[a] for a in attributes])
    checkpoint["decision"] = decision.to_dict()
    torch.save(checkpoint, path)


def log_calibration(trainer: L.Trainer, decision: Decision, report: dict[str, float]) -> None:
    for logger in trainer.loggers:
        logger.log_metrics(report)
        if isinstance(logger, MLFlowLogger) and logger.run_id:
            logger.experiment.log_dict(logger.run_id, decision.to_dict(), "calibration/decision.json")


class OptunaPruning(Callback):
    """Report the monitored metric after each validation; stop the trial when Optuna says so."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        self.trial.report(float(trainer.callback_metrics[self.monitor]), step=trainer.current_epoch)
        if self.trial.should_prune():
            if trainer.logger is not None and getattr(trainer.logger, "run_id", None):
                trainer.logger.experiment.set_tag(trainer.logger.run_id, "optuna.state", "pruned")
            raise optuna.TrialPruned(f"trial {self.trial.number} pruned at epoch {trainer.current_epoch}")
