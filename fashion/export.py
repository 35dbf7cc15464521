"""`fashion-export`: a training run (MLflow run id) or a checkpoint -> a model bundle folder.

    fashion-export --run-id 3f2a... --output bundles/best          # best checkpoint of that run
    fashion-export --checkpoint outputs/.../best.ckpt --output bundles/x

The bundle (see fashion/inference/bundle.py) is also logged to MLflow as a pyfunc model, to the
training run itself when it came from one, so `mlflow models serve -m runs:/<id>/tagger` works.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from fashion.config import PROJECT_ROOT
from fashion.inference.bundle import export_bundle
from fashion.inference.checkpoint import TrainedModel, load_checkpoint

DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"


def checkpoint_of_run(client: MlflowClient, run_id: str, workdir: Path) -> Path:
    run = client.get_run(run_id)  # raises a clear MlflowException for an unknown id
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
        "metrics": metrics,
    }


def export(run_id: str | None, checkpoint: str | None, output: Path, tracking_uri: str, onnx: bool = True,
           log_to_mlflow: bool = True) -> tuple[Path, str | None]:
    """Returns (bundle folder, pyfunc model URI or None)."""
    if (run_id is None) == (checkpoint is None):
        raise ValueError("give exactly one of --run-id or --checkpoint")
    client = MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory() as workdir:
        path = checkpoint_of_run(client, run_id, Path(workdir)) if run_id else Path(checkpoint)
        trained: TrainedModel = load_checkpoint(path)
        manifest = run_manifest(client, run_id) if run_id else {"source": {"checkpoint": str(path)}}
        bundle = export_bundle(trained, output, manifest, onnx=onnx)
    model_uri = None
    if log_to_mlflow:
        import mlflow

        from fashion.inference.pyfunc import log_pyfunc
        from fashion.training.tracking import ensure_experiment

        mlflow.set_tracking_uri(tracking_uri)
        if run_id is None:
            mlflow.set_experiment(experiment_id=ensure_experiment(tracking_uri, "fashion", None))
        model_uri = log_pyfunc(bundle, run_id=run_id)
    return bundle, model_uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-id", help="MLflow run of fashion-train (its best checkpoint is exported)")
    source.add_argument("--checkpoint", help="a Lightning checkpoint written by fashion-train")
    parser.add_argument("--output", type=Path, required=True, help="bundle folder to write")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX model")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log a pyfunc model")
    args = parser.parse_args()
    bundle, model_uri = export(args.run_id, args.checkpoint, args.output, args.tracking_uri, not args.no_onnx, not args.no_mlflow)
    print(f"bundle: {bundle}")
    if model_uri:
        print(f"pyfunc model: {model_uri}\n  serve with: mlflow models serve -m {model_uri} --env-manager local")


if __name__ == "__main__":
    main()
