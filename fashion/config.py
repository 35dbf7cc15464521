"""Hydra/OmegaConf glue shared by every entry point: resolvers, typed validation, flattening."""

from __future__ import annotations

import dataclasses
import os
import sys
import zipfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from omegaconf import DictConfig, ListConfig, OmegaConf

# A checkout (cloned, or installed editable from one) keeps its configs, data and runs beside the package. An
# installed wheel (pip install ., a serving image) carries the configs inside the package (pyproject.toml maps
# conf/ to fashion.conf) and works in the directory it is started from, as MLflow's ./mlruns and Hydra's ./outputs do.
PACKAGE_DIR = Path(__file__).resolve().parent
IS_CHECKOUT = (PACKAGE_DIR.parent / "pyproject.toml").is_file() and (PACKAGE_DIR.parent / "conf").is_dir()
PROJECT_ROOT = PACKAGE_DIR.parent if IS_CHECKOUT else Path.cwd()
CONFIG_DIR = PROJECT_ROOT / "conf" if IS_CHECKOUT else PACKAGE_DIR / "conf"


# The store `make ui` serves: MLFLOW_TRACKING_URI as the shell that started this process set it (read at import:
# MLflow sets the variable itself once a run opens), else the project's own.
SHELL_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(mlruns: str | Path | None = None) -> str:
    """The MLflow store every entry point uses (conf/logger/mlflow.yaml and the tools' configs call this as
    `${tracking_uri:...}`): MLFLOW_TRACKING_URI (a team server) when set, else SQLite under `mlruns`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_store(mlruns)


def refuse_a_silent_server(uri: str | None, timeout: float = 10.0) -> None:
    """A tracking server that does not answer is named at once. MLflow's client retries a refused
    connection with back-off (7 tries) before it gives up: fashion-train waited over six minutes on a
    mistyped MLFLOW_TRACKING_URI. Any HTTP answer will do (a proxy's 404 too); only silence is refused."""
    if not uri or not uri.startswith(("http://", "https://")):   # a local store, or MLflow's default
        return
    import requests   # MLflow's own dependency; loaded only for a server
    shown = server_shown(uri)
    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.exceptions.SSLError:   # it answered; its certificate is MLflow's to check (MLFLOW_TRACKING_INSECURE_TLS, ...)
        return
    except requests.RequestException as err:
        raise ConfigError(f"the MLflow tracking server {shown} does not answer ({type(err).__name__}): check "
                          "MLFLOW_TRACKING_URI, or unset it to log to the project's mlruns/") from None


def server_shown(uri: str) -> str:
    """A server's URL without the credentials it may hold (`https://user:secret@host`); any other store as it is."""
    parts = urlsplit(uri or "")
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))) if parts.hostname else str(uri)


def refused_credentials(uri: str, err: Exception) -> ConfigError | None:
    """A tracking server's 401 or 403 (MLflow's basic-auth app, a proxy) in one line, naming where MLflow reads
    credentials: MLflow's own error came as a traceback, once the data and the model were built. None for another error."""
    status = err.get_http_status_code() if hasattr(err, "get_http_status_code") else None
    if status == 401:
        return ConfigError(f"the MLflow tracking server {server_shown(uri)} asks for credentials (401): MLflow sends "
                           "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN; or unset "
                           "MLFLOW_TRACKING_URI to log to the project's mlruns/")
    if status == 403:
        return ConfigError(f"the MLflow tracking server {server_shown(uri)} refused the request (403): the credentials "
                           "MLflow sent (MLFLOW_TRACKING_USERNAME, or MLFLOW_TRACKING_TOKEN) lack the permission for the "
                           "experiment; ask the server's admin, or name another one")
    return None


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URL (an MLflow store, the review queue); None for any other URL."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def local_store_path(uri: str) -> Path | None:
    """The file or folder a local MLflow store lives in (`sqlite:///`, `file:` or a bare path); None for a server."""
    if uri.startswith("sqlite:///"):
        return sqlite_file(uri)
    if uri.startswith("file:"):
        return Path(urlsplit(uri).path)
    return None if "://" in uri or uri.startswith("databricks") else Path(uri)


