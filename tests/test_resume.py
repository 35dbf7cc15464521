"""Resume after SIGKILL into the same MLflow run, and seeded determinism."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fashion.train import train
from tests.conftest import PROJECT_ROOT, tiny_overrides

pytestmark = pytest.mark.slow


def launch(args: list[str], cwd: Path, script: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    command = [sys.executable, *(script or ["-m", "fashion.train"]), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def recipe(tmp_path: Path, data_root: Path, experiment: str) -> list[str]:
    overrides = [o for o in tiny_overrides(tmp_path, data_root) if not o.startswith("paths.output_dir")]
    return overrides + [
        f"hydra.run.dir={tmp_path}/outputs/{experiment}-${{now:%H%M%S%f}}",
        f"logger.experiment_name={experiment}", "seed=7", "trainer.max_epochs=3", "trainer.limit_train_batches=3",
        "augmentation=light", "head=mlp", "head.dropout=0.3",
    ]


def only_run(client: MlflowClient, experiment: str):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def test_killed_run_resumes_into_the_same_mlflow_run_with_identical_results(tmp_path, kaggle_folder):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")

    straight = launch(recipe(tmp_path, kaggle_folder, "straight"), tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = launch(recipe(tmp_path, kaggle_folder, "resumed"), tmp_path, [str(PROJECT_ROOT / "tests" / "kill_after_first_checkpoint.py")])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    interrupted = only_run(client, "resumed")
    assert interrupted.info.status == "RUNNING"  # nobody could close it
    assert len(client.get_metric_history(interrupted.info.run_id, "val/gender/acc")) == 1  # epoch 0 only

    resumed = launch(recipe(tmp_path, kaggle_folder, "resumed") + ["resume=auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = only_run(client, "resumed")  # the same run, no second one
    assert run.info.run_id == interrupted.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_from"].endswith("last.ckpt")

    reference = only_run(client, "straight")
    # the killed epoch's train/loss_epoch is lost (Lightning logs it after saving the checkpoint);
    # the epochs trained after the resume match the uninterrupted run
    ours = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss_epoch")}
    theirs = {m.step: m.value for m in client.get_metric_history(reference.info.run_id, "train/loss_epoch")}
    assert len(ours) == 2 and ours == pytest.approx({s: theirs[s] for s in ours}, abs=1e-6)
    for key in ("val/gender/acc", "val/articleType/f1", "val/mean_acc", "val/loss"):
        ours = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        theirs = sorted((m.step, m.value) for m in client.get_metric_history(reference.info.run_id, key))
        assert [s for s, _ in ours] == [s for s, _ in theirs], key
        assert [v for _, v in ours] == pytest.approx([v for _, v in theirs], abs=1e-6), key
    test_keys = [k for k in reference.data.metrics if k.startswith("test/")]
    assert test_keys and {k: run.data.metrics[k] for k in test_keys} == pytest.approx(
        {k: reference.data.metrics[k] for k in test_keys})
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {steps}"


@pytest.mark.parametrize("randomness", [
    ["augmentation=strong"],
    # cached views are drawn from torch's global RNG, which the per-epoch seeding resets
    ["augmentation=flip", "backbone.freeze=partial", "backbone.trainable_stages=1"],
], ids=["random_steps", "cached_views"])
def test_seeded_deterministic_runs_are_identical(tmp_path, kaggle_folder, compose_config, randomness):
    results = []
    for attempt in ("a", "b"):
        cfg = compose_config(tiny_overrides(tmp_path / attempt, kaggle_folder) + [
            "seed=3", "trainer.deterministic=true", "trainer.max_epochs=2", "head.dropout=0.5", *randomness])
        results.append({k: v for k, v in train(cfg).items() if not k.startswith("time/")})
    assert results[0] == results[1]
    assert results[0]["test/mean_acc"] > 0


def test_resume_of_unknown_run_is_a_clear_error(tmp_path, kaggle_folder, compose_config):
    from fashion.config import ConfigError

    cfg = compose_config(tiny_overrides(tmp_path, kaggle_folder) + ["resume=0123456789abcdef"])
    with pytest.raises(ConfigError, match="resume=0123456789abcdef: no such run in sqlite:///"):
        train(cfg)


def test_resuming_a_named_run_under_another_config_is_refused_naming_the_keys(tmp_path, kaggle_folder, compose_config, caplog):
    """A resumed run keeps the params it logged first: continued under another config (lr 3e-3 instead of
    1e-3, more epochs) its MLflow run described a model it did not train. Now the keys that differ are named.
    Continued under other library versions it is not refused (an upgrade between a crash and its resume is a
    user's call), but said, and the run keeps the versions it started with."""
    from fashion.config import ConfigError

    base = tiny_overrides(tmp_path, kaggle_folder) + ["optimizer.lr=1e-3"]
    train(compose_config(base))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run_id = client.search_runs(["1"])[0].info.run_id
    client.set_tag(run_id, "version.timm", "0.9.0")   # as if it started before an upgrade, on another machine
    client.set_tag(run_id, "hardware", "CPU (Other, AVX2), 2 threads on 2 cores")
    changed = compose_config([*base[:-1], "optimizer.lr=3e-3", "trainer.max_epochs=2", f"resume={run_id}"])
    with pytest.raises(ConfigError, match=rf"resume={run_id}: that run was trained with another config "
                                          r"\(optimizer.lr: 0.001 -> 0.003; trainer.max_epochs: 1 -> 2\)"):
        train(changed)
    train(compose_config([*base, f"resume={run_id}"]))   # its own config passes, and continues the same run
    assert [r.info.run_id for r in client.search_runs(["1"])] == [run_id]
    import timm
    assert f"on other hardware or library versions than it started with (timm 0.9.0 -> {timm.__version__}, " in caplog.text
    assert "hardware CPU (Other, AVX2), 2 threads on 2 cores -> CPU (" in caplog.text
    assert client.get_run(run_id).data.tags["version.timm"] == "0.9.0"
