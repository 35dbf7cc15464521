"""A composed config -> the network, the LightningModule and the cached-input switch, and the checks of a
config that only its classes can make (torch's optimizer values, Lightning's Trainer, the module's keys,
the heads' metrics, the checkpoint to start from), run before the slow setup.

What `fashion-train` builds before it starts the Trainer, apart from experiment tracking, so scripts
(benchmarks, the GPU check) assemble exactly the training run's model without an MLflow run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import ParallelStrategy
from omegaconf import DictConfig, OmegaConf

from fashion.config import ConfigError
from fashion.data.datamodule import FashionDataModule
from fashion.features import FeatureCache
from fashion.inference.checkpoint import read_checkpoint
from fashion.losses.multi_attribute import MultiAttributeLoss
from fashion.metrics import logged_names
from fashion.metrics.attribute_metrics import TOP_K
from fashion.models.backbone import Backbone
from fashion.models.tagger import MultiHeadTagger
from fashion.training.module import TaggerModule
from fashion.validation import check_fields


def build_model(cfg: DictConfig, datamodule: FashionDataModule, backbone: Backbone) -> MultiHeadTagger:
    """Backbone + extra features + heads; head sizes come from the datamodule's vocabularies."""
    extras = {name: instantiate(node, preprocessing=backbone.preprocessing)
              for name, node in (cfg.get("extra_features") or {}).items() if node is not None}
    in_features = MultiHeadTagger.feature_size(backbone, extras)
    heads = instantiate(cfg.head, in_features=in_features, num_classes=datamodule.num_classes)
    return MultiHeadTagger(backbone, heads, extras)


def check_optimizer(cfg: DictConfig) -> None:
    """The optimizer as configured, tried once on a stand-in parameter: torch checks lr, betas, momentum and
    weight decay only when an optimizer is built, which is after the feature cache fills and the MLflow run
    opens; `optimizer.lr=-1` is refused here, naming the group, instead."""
    try:
        instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as err:
        raise ConfigError(f"optimizer ({cfg.optimizer._target_}): {err}") from None


def check_trainer(cfg: DictConfig) -> None:
    """The Trainer as configured, built once and dropped: Lightning checks `max_epochs`, the accelerator,
    devices and precision only when it is built, which is after the feature cache fills and the MLflow run
    opens; `trainer.max_epochs=-5` is refused here instead. Its device report is left to the real one."""
    device_report = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = device_report.level
    device_report.setLevel(logging.WARNING)
    try:
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    except InstantiationException as err:   # Hydra's wrapper around what Lightning said
        raise ConfigError(f"trainer: {err.__cause__ or err}") from None
    finally:
        device_report.setLevel(level)
    parallel = isinstance(trainer.strategy, ParallelStrategy)   # the strategies that apply sync_batchnorm
    if cfg.trainer.get("sync_batchnorm") and parallel and trainer.strategy.root_device.type == "cpu":
        raise ConfigError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm refuses CPU modules): "
                          "set trainer.sync_batchnorm=false, as trainer=ddp_cpu does")
    refuse_a_run_that_never_validates(cfg, trainer)
    if trainer.accumulate_grad_batches < 1:   # Lightning takes it, then divides by it at fit
        raise ConfigError(f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: at least 1 "
                          "(the batches whose gradients add up to one optimizer step)")
    if (trainer.gradient_clip_val or 0) < 0:   # Lightning skips clipping at a value <= 0 without a word
        raise ConfigError(f"trainer.gradient_clip_val={trainer.gradient_clip_val} clips nothing: a positive norm "
                          "(or value, with trainer.gradient_clip_algorithm=value), or null for no clipping")
    if trainer.max_epochs == -1 and trainer.max_steps == -1 and cfg.get("scheduler") is not None:
        raise ConfigError("trainer.max_epochs=-1 with trainer.max_steps=-1 trains until something stops it "
                          "(trainer.max_time, early stopping), and the learning-rate schedule needs a length: "
                          "give trainer.max_steps=<n>, or ~scheduler for a constant rate")


def refuse_a_run_that_never_validates(cfg: DictConfig, trainer: Trainer) -> None:
    """Lightning takes a Trainer that never trains, or never validates in the epochs it has; the run then
    trained for nothing and ended in a traceback from the early-stopping callback or the test of the best
    checkpoint, which only validation chooses. Refused here, naming the keys."""
    if trainer.limit_train_batches == 0:
        raise ConfigError("trainer.limit_train_batches=0 trains nothing (fashion-eval scores a checkpoint)")
    watching = sorted(name for name, callback in (cfg.get("callbacks") or {}).items()
                      if callback and callback.get("monitor"))
    if not watching:
        return
    why = f"validation never runs, and callbacks {watching} need its {cfg.callbacks[watching[0]].monitor}"
    if trainer.limit_val_batches == 0:
        raise ConfigError(f"trainer.limit_val_batches=0: {why}")
    every, epochs = trainer.check_val_every_n_epoch, trainer.max_epochs
    if every and epochs and 0 < epochs < every:
        raise ConfigError(f"trainer.check_val_every_n_epoch={every} with trainer.max_epochs={epochs}: {why}")