def refuse_a_store_that_is_not_there(uri: str) -> None:
    """Reading a run or a registered model from a local store that does not exist is a mistyped path:
    MLflow would create an empty store there, then say the run or model is not found, and leave the
    empty store behind. A server is asked whether it answers."""
    refuse_a_silent_server(uri)
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise ConfigError(f"no MLflow store at {path}: nothing was ever logged there (check tracking_uri, "
                          "or MLFLOW_TRACKING_URI)")


def local_store(mlruns: str | Path | None = None) -> str:
    """The SQLite store under `mlruns` (default: the project's mlruns/)."""
    return f"sqlite:///{Path(mlruns or PROJECT_ROOT / 'mlruns') / 'mlflow.db'}"


def progress_bars_for_terminals_only() -> None:
    """MLflow draws a bar for every artifact transfer, about 100 updates each: right for a person at a terminal,
    noise in a log (a server's, a CI job's). With stderr not a terminal they are off, unless the user set
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR."""
    if not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


LOG_PROGRESS_EVERY_S = 30


def progress_bar(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm bar on stderr: live at a terminal. In a log (a job's, a CI's) it updates every
    `LOG_PROGRESS_EVERY_S` seconds: at tqdm's ten a second, an hour's catalogue job wrote megabytes of one
    line; every 30 s still tells a reader of the log where the job is."""
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, mininterval=0.1 if sys.stderr.isatty() else LOG_PROGRESS_EVERY_S, **kwargs)


def launch_time() -> str:
    """The date and time that name a run's output folder (conf/hydra/default.yaml). To the microsecond, so
    runs launched together (a shell loop, a SLURM array) each get their own. The processes of one
    distributed run must find the same folder: under torchrun each names it by torchrun's own start, which
    they share even when they start in different seconds; under a multi-task srun, to the second."""
    if "TORCHELASTIC_RUN_ID" in os.environ:   # set by torchrun, whose agent starts every local process
        return datetime.fromtimestamp(torchrun_start()).strftime("%Y-%m-%d/%H-%M-%S-%f")
    distributed = "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    return datetime.now().strftime("%Y-%m-%d/%H-%M-%S" if distributed else "%Y-%m-%d/%H-%M-%S-%f")


def torchrun_start() -> float:
    """When the torchrun agent above this process started: the nearest ancestor started without torchrun's
    variables (the agent itself; a `torchrun --no-python` wrapper script between them has them)."""
    import psutil

    process = psutil.Process(os.getppid())
    try:
        while "TORCHELASTIC_RUN_ID" in process.environ() and process.ppid() > 1:
            process = process.parent()
    except (psutil.AccessDenied, psutil.NoSuchProcess):   # another user's, or gone: the nearest one seen
        pass
    return process.create_time()


def metric_mode(metric: str) -> str:
    """Which way a monitored metric gets better, in Lightning's words: a loss down, accuracy, F1 and top-5 up.
    The checkpoint, early stopping, a sweep's best run and Optuna's direction all follow it: with a fixed
    "max", `optimized_metric=val/loss` kept the checkpoint of the highest loss as the best."""
    return "min" if str(metric).endswith("/loss") else "max"


def register_resolvers() -> None:
    """`${project_root:}` lets configs name repo-relative paths that survive Hydra's output dirs;
    `${tracking_uri:<mlruns>}` is the MLflow store, defined once here; `${launch_time:}` names output folders;
    `${metric_mode:<metric>}` is min or max (`${metric_direction:...}`: Optuna's minimize or maximize)."""
    if not OmegaConf.has_resolver("metric_mode"):
        OmegaConf.register_new_resolver("metric_mode", metric_mode)
    if not OmegaConf.has_resolver("metric_direction"):
        OmegaConf.register_new_resolver("metric_direction", lambda metric: f"{metric_mode(metric)}imize")
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("tracking_uri"):
        OmegaConf.register_new_resolver("tracking_uri", tracking_uri)
    if not OmegaConf.has_resolver("launch_time"):
        OmegaConf.register_new_resolver("launch_time", launch_time, use_cache=True)   # one value per process


class InputError(ValueError):
    """Input a run cannot use, named by where it is (a config key, a file): the tools report it in one line."""


class ConfigError(InputError):
    """A composed config with a key or value its class does not take; names the key."""


def validate_config(cfg: DictConfig | dict) -> None:
    """Check every `_target_` of this project's classes against its signature's types, before anything
    is built: `backbone.freeze=sometimes` fails naming `backbone.freeze` and the values it takes.

    Hydra already refuses unknown keys (struct mode); this adds the values (the `Literal`s, numbers,
    lists) without a second, hand-written schema that could drift from the classes.
    """
    from hydra.utils import get_object

    from fashion.validation import check_fields

    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    if isinstance(cfg, DictConfig) and keep_text_as_typed(cfg, container):
        container = OmegaConf.to_container(cfg, resolve=True)
    problems, checked = [], []
    for where, node in _target_nodes(container):
        if node in checked:  # data.labels repeats labels
            continue
        checked.append(node)
        given = {k: v for k, v in node.items() if not (k.startswith("_") and k.endswith("_"))}
        fields = {k: v for k, v in given.items() if not _has_target(v)}
        target = get_object(node["_target_"])
        try:
            checked_fields = check_fields(target, fields, where)
            if dataclasses.is_dataclass(target) and fields == given:   # nothing nested left out
                target(**checked_fields)   # a plain record: cheap, and its own checks (__post_init__) run now
        except ValueError as err:   # the dataclasses' checks name their key
            problems.append(str(err))
    problems += monitored_metric_problems(container) + direction_problems(container) + missing_file_problems(container) \
        + set_by_the_run_problems(container)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def keep_text_as_typed(cfg: DictConfig, container: dict) -> bool:
    """`data.root=2024` (a folder named by year) was refused as "not a valid string": Hydra reads the number.
    Where a class takes text, the command line's text is put back in `cfg` (`container`: it resolved), as the
    tools' keys get it. Returns whether anything was put back."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_object

    from fashion.validation import text_as_typed, text_parameters

    if not HydraConfig.initialized():   # composed in code: no command line
        return False
    nodes = _target_nodes(container)
    keys = {f"{where}.{name}" for where, node in nodes for name in text_parameters(get_object(node["_target_"]))}
    kept = text_as_typed(HydraConfig.get().overrides.task, {k: OmegaConf.select(cfg, k) for k in keys}, keys)
    for key, text in kept.items():
        OmegaConf.update(cfg, key, text)
    return bool(kept)


def without_password(url: str) -> str:
    """A database URL as printed (errors, logs): its password `***`; text that is not a URL as it is."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def missing_file_problems(container: dict) -> list[str]:
    """Local files a run reads only once its data is set up (`ckpt_path` at fit, after a feature-cache fill;
    `split.path` after styles.csv): a wrong path is named now instead."""
    split = container.get("split")
    named = {"ckpt_path": container.get("ckpt_path"), "split.path": split.get("path") if isinstance(split, dict) else None}
    local = {key: Path(path).expanduser() for key, path in named.items() if isinstance(path, str) and "://" not in path}
    problems = [f"{key}: no such file: {named[key]}" for key, path in local.items() if not path.is_file()]
    checkpoint = local.get("ckpt_path")
    if checkpoint is not None and checkpoint.is_file() and not zipfile.is_zipfile(checkpoint):
        # torch.save writes a zip archive: text, a cut file or another format is named here, not at fit
        problems.append(f"ckpt_path: {named['ckpt_path']} is not a PyTorch checkpoint (not a zip archive; cut short?)")
    return problems


def set_by_the_run_problems(container: dict) -> list[str]:
    """Keys the run sets itself when it builds the logger (`tracking.run.open_run`) and the Trainer (`training.fit`):
    given, they were dropped without a word."""
    ways = {"logger.run_id": "resume=<run id> continues an MLflow run", "logger.tags": "tags.<key>=<value> adds a run tag",
            "trainer.logger": "the logger group sets the MLflow logger", "trainer.callbacks": "callbacks.<name>={_target_: "
            "...} adds a callback, callbacks.<name>=null leaves one out"}
    given = [key for key in ways if isinstance(node := container.get(key.split(".")[0]), dict)
             and node.get(key.split(".")[1]) is not None]
    return [f"{key}: set by the run itself; {ways[key]}" for key in given]


def monitored_metrics(container: Mapping) -> dict[str, str]:
    """`optimized_metric`, and a callback's own `monitor` where one was given another metric, by config key."""
    metric = container.get("optimized_metric")
    found = {"optimized_metric": metric} if metric is not None else {}
    for name, node in (container.get("callbacks") or {}).items():
        if isinstance(node, Mapping) and node.get("monitor") not in (None, metric):
            found[f"callbacks.{name}.monitor"] = node["monitor"]
    return found


def monitored_metric_problems(container: dict) -> list[str]:
    """`optimized_metric` (and a callback's own `monitor`) must be a validation metric the run logs: the
    checkpoint and early-stopping callbacks find a misspelt one only after the first epoch, minutes or hours in."""
    labels = container.get("labels")
    attributes = (labels.get("attributes") or []) if isinstance(labels, dict) else []
    # What the training module logs at validation (fashion.metrics.AttributeMetrics, which the config stage may not
    # import): tests/test_configs.py checks that every metric it computes passes.
    known = {"val/loss", "val/mean_acc", "val/mean_f1", *(f"val/{a}/{m}" for a in attributes for m in ("acc", "f1", "top5"))}
    # A training metric is logged at the end of the training epoch, after the validation at which the callbacks look.
    return [f"{key}: {metric!r} is " + ("logged after the validation at which the callbacks look" if str(metric).startswith(
            "train/") else "not logged by this run") + "; it takes val/mean_acc, val/loss or val/<attribute>/acc|f1|top5 "
            f"with <attribute> one of {list(attributes)}"
            for key, metric in monitored_metrics(container).items() if attributes and metric not in known]


def direction_problems(container: dict) -> list[str]:
    """A mode or direction given against its metric's (`callbacks.model_checkpoint.mode=max` with `val/loss`)
    would keep the worst checkpoint as the best, without a word."""
    given = [(f"callbacks.{name}.mode", node["mode"], node["monitor"], "")
             for name, node in (container.get("callbacks") or {}).items()
             if isinstance(node, dict) and "mode" in node and isinstance(node.get("monitor"), str)]
    search, metric = container.get("hparams_search"), container.get("optimized_metric")
    if isinstance(search, dict) and "direction" in search and metric is not None:
        given.append(("hparams_search.direction", search["direction"], metric, "imize"))
    problems = []
    for key, value, monitored, suffix in given:
        if value != metric_mode(monitored) + suffix:
            better = "lower" if metric_mode(monitored) == "min" else "higher"
            problems.append(f"{key}={value}: {monitored} is better {better}, so {metric_mode(monitored)}{suffix} "
                            "(leave it out: it follows the metric)")
    return problems


def _has_target(value: Any) -> bool:
    """Nested objects (validated on their own) and lists of them."""
    if isinstance(value, dict):
        return "_target_" in value or any(_has_target(v) for v in value.values())
    return isinstance(value, list) and any(_has_target(v) for v in value)


def _target_nodes(node: Any, where: str = "") -> list[tuple[str, dict]]:
    found = []
    if isinstance(node, dict):
        if "_target_" in node:
            found.append((where, node))
        for key, value in node.items():
            found += _target_nodes(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _target_nodes(value, f"{where}[{index}]")
    return found


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for MLflow params, lists kept as one value so a sweep over them stays one column."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    flat: dict[str, Any] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


register_resolvers()
