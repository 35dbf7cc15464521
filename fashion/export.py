"""`fashion-export`: a training run (MLflow run id) or a checkpoint -> a model bundle folder.

    fashion-export run_id=3f2a... output=bundles/best          # best checkpoint of that run
    fashion-export checkpoint=outputs/.../best.ckpt output=bundles/x
    fashion-export run_id=3f2a... output=bundles/v2 register=tagger       # + a registry version, alias challenger

The bundle (see fashion/inference/bundle.py) is also logged to MLflow as a pyfunc model, to the
training run itself when it came from one, so `mlflow models serve -m runs:/<id>/tagger` works. Keys: conf/export.yaml.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from fashion.cli import Refused, UsageError, tool_config
from fashion.config import progress_bars_for_terminals_only, refuse_a_store_that_is_not_there, refused_credentials, server_shown
from fashion.tracking.environment import environment_tags

if TYPE_CHECKING:   # MLflow and torch load once the command line is read: `--help` and a refused key answer at once
    from mlflow.tracking import MlflowClient

    from fashion.inference.checkpoint import TrainedModel


def checkpoint_of_run(client: MlflowClient, run_id: str, workdir: Path) -> Path:
    run = client.get_run(run_id)  # an unknown id: MlflowException, which export_cli turns into one line
    artifact = run.data.tags.get("best_checkpoint")
    if not artifact:
        raise ValueError(f"run {run_id} logged no checkpoint (tag best_checkpoint missing): did it finish fitting?")
    return Path(client.download_artifacts(run_id, artifact, str(workdir)))


def run_manifest(client: MlflowClient, run_id: str) -> dict:
    run = client.get_run(run_id)
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith(("test/", "val/", "best/"))}
    return {
        "source": {"mlflow_run_id": run_id, "experiment_id": run.info.experiment_id, "tracking_uri": client.tracking_uri},
        "dataset_fingerprint": run.data.tags.get("dataset.fingerprint"),
        "dataset_root": run.data.tags.get("dataset.root"),
        "git_commit": run.data.tags.get("mlflow.source.git.commit"),
        # what the numbers depended on, carried where the run's store may not go (a serving image)
        "trained_on": environment_tags(run.data.tags),
        "metrics": metrics,
    }


def export(run_id: str | None, checkpoint: str | None, output: Path, tracking_uri: str, onnx: bool = True,
           log_to_mlflow: bool = True, overwrite: bool = False) -> tuple[Path, str | None]:
    """Returns (bundle folder, pyfunc model URI or None)."""
    from mlflow.tracking import MlflowClient

    from fashion.inference.bundle import export_bundle, refuse_occupied
    from fashion.inference.checkpoint import load_checkpoint

    if (run_id is None) == (checkpoint is None):
        raise ValueError("give exactly one of --run-id or --checkpoint")
    refuse_occupied(output, overwrite)   # before a checkpoint is downloaded
    if run_id:
        refuse_a_store_that_is_not_there(tracking_uri)
    client = MlflowClient(tracking_uri) if run_id else None   # opening a store creates it: only for a run's export
    with tempfile.TemporaryDirectory() as workdir:
        path = checkpoint_of_run(client, run_id, Path(workdir)) if client else Path(checkpoint)
        trained: TrainedModel = load_checkpoint(path)
        manifest = run_manifest(client, run_id) if client else {"source": {"checkpoint": str(path)}}
        bundle = export_bundle(trained, output, manifest, onnx=onnx, overwrite=overwrite)
    model_uri = None
    if log_to_mlflow:
        import mlflow

        from fashion.inference.pyfunc import log_pyfunc
        from fashion.tracking import ensure_experiment

        mlflow.set_tracking_uri(tracking_uri)
        if run_id is None:
            mlflow.set_experiment(experiment_id=ensure_experiment(tracking_uri, "fashion", None))
        model_uri = log_pyfunc(bundle, run_id=run_id)
    return bundle, model_uri


def main(argv: list[str] | None = None) -> None:
    cfg = tool_config("fashion-export", "export", sys.argv[1:] if argv is None else argv, export_cli)
    export_cli(**cfg)


def export_cli(output: str, run_id: str | None = None, checkpoint: str | None = None, onnx: bool = True,
               mlflow: bool = True, tracking_uri: str | None = None, register: str | None = None,
               alias: str | None = "challenger", overwrite: bool = False) -> None:
    """Writes the bundle folder and prints where it is, how to serve its pyfunc model, and its registry version."""
    from mlflow.exceptions import MlflowException

    from fashion.tracking.registry import check_names

    if register and not mlflow:
        raise UsageError("fashion-export", "register= needs mlflow=true (the registry holds the logged pyfunc model)")
    if register:
        try:
            check_names(register, {"alias": alias}, "register")
        except ValueError as err:
            raise UsageError("fashion-export", str(err)) from None
    progress_bars_for_terminals_only()   # it downloads the run's checkpoint and, logging the pyfunc, the model
    try:
        bundle, model_uri = export(run_id, checkpoint, Path(output), tracking_uri, onnx, mlflow, overwrite)
    except (ValueError, OSError) as err:  # no or two sources, a refused checkpoint, a run without one
        raise Refused("fashion-export", str(err)) from None
    except MlflowException as err:   # an unknown run id, a store that cannot be read, credentials it refuses
        said = refused_credentials(tracking_uri, err) or f"{err.message} (tracking store {server_shown(tracking_uri)})"
        raise Refused("fashion-export", str(said)) from None
    print(f"bundle: {bundle}")
    if model_uri:
        print(f"pyfunc model: {model_uri}\n  serve with: mlflow models serve -m {model_uri} --env-manager local")
    if register and model_uri:
        from fashion.tracking.registry import register as register_version

        version = register_version(model_uri, register, alias, tracking_uri)
        where = f"models:/{register}@{alias}" if alias else f"models:/{register}/{version.version}"
        print(f"registered: {register} version {version.version}{f' (alias {alias})' if alias else ''}\n"
              f"  serve with: fashion-serve bundle={where}")


if __name__ == "__main__":
    main()
