"""The one owner of a training run's MLflow run: where the store is, what identifies a run, and the
run's life: created (or reopened to resume), named, tagged, then finished, FAILED or KILLED.

A run is identified by a hash of its resolved config minus `VOLATILE_KEYS` (stored as the
`config.hash` tag); the same config minus those keys is what the run logs as params.
`resume=auto` finds the newest unfinished run with the same hash whose `last.ckpt` still exists;
`resume=<run id>` names one. Everything here runs on global rank zero only, so a DDP job records
exactly one run.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from hydra.utils import instantiate
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from fashion import config
from fashion.config import ConfigError, flatten, refuse_a_silent_server, refused_credentials, sqlite_file, tracking_uri
from fashion.tracking.environment import changed_environment, hardware, requirements, version_tags
from fashion.tracking.store import follow_move

if TYPE_CHECKING:   # Lightning loads with the trainer: the Hydra callback below runs before every job, and a
    from lightning.pytorch.loggers import MLFlowLogger   # command line refused there need not wait for it

log = logging.getLogger(__name__)

# Keys that differ between two launches of the same experiment (paths of this machine, names, how
# it was launched): they neither identify a run nor are logged as its params.
VOLATILE_KEYS = ("paths", "resume", "ckpt_path", "trainer.default_root_dir", "callbacks.model_checkpoint.dirpath",
                 "logger", "tags", "hydra", "feature_cache.directory", "hparams_search")
# Interpolated copies of other sections (data.labels is ${labels}): logged once, under their own name.
COPIES = ("data.labels", "data.split", "data.augmentation")
CHECKPOINT_TAG = "checkpoint_dir"
EXPERIMENT_KIND, TRAINING = "mlflow.experimentKind", "custom_model_development"
PARENT_RUN_ENV = "FASHION_SWEEP_RUN_ID"   # set while a sweep's parent run is open: its jobs nest under it
# Overrides that change how a run looks or how fast it loads, not what it trains: left out of run names,
# as the VOLATILE_KEYS are (data.root: the folder is in the name already).
DISPLAY_ONLY = ("callbacks.progress_bar", "trainer.enable_progress_bar", "trainer.enable_model_summary",
                "trainer.log_every_n_steps", "data.num_workers", "data.persistent_workers", "data.pin_memory",
                "data.root")
NAMED_GROUPS = ("experiment", "data", "backbone")   # in the name already
UNFINISHED = ("RUNNING", "FAILED", "KILLED")


def ensure_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """Create the store and experiment once, before parallel jobs race to create tables. The experiment
    is marked a model-training one (`mlflow.experimentKind`), so the UI opens on its runs, not GenAI traces.

    A SQLite store is prepared by one process at a time: the processes of a torchrun or srun job, or
    commands started together, each ran MLflow's table migrations on a new store at once, and all but
    one (sometimes all) failed with `table ... already exists` before training began."""
    refuse_a_silent_server(uri)
    database = sqlite_file(uri)
    if database is None:
        return _ensure_experiment(uri, name, artifact_location)
    store = database.parent
    store.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock"):
        follow_move(uri)   # a project folder renamed or copied: its runs' artifacts are here, not where it was
        # Beside the database, as mlruns/ keeps them; MLflow's default would be ./mlruns of wherever the command runs.
        return _ensure_experiment(uri, name, artifact_location or str((store / "artifacts").resolve()))


def _ensure_experiment(uri: str, name: str, artifact_location: str | None) -> str:
    client = MlflowClient(uri)
    try:
        experiment = client.get_experiment_by_name(name)
    except mlflow.exceptions.MlflowException as err:
        refusal = refused_credentials(uri, err)
        if refusal is None:
            raise
        raise refusal from None
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location, tags={EXPERIMENT_KIND: TRAINING})
        except mlflow.exceptions.MlflowException:  # another job created it first
            experiment = client.get_experiment_by_name(name)
    if experiment.tags.get(EXPERIMENT_KIND) is None:   # a store from before: mark it once
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, TRAINING)
    return experiment.experiment_id


def ui_url(uri: str | None = None, experiment: str = "fashion", host: str = "http://127.0.0.1:5000") -> str:
    """The experiment's training runs in the MLflow UI. The link says `workflowType=machine_learning`:
    MLflow 3.17's UI opens a fresh browser on its GenAI view whatever the experiment's kind."""
    uri = uri or tracking_uri()
    follow_move(uri)   # `make ui` asks this first: a moved project's UI then shows its artifacts
    found = MlflowClient(uri).get_experiment_by_name(experiment)
    page = f"experiments/{found.experiment_id}/runs" if found else "experiments"
    return f"{host}/#/{page}?workflowType=machine_learning"


def ui_hint(uri: str, experiment: str = "fashion") -> str:
    """How to see the runs of `uri`: a tracking server is its own UI; `make ui` serves the project's store
    (MLFLOW_TRACKING_URI, else mlruns/); any other local store needs `mlflow ui` pointed at it."""
    if uri.startswith(("http://", "https://", "databricks")):
        return f"Open the MLflow UI: {ui_url(uri, experiment, host=uri.rstrip('/'))}"
    ours = config.IS_CHECKOUT and uri == (config.SHELL_TRACKING_URI or config.local_store())   # a wheel has no Makefile
    command = "make ui" if ours else f"mlflow ui --backend-store-uri {uri}"
    return f"Open the MLflow UI with: {command}   (then {ui_url(uri, experiment)})"


def git_commit() -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=config.PACKAGE_DIR, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"mlflow.source.git.commit": git("rev-parse", "HEAD"), "git.dirty": str(bool(git("status", "--porcelain")))}
    except (OSError, subprocess.CalledProcessError):
        return {}


# --- identity ------------------------------------------------------------------------------------------
def identity(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config minus `VOLATILE_KEYS`: what makes two runs the same experiment."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for dotted in VOLATILE_KEYS:
        *parents, leaf = dotted.split(".")
        node = container
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return container


def config_hash(cfg: DictConfig) -> str:
    return hashlib.sha256(json.dumps(identity(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_params(cfg: DictConfig) -> dict[str, Any]:
    """The identity as dotted MLflow params; a list stays one value (JSON), so a sweep over it is one column."""
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flatten(identity(cfg)).items()
            if not k.startswith(tuple(f"{c}." for c in COPIES))}


# --- resuming ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResumePoint:
    run_id: str
    ckpt_path: str


def _last_checkpoint(run: mlflow.entities.Run) -> str | None:
    directory = run.data.tags.get(CHECKPOINT_TAG)
    path = Path(directory) / "last.ckpt" if directory else None
    return str(path) if path and path.is_file() else None


def refuse_another_config(cfg: DictConfig, run: mlflow.entities.Run) -> None:
    """A resumed run keeps the params and config it logged first, so continuing it under another config
    would make the run describe a model it did not train. Names the keys that differ."""
    if run.data.tags.get("config.hash") == config_hash(cfg):
        return
    ours = {k: str(v) for k, v in run_params(cfg).items()}
    theirs = run.data.params
    differ = [f"{k}: {theirs.get(k, '(unset)')} -> {ours.get(k, '(unset)')}" for k in sorted(set(ours) | set(theirs))
              if ours.get(k) != theirs.get(k)]
    shown = "; ".join(differ[:5]) + (f"; and {len(differ) - 5} more" if len(differ) > 5 else "")
    raise ConfigError(f"resume={run.info.run_id}: that run was trained with another config ({shown or 'its config.hash differs'}): "
                      "resume it with its own command, or start a new run from its checkpoint with ckpt_path=")


def find_resume_point(cfg: DictConfig) -> ResumePoint | None:
    """Where to continue from, or None for a fresh run; raises if a named run cannot be resumed."""
    request = cfg.get("resume")
    if not request:
        return None
    client = MlflowClient(cfg.logger.tracking_uri)
    if request != "auto":
        try:
            run = client.get_run(str(request))
        except MlflowException:
            raise ConfigError(f"resume={request}: no such run in {cfg.logger.tracking_uri}") from None
        refuse_another_config(cfg, run)
        ckpt = _last_checkpoint(run)
        if ckpt is None:
            raise FileNotFoundError(f"resume={request}: run has no last.ckpt under its '{CHECKPOINT_TAG}' tag")
        return ResumePoint(run.info.run_id, ckpt)
    experiment = client.get_experiment_by_name(cfg.logger.experiment_name)
    runs = [] if experiment is None else client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`config.hash` = '{config_hash(cfg)}'",
        order_by=["attributes.start_time DESC"])
    for run in runs:
        ckpt = _last_checkpoint(run) if run.info.status in UNFINISHED else None
        if ckpt:
            log.info("resume=auto: continuing run %s from %s", run.info.run_id, ckpt)
            return ResumePoint(run.info.run_id, ckpt)
    log.info("resume=auto: no unfinished run with this config has a checkpoint; starting fresh")
    return None


# --- the run's life ------------------------------------------------------------------------------------
def run_name(cfg: DictConfig) -> str:
    """What the run is: `<recipe> · <backbone> · <data folder>`, then the overrides that change the model
    (the full list stays in the `hydra.overrides` tag)."""
    recipe = (cfg.get("tags") or {}).get("recipe")
    changes = []
    if HydraConfig.initialized():
        recipe = recipe or HydraConfig.get().runtime.choices.get("experiment")
        for override in HydraConfig.get().overrides.task:
            key = override.split("=", 1)[0].lstrip("+~")
            if key not in NAMED_GROUPS and not key.startswith(VOLATILE_KEYS + DISPLAY_ONLY):
                changes.append(override)
    parts = [recipe or "default", cfg.backbone.name, Path(str(cfg.data.root)).name]
    return " · ".join(parts + ([",".join(changes)] if changes else []))


def launch_tags(cfg: DictConfig) -> dict[str, str]:
    """How the run was launched: its overrides and `-m` sweep (groups sweep jobs in the UI), the hardware
    and the library versions its numbers depend on."""
    trainer = cfg.trainer
    tags = {**(cfg.get("tags") or {}), "config.hash": config_hash(cfg), **version_tags(),
            "hardware": hardware(trainer.accelerator, trainer.devices, trainer.num_nodes)}
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        tags = {"hydra.overrides": hydra_cfg.job.override_dirname or "(defaults)", **tags}
        if hydra_cfg.mode == RunMode.MULTIRUN:
            tags |= {"sweep": str(hydra_cfg.sweep.dir), "sweep.job": str(hydra_cfg.job.num)}
    return tags


def open_run(cfg: DictConfig, resume: ResumePoint | None) -> MLFlowLogger:
    """The Lightning MLflow logger with its run created (or reopened) now, on rank zero, so spawned
    workers and the test stage share one run."""
    ensure_experiment(cfg.logger.tracking_uri, cfg.logger.experiment_name, cfg.logger.get("artifact_location"))
    tags = launch_tags(cfg)
    if os.environ.get(PARENT_RUN_ENV) and not resume:   # a job of a sweep: nested under the sweep's run
        tags["mlflow.parentRunId"] = os.environ[PARENT_RUN_ENV]
    name = cfg.logger.get("run_name") or run_name(cfg)
    logger = instantiate(cfg.logger, run_name=name, tags=tags, run_id=resume.run_id if resume else None)
    _ = logger.experiment, logger.run_id  # rank zero creates the run; others get a dummy
    if logger.run_id:
        client = logger.experiment
        if resume:
            client.update_run(logger.run_id, status="RUNNING")
            client.set_tag(logger.run_id, "resumed_from", resume.ckpt_path)
            if changed := changed_environment(client.get_run(logger.run_id).data.tags, tags):
                log.warning("resuming run %s on other hardware or library versions than it started with (%s): its "
                            "numbers may differ from an uninterrupted run's; its tags stay the start's",
                            logger.run_id, ", ".join(changed))
        else:
            client.set_tag(logger.run_id, CHECKPOINT_TAG, str(Path(cfg.paths.output_dir) / "checkpoints"))
            client.log_text(logger.run_id, requirements(), "environment/requirements.txt")
    return logger


@contextmanager
def tracked_run(cfg: DictConfig, stopped_by: tuple[type[BaseException], ...] = (), resume: ResumePoint | None = None,
                ) -> Iterator[tuple[MLFlowLogger, ResumePoint | None]]:
    """The run (new, or `resume`'s: find_resume_point, called before the slow setup so that a refused resume
    fails at once) open for the block; an exception ends it as FAILED, or KILLED when it is a deliberate stop
    (Ctrl-C, or one of `stopped_by`, e.g. a pruned Optuna trial)."""
    logger = open_run(cfg, resume)
    monitor = None
    if logger.run_id and logger.system_metrics:   # MLflow's own CPU/memory/GPU sampling, as system/*
        monitor = SystemMetricsMonitor(logger.run_id, resume_logging=resume is not None,
                                       tracking_uri=cfg.logger.tracking_uri)
        monitor.start()
    try:
        yield logger, resume
    except BaseException as err:
        if logger.run_id:
            killed = isinstance(err, (KeyboardInterrupt, *stopped_by))
            logger.experiment.set_terminated(logger.run_id, "KILLED" if killed else "FAILED")
        raise
    else:
        finish_if_running(logger)
    finally:
        if monitor:
            monitor.finish()


def finish_if_running(logger: MLFlowLogger) -> None:
    """Lightning ends the run when its trainer is done with the logger, but `trainer.fast_dev_run` swaps the
    logger out: that run stayed RUNNING for good. On global rank zero only (a resumed run's id is on every rank)."""
    from lightning.pytorch.utilities import rank_zero_only   # loaded by now: the run has trained

    if rank_zero_only.rank == 0 and logger.run_id and logger.experiment.get_run(logger.run_id).info.status == "RUNNING":
        logger.experiment.set_terminated(logger.run_id, "FINISHED")


@contextmanager
def tool_run(uri: str, experiment: str, name: str, run_type: str, tags: dict[str, str] | None = None,
             artifact_location: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """A run of a tool beside training (`run_type`: evaluation, data_report, promotion), open as MLflow's
    active run for the block: the same store, experiment kind and commit tags as a training run; an
    exception ends it as FAILED (MLflow's own context manager)."""
    experiment_id = ensure_experiment(uri, experiment, artifact_location)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=name,
                          tags={"run_type": run_type, **git_commit(), **version_tags(), **(tags or {})}) as run:
        yield run


def start_sweep(cfg: DictConfig, name: str) -> str:
    """The parent run of a sweep (Hydra `-m` or an Optuna study): every job started until `end_sweep`
    in this process or its children is nested under it."""
    uri = cfg.logger.tracking_uri
    experiment = ensure_experiment(uri, cfg.logger.experiment_name, cfg.logger.get("artifact_location"))
    tags = {"run_type": "sweep", **git_commit(), **(cfg.get("tags") or {})}
    run_id = MlflowClient(uri).create_run(experiment, run_name=name, tags=tags).info.run_id
    os.environ[PARENT_RUN_ENV] = run_id
    return run_id


def end_sweep(cfg: DictConfig, run_id: str, status: str | None = "FINISHED") -> None:
    """Mark the sweep's best job on its parent run (tag `best_run_id`, metric `best/<monitor>`), then close it.
    `status` None: the sweep stopped early, and its jobs say why: KILLED where one was stopped on purpose
    (Ctrl-C), as that job is, else FAILED."""
    os.environ.pop(PARENT_RUN_ENV, None)
    client, monitor = MlflowClient(cfg.logger.tracking_uri), cfg.get("optimized_metric", "val/mean_acc")
    maximize = config.metric_mode(monitor) == "max"
    jobs = client.search_runs([client.get_run(run_id).info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
    if status is None:
        status = "KILLED" if any(job.info.status == "KILLED" for job in jobs) else "FAILED"
    scored = [(job.data.metrics.get(f"best/{monitor}", job.data.metrics.get(monitor)), job) for job in jobs]
    scored = [(value, run) for value, run in scored if value is not None]
    if scored:
        value, best = (max if maximize else min)(scored, key=lambda pair: pair[0])
        client.set_tag(run_id, "best_run_id", best.info.run_id)
        client.set_tag(run_id, "best_run_name", best.info.run_name)
        client.log_metric(run_id, f"best/{monitor}", value)
    client.set_terminated(run_id, status)


class PrepareMLflowStore(HydraCallback):
    """Create the SQLite store and the experiment before (possibly parallel) Hydra jobs log to it; a `-m`
    sweep gets a parent run that its jobs nest under (an Optuna study makes its own, in fashion.tune)."""

    def __init__(self) -> None:
        self.sweep_run_id: str | None = None

    def _prepare(self, config: DictConfig) -> bool:
        logger = config.get("logger")
        if not (logger and logger.get("tracking_uri")):
            return False
        try:
            ensure_experiment(logger.tracking_uri, logger.experiment_name, logger.get("artifact_location"))
        except ConfigError:   # a server that does not answer: the run names it in one line (Hydra would warn here)
            return False
        return True

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._prepare(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self._prepare(config) and not config.get("hparams_search"):
            self.sweep_run_id = start_sweep(config, f"sweep {Path(config.hydra.sweep.dir).name}")
            # A sweep with a failed job (or a Ctrl-C) never reaches on_multirun_end: Hydra raises after the
            # jobs and exits. Close the parent then (FAILED, or KILLED), or the MLflow UI shows it running for ever.
            atexit.register(self.close_sweep, config, None)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.close_sweep(config, "FINISHED")

    def close_sweep(self, config: DictConfig, status: str | None) -> None:
        if self.sweep_run_id:
            run_id, self.sweep_run_id = self.sweep_run_id, None
            end_sweep(config, run_id, status)
