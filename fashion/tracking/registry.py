"""Which model is live: the MLflow Model Registry, with the aliases `champion` (what serves) and
`challenger` (what is being evaluated to replace it).

A version is the pyfunc model fashion-export logs, so its artifacts hold the bundle folder and MLflow
links it to the training run it came from. Serving and promotion name a model as `models:/<name>@<alias>`
(or `models:/<name>/<version>`); `fetch_bundle` resolves that to a version and a local bundle folder,
downloaded once per version into a cache, so a restart or a reload of the same version reads no network.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fashion.config import progress_bars_for_terminals_only, refuse_a_store_that_is_not_there

if TYPE_CHECKING:   # MLflow loads on first use: fashion-promote's `--help` and a refused key answer without it
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

CHAMPION, CHALLENGER = "champion", "challenger"
PREFIX = "models:/"


@dataclass(frozen=True)
class RegisteredBundle:
    """A registry version made local: where its bundle lies and which version it is."""

    name: str
    version: str
    bundle: Path
    run_id: str | None

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"


def is_registry_uri(reference: str | Path) -> bool:
    return str(reference).startswith(PREFIX)


def check_names(name: str, aliases: dict[str, str | None], name_key: str = "name") -> None:
    """MLflow's own rules for a registered model's name and its aliases (`{key: alias}`), checked before a tool
    writes or scores anything: `register=my/model`, or `alias=v2` (reserved for versions), failed once the bundle
    and its pyfunc were written, in MLflow's traceback (the version then registered without its alias).

    MLflow has no public API for these rules: its private checks are used where this MLflow has them, and a
    check renamed or gone in another release is skipped (MLflow still applies its rules when registering),
    rather than failing every export and promotion with an AttributeError."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation

    def check(rule: str, key: str, value: str) -> None:
        try:
            getattr(validation, rule, lambda _: None)(value)
        except MlflowException as err:
            raise ValueError(f"{key}={value}: {err.message}") from None

    check("_validate_model_name", name_key, name)
    for key, alias in aliases.items():
        if alias is not None:
            check("_validate_model_alias_name", key, alias)
            check("_validate_model_alias_name_reserved", key, alias)


def register(model_uri: str, name: str, alias: str | None, tracking_uri: str) -> ModelVersion:
    """A new version of `name` from a logged pyfunc model (MLflow links its source run); `alias`
    (e.g. challenger) then points at it."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    version = mlflow.register_model(model_uri, name)
    if alias:
        registry_client(tracking_uri).set_registered_model_alias(name, alias, version.version)
    return version


def parse(reference: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` -> (name, alias, None); `models:/name/3` -> (name, None, "3")."""
    body = reference.removeprefix(PREFIX).strip("/")
    if "@" in body:
        name, alias = body.split("@", 1)
        if name and alias and "/" not in name:
            return name, alias, None
    elif body.count("/") == 1 and body.split("/")[1].isdigit():
        name, version = body.split("/")
        return name, None, version
    raise ValueError(f"{reference!r} is not a registry model: write models:/<name>@<alias> or models:/<name>/<version>")


def resolve(reference: str, tracking_uri: str) -> ModelVersion:
    """The version a registry reference names now (an alias moves; a number does not)."""
    name, alias, number = parse(reference)
    refuse_a_store_that_is_not_there(tracking_uri)
    client = registry_client(tracking_uri)
    return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)


def has_alias(name: str, alias: str, tracking_uri: str) -> bool:
    """Whether `alias` names a version of `name` yet: asked of the registered model, because a failed
    lookup's error code differs between stores and does not tell "no such alias" from "cannot fetch"."""
    return alias in registry_client(tracking_uri).get_registered_model(name).aliases


def fetch_bundle(reference: str, tracking_uri: str, cache: Path) -> RegisteredBundle:
    """The bundle folder of the version `reference` names now, downloaded into `cache` unless already there."""
    version = resolve(reference, tracking_uri)
    target = Path(cache) / version.name / str(version.version)
    if not (target / "MLmodel").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:   # a half download never looks complete
            local = Path(_download(version, tracking_uri, Path(scratch)))
            shutil.rmtree(target, ignore_errors=True)
            local.rename(target)
    bundle = bundle_in(target)
    if bundle is None:
        from fashion.inference.pyfunc import BUNDLE_ARTIFACT

        raise FileNotFoundError(f"{version.name} version {version.version} ({version.source}) is not a fashion tagger: "
                                f"its MLmodel names no '{BUNDLE_ARTIFACT}' artifact (was it logged by fashion-export?)")
    return RegisteredBundle(version.name, str(version.version), bundle, version.run_id)


def prune_cache(cache: Path, name: str, keep: set[str]) -> list[Path]:
    """Removes the downloaded versions of `name` not in `keep` (version numbers); returns what it removed.
    A server that reloads after every retraining would otherwise keep every version it ever served.
    Only finished downloads (a version number as folder name) are touched, never another process's scratch."""
    removed = []
    for folder in sorted((Path(cache) / name).glob("*")):
        if folder.is_dir() and folder.name.isdigit() and folder.name not in keep:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def bundle_in(model_dir: Path) -> Path | None:
    """The bundle folder of a downloaded pyfunc model, where its MLmodel says MLflow put it."""
    from mlflow.models import Model

    from fashion.inference.pyfunc import BUNDLE_ARTIFACT

    artifacts = Model.load(str(model_dir / "MLmodel")).flavors.get("python_function", {}).get("artifacts", {})
    path = artifacts.get(BUNDLE_ARTIFACT, {}).get("path")
    return model_dir / path if path and (model_dir / path).is_dir() else None


def _download(version: ModelVersion, tracking_uri: str, into: Path) -> str:
    import mlflow

    progress_bars_for_terminals_only()   # a server fetches versions: its log is no terminal
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.artifacts.download_artifacts(artifact_uri=f"{PREFIX}{version.name}/{version.version}", dst_path=str(into))


def set_alias(name: str, alias: str, version: str, tracking_uri: str) -> None:
    registry_client(tracking_uri).set_registered_model_alias(name, alias, version)


def registry_client(tracking_uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)
