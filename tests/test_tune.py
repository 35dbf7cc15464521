"""Optuna sweeps through the CLI, and the cluster launcher configs."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from fashion.config import CONFIG_DIR, ConfigError
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow


def tune_cli(tmp_path: Path, data_root: Path, extra: list[str]) -> subprocess.CompletedProcess:
    overrides = [o for o in tiny_overrides(tmp_path, data_root) if not o.startswith("paths.output_dir")]
    overrides += [
        f"hydra.run.dir={tmp_path}/outputs", "hparams_search=optuna", "hparams_search.study_name=t",
        f"hparams_search.storage=sqlite:///{tmp_path}/optuna.db",
        f"hparams_search.best_experiment_file={tmp_path}/conf/experiment/tuned_t.yaml",
        "trainer.max_epochs=2",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run([sys.executable, "-m", "fashion.train", *overrides, *extra], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_optuna_study_is_resumable_prunes_and_writes_a_ready_experiment(tmp_path, kaggle_folder):
    first = tune_cli(tmp_path, kaggle_folder, ["hparams_search.n_trials=2"])
    # outside the configs in use, the recipe needs its folder on Hydra's search path (the compose below does so)
    assert f"rerun with  fashion-train --config-dir {tmp_path}/conf experiment=tuned_t" in first.stdout
    # a second launch continues the same study; this pruner stops every trial at its first report
    tune_cli(tmp_path, kaggle_folder, ["hparams_search.n_trials=1", "~hparams_search.pruner",
                                       "+hparams_search.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 2.0}"])

    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/optuna.db")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    assert states.count(optuna.trial.TrialState.PRUNED) == 1
    assert set(study.best_trial.params) == {"optimizer.lr", "module.backbone_lr_scale", "backbone.freeze", "head",
                                            "loss_weighting", "augmentation"}

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("fashion").experiment_id], "tags.sweep = 't'")
    assert len(runs) == 3
    by_trial = {r.data.tags["optuna_trial"]: r for r in runs}
    assert set(by_trial) == {"0", "1", "2"}
    assert by_trial["2"].data.tags["optuna.state"] == "pruned" and by_trial["2"].info.status == "KILLED"
    assert {by_trial["0"].info.status, by_trial["1"].info.status} == {"FINISHED"}
    best_run = by_trial[str(study.best_trial.number)]
    assert float(best_run.data.params["optimizer.lr"]) == pytest.approx(study.best_trial.params["optimizer.lr"])
    # each launch is one parent run with its trials nested under it; the first one names the best trial
    parents = client.search_runs([client.get_experiment_by_name("fashion").experiment_id],
                                 "attributes.run_name = 'optuna t'", order_by=["attributes.start_time ASC"])
    assert len(parents) == 2 and {p.data.tags["run_type"] for p in parents} == {"sweep"}
    assert {by_trial[n].data.tags["mlflow.parentRunId"] for n in ("0", "1")} == {parents[0].info.run_id}
    assert by_trial["2"].data.tags["mlflow.parentRunId"] == parents[1].info.run_id
    assert parents[0].data.tags["best_run_id"] == best_run.info.run_id
    assert by_trial["0"].info.run_name.startswith("trial 0 · ") and "optimizer.lr=" in by_trial["0"].info.run_name

    written = tmp_path / "conf" / "experiment" / "tuned_t.yaml"
    content = yaml.safe_load(written.read_text())
    assert {"override /head": study.best_trial.params["head"]} in content["defaults"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=tuned_t", f"hydra.searchpath=[file://{tmp_path}/conf]"])
    assert cfg.optimizer.lr == pytest.approx(study.best_trial.params["optimizer.lr"])
    assert cfg.head._target_.endswith("LinearHeads" if study.best_trial.params["head"] == "linear" else "MLPHeads")
    # the recipe alone trains as the best trial did: the launch's command line too (it held the searched keys only,
    # and was rerun on the default data, backbone and epochs)
    launched = [o for o in tiny_overrides(tmp_path, kaggle_folder) if not o.startswith("paths.")] + ["trainer.max_epochs=2"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        trial = compose("train", overrides=[*launched, *(f"{k}={v}" for k, v in study.best_trial.params.items())])
    assert without_paths(cfg) == without_paths(trial) and cfg.data.root == str(kaggle_folder)


def without_paths(cfg) -> dict:
    return {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "paths"}


@pytest.mark.parametrize("launcher,target", [("slurm", "SlurmLauncher"), ("local_parallel", "JoblibLauncher")])
def test_cluster_launchers_compose(launcher, target):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.tasks_per_node == 1 and cfg.hydra.launcher.timeout_min == 240


def tune_in_process(tmp_path: Path, data_root: Path, extra: list[str], refused: type[BaseException] | None,
                    match: str | None = None) -> None:
    """fashion.tune.tune on the tiny config plus `extra`, as Hydra would call it; it must raise `refused`
    (None: it must not raise)."""
    import fashion.tune
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    overrides = tiny_overrides(tmp_path, data_root) + ["hparams_search=optuna", "hparams_search.study_name=t",
                                                      f"hparams_search.storage=sqlite:///{tmp_path}/optuna.db", *extra]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):   # as Hydra gives a job its config: without the `hydra` node
            del cfg["hydra"]
        try:
            if refused is None:
                fashion.tune.tune(cfg)
                return
            with pytest.raises(refused, match=match):
                fashion.tune.tune(cfg)
        finally:
            HydraConfig.instance().cfg = None


def sweep_run_status(tmp_path: Path) -> str:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [parent] = client.search_runs([client.get_experiment_by_name("fashion").experiment_id], "attributes.run_name = 'optuna t'")
    return parent.info.status


@pytest.mark.parametrize("stop,status", [(KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")])
def test_a_study_stopped_by_ctrl_c_ends_killed_and_one_that_crashed_failed(stop, status, tmp_path, kaggle_folder, monkeypatch):
    """The study's parent run ends as the trial it stopped in does: Ctrl-C is KILLED, a crash FAILED."""
    import fashion.training.fit

    def stopped(*args, **kwargs):
        raise stop("stopped in trial 0")

    monkeypatch.setattr(fashion.training.fit, "train", stopped)
    tune_in_process(tmp_path, kaggle_folder, [], stop)
    assert sweep_run_status(tmp_path) == status
    assert "FASHION_SWEEP_RUN_ID" not in os.environ   # later runs of this process are not nested under it


