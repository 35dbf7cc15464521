"""The LightningModule: model + loss + optimizer/scheduler factories + per-attribute metrics."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from typing import Any

import lightning as L
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric, Metric

from fashion.calibration import Decision
from fashion.config import InputError
from fashion.data.taxonomy import Taxonomy, decode_levels
from fashion.losses.multi_attribute import MultiAttributeLoss
from fashion.metrics import AttributeMetrics
from fashion.models.tagger import CachedInputs, MultiHeadTagger
from fashion.validation import NonNegative

Inputs = torch.Tensor | CachedInputs   # images, or FeatureCache rows
Batch = tuple[Inputs, dict[str, torch.Tensor]]


def batch_size_of(targets: dict[str, torch.Tensor]) -> int:
    return len(next(iter(targets.values())))


class TrainingDiverged(InputError):
    """The training loss is no longer a number: every later epoch, the checkpoint and the model served from it
    would be NaN (a bundle tagged every photo with confidence NaN), so the run stops FAILED instead."""


def refuse_a_diverged_run(epoch_losses: dict[str, float], epoch: int, precision: str) -> None:
    """Per epoch, on means computed anyway: a check per step would wait on the device at every step."""
    diverged = {a: v for a, v in epoch_losses.items() if not math.isfinite(v)}
    if not diverged:
        return
    half = (f"; trainer.precision={precision} keeps the weights and the optimizer in half precision, "
            "16-mixed or bf16-mixed does not") if precision in ("16-true", "bf16-true") else ""
    raise TrainingDiverged(f"the training loss diverged in epoch {epoch} ({', '.join(f'{a} {v}' for a, v in diverged.items())}): "
                           f"lower optimizer.lr or set trainer.gradient_clip_val{half}")


class TaggerModule(L.LightningModule):
    """Trains a MultiHeadTagger; the backbone learns at `backbone_lr_scale` x the heads' rate.

    Only plain containers go into checkpoint hparams (`vocabularies`, `run_config`, `taxonomy`): they
    are what inference needs to rebuild the model, and they load under torch's `weights_only=True`.
    """

    def __init__(
        self,
        model: MultiHeadTagger,
        loss: MultiAttributeLoss,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[..., Any] | None = None,
        backbone_lr_scale: NonNegative = 0.1,
        channels_last: bool = False,
        vocabularies: Mapping[str, dict] | None = None,
        run_config: Mapping[str, Any] | None = None,
        taxonomy: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["model", "loss", "optimizer", "scheduler"])
        self.model, self.loss = model, loss
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.attributes = list(loss.weighting.attributes)
        num_classes = dict(model.heads.num_classes)
        self.val_metrics = AttributeMetrics(num_classes, "val")
        self.test_stage = "test"   # the metric prefix of trainer.test: `eval/<set>` while scoring an evaluation set
        self.test_metrics = AttributeMetrics(num_classes, "test", confusion=True, confidence=True)
        self.test_confusion: dict[str, torch.Tensor] = {}
        self.test_confidence: dict[str, tuple[torch.Tensor, ...]] = {}   # for the reliability diagrams
        self.decision: Decision | None = None   # set by the Calibration callback, saved in checkpoints
        # Epoch means of the loss and (for the loss weighting) of each attribute's, kept on the device (no sync
        # per step) and reduced over DDP processes by torchmetrics ("disable": no NaN check, which would sync).
        self.epoch_losses = nn.ModuleDict({a: MeanMetric(nan_strategy="disable") for a in self.attributes})
        self.epoch_loss = MeanMetric(nan_strategy="disable")
        # One photo's shape: the model summary runs it once for the FLOPs and the in/out sizes (without it: 0 FLOPs)
        side = model.backbone.preprocessing.image_size
        self.example_input_array = torch.zeros(1, 3, side, side)

    def setup(self, stage: str) -> None:
        """Every process starts its metrics from zero, in memory of its own. ddp_spawn on CPU hands the
        module to its processes through shared memory, and Lightning copies apart only the parameters
        and buffers: the processes then added into one confusion matrix, and the sync at the end added
        it to itself, so a 2-process test counted every product twice over."""
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()

    @cached_property
    def taxonomy_levels(self) -> Taxonomy | None:
        """The training split's taxonomy, which the served answer is decoded with (None: no hierarchy)."""
        return Taxonomy.from_dict(self.hparams.get("taxonomy"), "taxonomy")

    @property
    def classes(self) -> dict[str, list[str]]:
        return {a: list(v["classes"]) for a, v in (self.hparams.get("vocabularies") or {}).items()}

    def forward(self, inputs: Inputs) -> dict[str, torch.Tensor]:
        """Images, or the FeatureCache's stored inputs; channels_last lets oneDNN/cuDNN pick faster
        convolution kernels for every 4-d tensor (see docs/performance.md)."""
        return self.model(apply_to_collection(inputs, torch.Tensor, self._layout))

    def _layout(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.contiguous(memory_format=self.memory_format) if tensor.ndim == 4 else tensor

    # --- training ------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        total, parts = self.loss(self(inputs), targets)
        self.log("train/loss_step", total, prog_bar=True, batch_size=batch_size_of(targets))
        self.epoch_loss.update(total.detach().float())
        for attribute, mean in self.epoch_losses.items():
            mean.update(parts[attribute].detach().float())
        return total

    def on_train_epoch_end(self) -> None:
        """The epoch's losses are the means over every DDP process's batches (Lightning's own epoch means of
        a value logged per step are its process's: rank zero's share of the data in MLflow)."""
        losses = {a: float(mean.compute()) for a, mean in self.epoch_losses.items()}
        refuse_a_diverged_run(losses, self.current_epoch, str(self.trainer.precision))
        self.log("train/loss_epoch", self.epoch_loss.compute(), prog_bar=True)
        self.log_dict({f"train/{a}/loss": v for a, v in losses.items()})
        self.loss.weighting.end_epoch(losses)
        for mean in [*self.epoch_losses.values(), self.epoch_loss]:
            mean.reset()
        self.log_dict({f"loss_weight/{a}": w for a, w in self.loss.weighting.weights().items()})

    # --- evaluation ----------------------------------------------------------------------------------
    def _evaluate(self, batch: Batch, metrics: AttributeMetrics, stage: str) -> None:
        inputs, targets = batch
        logits = self(inputs)
        total, _ = self.loss(logits, targets)
        self.log(f"{stage}/loss", total, on_epoch=True, sync_dist=True, batch_size=batch_size_of(targets))
        if metrics.records is None:
            metrics.update(logits, targets)
            return
        metrics.update(logits, targets, dict(zip(self.model.attributes, self.model.temperature)), self._served(logits))

    def _served(self, logits: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
        """(confidence, class) per taxonomy level as served, where the decision's thresholds are on those."""
        if self.decision is None or not self.decision.taxonomy_confidence or self.taxonomy_levels is None:
            return None
        probs = {a: torch.softmax(l.float(), dim=1) for a, l in logits.items()}
        chosen, joint = decode_levels(probs, self.taxonomy_levels, self.classes)
        head = {a: probs[a].gather(1, chosen[a].view(-1, 1)).squeeze(1) for a in self.taxonomy_levels.attributes}
        return {a: (self.decision.confidence(a, head[a], joint[a]), chosen[a]) for a in self.taxonomy_levels.attributes}

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, self.test_stage)

    @contextmanager
    def evaluating(self, stage: str) -> Iterator[None]:
        """`trainer.test` inside logs `<stage>/<attribute>/<metric>` instead of `test/...`."""
        saved = self.test_stage, self.test_metrics
        self.test_stage = stage
        self.test_metrics = AttributeMetrics(dict(self.model.heads.num_classes), stage, confusion=True, confidence=True).to(self.device)
        try:
            yield
        finally:
            self.test_stage, self.test_metrics = saved

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.log("val/mean_acc", values.pop("val/mean_acc"), prog_bar=True)
        self.log_dict(values)
        self.val_metrics.reset()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(self.decision.thresholds if self.decision else None))
        self.test_confusion = self.test_metrics.confusion_matrices()
        self.test_confidence = self.test_metrics.confidence_records()
        self.test_metrics.reset()

    # --- checkpoints ---------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.decision is not None:
            checkpoint["decision"] = self.decision.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint from before calibration existed has no temperatures: they load as 1."""
        checkpoint["state_dict"].setdefault("model.temperature", torch.ones(len(self.model.attributes)))
        if checkpoint.get("decision") is not None:
            self.decision = Decision.from_dict(checkpoint["decision"], self.model.attributes, "checkpoint")

    # --- optimisation --------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        backbone_ids = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]
        groups = [{"params": rest, "name": "heads"}]
        if backbone:
            groups.append({"params": backbone, "name": "backbone"})
        optimizer = self.optimizer_factory(groups)
        if backbone:
            optimizer.param_groups[1]["lr"] = optimizer.defaults["lr"] * self.hparams.backbone_lr_scale
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def evaluate_sets(trainer: L.Trainer, module: TaggerModule, loaders: Mapping[str, Any], ckpt_path: str | None) -> dict[str, float]:
    """The same checkpoint as the test split, on each evaluation set (out of time, cross-resolution, ...)."""
    metrics = {}
    for name, loader in loaders.items():
        with module.evaluating(f"eval/{name}"):
            trainer.test(module, dataloaders=loader, ckpt_path=ckpt_path, verbose=False)
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"eval/{name}/")}
    return metrics
