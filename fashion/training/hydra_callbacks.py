"""Hydra callbacks: work done once per launch, before any job starts."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fashion.training.tracking import ensure_experiment


class PrepareMLflowStore(Callback):
    """Create the SQLite store and the experiment before (possibly parallel) jobs log to it."""

    def _prepare(self, config: DictConfig) -> None:
        logger = config.get("logger")
        if logger and logger.get("tracking_uri"):
            ensure_experiment(logger.tracking_uri, logger.experiment_name, logger.get("artifact_location"))

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._prepare(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._prepare(config)
