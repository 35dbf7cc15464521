"""Resume a killed or failed run from its last checkpoint, into the same MLflow run.

A run is identified by a hash of its resolved config (minus paths that change between launches),
stored as the `config.hash` tag. `resume=auto` finds the newest unfinished run with the same hash
whose `last.ckpt` still exists; `resume=<run id>` names one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# Keys that differ between two launches of the same experiment and must not change its identity.
VOLATILE_KEYS = ("paths", "resume", "ckpt_path", "trainer.default_root_dir", "callbacks.model_checkpoint.dirpath",
                 "logger.run_name", "tags", "hydra")
CHECKPOINT_TAG = "checkpoint_dir"
UNFINISHED = ("RUNNING", "FAILED", "KILLED")


@dataclass(frozen=True)
class ResumePoint:
    run_id: str
    ckpt_path: str


def config_hash(cfg: DictConfig) -> str:
    container = OmegaConf.to_container(cfg, resolve=True)
    for dotted in VOLATILE_KEYS:
        *parents, leaf = dotted.split(".")
        node = container
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _last_checkpoint(run) -> str | None:
    directory = run.data.tags.get(CHECKPOINT_TAG)
    path = Path(directory) / "last.ckpt" if directory else None
    return str(path) if path and path.is_file() else None


def find_resume_point(cfg: DictConfig) -> ResumePoint | None:
    """Where to continue from, or None for a fresh run; raises if a named run cannot be resumed."""
    request = cfg.get("resume")
    if not request:
        return None
    client = MlflowClient(cfg.logger.tracking_uri)
    if request != "auto":
        run = client.get_run(str(request))
        ckpt = _last_checkpoint(run)
        if ckpt is None:
            raise FileNotFoundError(f"resume={request}: run has no last.ckpt under its '{CHECKPOINT_TAG}' tag")
        return ResumePoint(run.info.run_id, ckpt)
    experiment = client.get_experiment_by_name(cfg.logger.experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`config.hash` = '{config_hash(cfg)}'",
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        if run.info.status not in UNFINISHED:
            continue
        ckpt = _last_checkpoint(run)
        if ckpt:
            log.info("resume=auto: continuing run %s from %s", run.info.run_id, ckpt)
            return ResumePoint(run.info.run_id, ckpt)
    log.info("resume=auto: no unfinished run with this config has a checkpoint; starting fresh")
    return None