def check_start_checkpoint(path: str | None, key: str) -> dict[str, torch.Size] | None:
    """A checkpoint to start from (`ckpt_path`, or the last one of a run to resume) is read now as inference
    reads one (weights only). Lightning reads it at fit, after the slow setup, and its refusal of a pickle
    that would run code, or of a file cut short, was a traceback ending in torch's advice to load it with
    `weights_only=False`: what not to do with a file from elsewhere. Returns its weights' shapes, for
    `refuse_weights_that_do_not_fit` once the model is built."""
    if not path or "://" in str(path):   # a remote one is Lightning's to fetch
        return None
    try:
        state = read_checkpoint(Path(path).expanduser(), mmap=True).get("state_dict")
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None
    return {name: tensor.shape for name, tensor in state.items()} if isinstance(state, dict) else None


def refuse_weights_that_do_not_fit(shapes: dict[str, torch.Size] | None, module: TaggerModule, key: str) -> None:
    """As Lightning loads a checkpoint (strictly, after the module's `on_load_checkpoint`, which fills in what
    older checkpoints lack), checked before the run opens: a checkpoint of another head, backbone or label set
    was a page of torch's "Missing key(s) ... size mismatch", in a FAILED run."""
    if shapes is None:
        return
    loaded = {"state_dict": {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}}
    module.on_load_checkpoint(loaded)
    shapes = {name: tensor.shape for name, tensor in loaded["state_dict"].items()}
    own = {name: tensor.shape for name, tensor in module.state_dict().items()}
    missing, unknown = sorted(own.keys() - shapes.keys()), sorted(shapes.keys() - own.keys())
    resized = sorted(name for name in own.keys() & shapes.keys() if own[name] != shapes[name])
    if not (missing or unknown or resized):
        return
    found = [f"{len(names)} tensor(s) {what} (first {names[0]})" for names, what in
             ((missing, "missing from it"), (unknown, "this model lacks"), (resized, "of another shape")) if names]
    if resized:
        found[-1] = found[-1][:-1] + f": {list(shapes[resized[0]])} there, {list(own[resized[0]])} here)"
    raise ConfigError(f"{key}: its weights do not fit the model this config builds: {'; '.join(found)}. "
                      "Start from a checkpoint of the same backbone, head and labels, or give those keys as its "
                      "run did (its run's config.yaml)")


def check_module_keys(cfg: DictConfig) -> None:
    """`module` holds TaggerModule's own keywords (no `_target_`, so validate_config does not see them):
    checked against its signature, so `module.backbone_lr_scale=-1` is refused at the key."""
    try:
        check_fields(TaggerModule, OmegaConf.to_container(cfg.get("module") or {}, resolve=True), "module")
    except ValueError as err:
        raise ConfigError(f"invalid config: {err}") from None


def refuse_unlogged_monitor(key: str, metric: str, num_classes: dict[str, int]) -> None:
    """The config check knows the metric names but not the head sizes, which come from the data: top-5 is
    logged only for heads of more than five classes. Refused here, before a feature cache fills, not
    by the checkpoint callback after the first epoch."""
    logged = ["val/loss", *logged_names(num_classes, "val")]
    if metric in logged:
        return
    attribute = metric.split("/")[1] if metric.count("/") == 2 else None
    why = (f"{attribute} has {num_classes[attribute]} classes here, and top{TOP_K} is logged only for heads of more "
           f"than {TOP_K}" if attribute in num_classes and num_classes[attribute] <= TOP_K else f"it logs {logged}")
    raise ConfigError(f"{key}: {metric!r} is not logged by this run: {why}")


def build_module(cfg: DictConfig, datamodule: FashionDataModule, model: MultiHeadTagger) -> TaggerModule:
    """Loss (class weights from the vocabularies' counts), optimizer and schedule around the model."""
    loss = MultiAttributeLoss(
        criterion=instantiate(cfg.loss),
        weighting=instantiate(cfg.loss_weighting, attributes=datamodule.attributes),
        class_weights=instantiate(cfg.class_weights),
        class_counts=datamodule.class_counts,
    )
    return TaggerModule(
        model=model,
        loss=loss,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        vocabularies={a: v.to_dict() for a, v in datamodule.vocabularies.items()},
        taxonomy=datamodule.taxonomy,
        run_config=OmegaConf.to_container(cfg, resolve=True),
        **cfg.module,
    )


def use_feature_cache(cfg: DictConfig, model: MultiHeadTagger, datamodule: FashionDataModule) -> FeatureCache | None:
    """Swap images for cached frozen-part outputs when that cannot change the result (see FeatureCache).

    The module's checkpoint still holds the whole network, so it predicts from images as usual.
    """
    if not cfg.get("feature_cache"):
        return None
    cache: FeatureCache = instantiate(cfg.feature_cache)
    if cache.applies(model, datamodule.augmentation):  # the one place that decides images vs cached inputs
        datamodule.use_cached_inputs(*cache.load_with_views(model, datamodule.preprocessing, datamodule.table,
                                                            datamodule.augmentation.views, datamodule.true_aspect))
    return cache