def test_a_trial_whose_loss_diverged_fails_and_the_study_goes_on(tmp_path, kaggle_folder, monkeypatch):
    """A learning rate high enough to diverge is a point of the search, not the end of it: optimize() stops at
    the first exception it was not told to catch."""
    import fashion.training.fit
    from fashion.training.module import TrainingDiverged

    def train(cfg, **kwargs):
        if optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/optuna.db").trials[-1].number == 0:
            raise TrainingDiverged("the training loss diverged in epoch 1 (gender nan)")
        return {"val/mean_acc": 0.5}

    monkeypatch.setattr(fashion.training.fit, "train", train)
    tune_in_process(tmp_path, kaggle_folder, ["hparams_search.n_trials=2",
                                              f"hparams_search.best_experiment_file={tmp_path}/experiment/tuned_t.yaml"], None)
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert sweep_run_status(tmp_path) == "FINISHED"


def test_a_tracking_server_that_does_not_answer_stops_the_launch_before_the_study_is_stored(tmp_path, kaggle_folder, monkeypatch):
    """The study was created first, so a launch refused for its tracking server still left a study behind."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as listener:   # bound, then closed: a connection there is refused
        listener.bind(("127.0.0.1", 0))
        silent = f"http://127.0.0.1:{listener.getsockname()[1]}"
    tune_in_process(tmp_path, kaggle_folder, [f"logger.tracking_uri={silent}"], ConfigError, "does not answer")
    assert not (tmp_path / "optuna.db").exists()


def test_a_search_optuna_would_run_as_nothing_or_refuse_in_a_traceback_is_named_before_the_study(tmp_path, kaggle_folder):
    """`n_trials=-1` and `timeout=-5` ran no trial and exit 0 ("no completed trial"); `direction=up` and a
    categorical key without choices were Optuna's tracebacks, a malformed key's only in its trial."""
    for extra, match in ((["hparams_search.n_trials=-1"], r"hparams_search.n_trials: Input should be greater than or equal to 0"),
                         (["hparams_search.timeout=-5"], r"hparams_search.timeout: Input should be greater than 0"),
                         (["hparams_search.direction=up"], r"hparams_search.direction=up: val/mean_acc is better higher, so maximize"),
                         (["~hparams_search.params.head", "+hparams_search.params.head={type: categorical}"],
                          r"hparams_search.params.head: Value error, a categorical key needs choices"),
                         (["hparams_search.params.augmentation.type=floaty"],
                          r"hparams_search.params.augmentation.type: Input should be 'float', 'int' or 'categorical'"),
                         (["+hparams_search.params.seed={type: int, low: 9, high: 1}"],
                          r"hparams_search.params.seed: Value error, a int key needs low <= high"),
                         # written after the whole study, with a "rerun with" that named a file Hydra cannot find
                         ([f"hparams_search.best_experiment_file={tmp_path}/tuned.yaml"],
                          r"hparams_search.best_experiment_file: Value error, .* is no recipe `experiment=<name>` can find")):
        tune_in_process(tmp_path, kaggle_folder, extra, ConfigError, match)
        assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlruns").exists()


def test_a_study_storage_that_cannot_be_opened_is_named_and_ends_the_sweep_run_failed(tmp_path, kaggle_folder):
    """It was sqlalchemy's traceback under Hydra's "Error executing job"."""
    storage = f"sqlite:///{tmp_path}/no/such/folder/optuna.db"
    tune_in_process(tmp_path, kaggle_folder, [f"hparams_search.storage={storage}"], ConfigError,
                    rf"hparams_search.storage={storage}: cannot open the study there \(unable to open database file\)")
    assert sweep_run_status(tmp_path) == "FAILED"


def test_a_study_continued_on_another_metric_or_direction_is_refused(tmp_path, compose_config):
    """Optuna continues a stored study with the direction it was created with: relaunched (same study name) with
    `optimized_metric=val/loss`, a val/mean_acc study ranked losses as accuracies and named the worst trial best."""
    import re

    from fashion.tune import open_study

    storage = f"sqlite:///{tmp_path}/optuna.db"

    def search(metric: str, name: str = "fashion"):
        return compose_config(["hparams_search=optuna", f"optimized_metric={metric}", f"hparams_search.storage={storage}",
                               f"hparams_search.study_name={name}", f"paths.output_dir={tmp_path}"]).hparams_search

    assert open_study(search("val/mean_acc"), "val/mean_acc").user_attrs["optimized_metric"] == "val/mean_acc"
    open_study(search("val/mean_acc"), "val/mean_acc")   # continued on its own metric
    for metric, direction in (("val/loss", "minimize"), ("val/gender/acc", "maximize")):
        with pytest.raises(ConfigError, match=re.escape(
                f"hparams_search.study_name=fashion: that study ({storage}) optimizes val/mean_acc, not {metric} "
                f"({direction}): give another hparams_search.study_name, or optimized_metric=val/mean_acc to continue it")):
            open_study(search(metric), metric)
    assert open_study(search("val/loss", "losses"), "val/loss").direction == optuna.study.StudyDirection.MINIMIZE
    optuna.create_study(study_name="older", storage=storage, direction="maximize")   # stored without its metric
    with pytest.raises(ConfigError, match=re.escape("that study (" + storage + ") maximizes its metric, not val/loss (minimize)")):
        open_study(search("val/loss", "older"), "val/loss")
    assert open_study(search("val/mean_acc", "older"), "val/mean_acc").user_attrs["optimized_metric"] == "val/mean_acc"


def test_a_study_storage_is_named_without_its_password(tmp_path, compose_config):
    from fashion.tune import open_study

    storage = "postgresql+psycopg://fashion:s3cret@127.0.0.1:1/studies"   # nothing listens on port 1
    search = compose_config(["hparams_search=optuna", f"hparams_search.storage={storage}",
                             f"paths.output_dir={tmp_path}"]).hparams_search
    with pytest.raises(ConfigError, match=r"hparams_search.storage=postgresql\+psycopg://fashion:\*\*\*@127.0.0.1:1/studies: "
                                          "cannot open the study there") as refused:
        open_study(search, "val/mean_acc")
    assert "s3cret" not in str(refused.value) and "\n" not in str(refused.value)   # and said in one line


def test_a_recipe_written_among_the_configs_reruns_by_its_name():
    from fashion.tune import rerun_command

    assert rerun_command(CONFIG_DIR / "experiment" / "tuned_fashion.yaml") == "fashion-train experiment=tuned_fashion"


@pytest.mark.parametrize("overrides", [
    ["~scheduler", "head=linear", "optimizer.lr=0.003"],                  # a group removed, one chosen, a key
    ["callbacks.early_stopping=null", "+tags.owner=me", "trainer=gpu", "data=subset"],
    ["experiment=linear_probe", "data=catalogue", "labels.min_count=3",   # a recipe, and a key it did not have
     "+extra_features.colour={_target_:fashion.models.ColourHistogram,bins:8,size:64}"]])
def test_a_written_recipe_composes_as_its_command_line_did(overrides, tmp_path):
    from fashion.tune import experiment_yaml

    (tmp_path / "experiment").mkdir()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        (tmp_path / "experiment" / "tuned.yaml").write_text(experiment_yaml(overrides, "s", 0.5))
        rerun = compose("train", overrides=["experiment=tuned", f"hydra.searchpath=[file://{tmp_path}]"])
        assert without_paths(rerun) == without_paths(compose("train", overrides=overrides))
