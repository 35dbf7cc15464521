"""A short real run end to end: fit, validate, test, and what lands in MLflow."""

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fashion.train import train
from tests.conftest import tiny_overrides


def runs_of(tmp_path: Path, experiment: str = "fashion"):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    return mlflow.search_runs(experiment_names=[experiment])


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_one_batch_fit_validate_test_is_logged_to_mlflow(tmp_path, kaggle_folder, compose_config):
    cfg = compose_config(tiny_overrides(tmp_path, kaggle_folder) + ["trainer.limit_train_batches=1", "head=linear"])
    metrics = train(cfg)
    attributes = list(cfg.labels.attributes)
    for a in attributes:
        assert f"test/{a}/acc" in metrics and f"val/{a}/f1" in metrics
    assert "test/articleType/top5" not in metrics  # 3 classes: no top-5
    assert 0.0 <= metrics["best/val/mean_acc"] <= 1.0

    runs = runs_of(tmp_path)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED"
    assert run["params.backbone.name"] == "test_efficientnet"
    assert run["params.head._target_"] == "fashion.models.LinearHeads"
    assert run["params.optimizer.lr"] == "0.003"
    for a in attributes:
        assert f"metrics.val/{a}/acc" in runs.columns and f"metrics.test/{a}/f1" in runs.columns
    assert run["metrics.data/missing_images"] == 0 and run["metrics.data/split_size/train"] > 0
    assert len(run["tags.dataset.fingerprint"]) == 64

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    history = client.get_metric_history(run["run_id"], "val/gender/acc")
    assert len(history) == 1  # one epoch, one value
    paths = artifact_paths(client, run["run_id"])
    for expected in ["config.yaml", "data/vocabularies.json", "data/data_report.json", "data/split.csv",
                     "test/confusion_articleType.png", "test/report_gender.csv"]:
        assert expected in paths
    assert any(p.startswith("checkpoints/") and p.endswith(".ckpt") for p in paths)
    assert str(tmp_path / "mlruns" / "artifacts") in client.get_run(run["run_id"]).info.artifact_uri
    saved_split = pd.read_csv(tmp_path / "out" / "split.csv")  # ready for split.path=...
    assert set(saved_split["split"]) == {"train", "val", "test"} and len(saved_split) == 48


def test_each_epoch_logs_per_attribute_metrics(tmp_path, kaggle_folder, compose_config):
    cfg = compose_config(tiny_overrides(tmp_path, kaggle_folder) + ["trainer.max_epochs=2", "test=false", "loss_weighting=dwa"])
    train(cfg)
    run = runs_of(tmp_path).iloc[0]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert len(client.get_metric_history(run["run_id"], "val/articleType/acc")) == 2
    assert len(client.get_metric_history(run["run_id"], "loss_weight/gender")) == 2


def test_a_failing_run_is_marked_failed_and_keeps_what_it_logged(tmp_path, kaggle_folder, compose_config):
    cfg = compose_config(tiny_overrides(tmp_path, kaggle_folder) + ["trainer.max_epochs=1"])
    cfg.trainer.limit_train_batches = 1
    # a scheduler factory that raises once Lightning asks for it, i.e. after the run has started logging
    cfg.scheduler = {"_target_": "tests.test_train.broken_scheduler", "_partial_": True}
    with pytest.raises(RuntimeError, match="scheduler exploded"):
        train(cfg)
    run = runs_of(tmp_path).iloc[0]
    assert run["status"] == "FAILED"
    assert run["params.backbone.name"] == "test_efficientnet"  # logged before the failure, still there


def broken_scheduler(optimizer, total_steps):
    raise RuntimeError("scheduler exploded")


def test_weight_ema_is_one_override_away(tmp_path, kaggle_folder, compose_config):
    ema = "callbacks.ema={_target_: fashion.training.callbacks.EMAWeights, decay: 0.9}"
    cfg = compose_config(tiny_overrides(tmp_path, kaggle_folder) + ["trainer.limit_train_batches=2", ema])
    metrics = train(cfg)
    assert "test/articleType/acc" in metrics
    assert runs_of(tmp_path).iloc[0]["params.callbacks.ema._target_"] == "fashion.training.callbacks.EMAWeights"
