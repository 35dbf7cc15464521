"""A short real run end to end: fit, validate, test, and what lands in MLflow."""

import platform
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from fashion.train import train
from fashion.training.module import TrainingDiverged
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
                     "test/confusion_articleType.png", "test/report_gender.csv", "test/confusions_articleType.csv"]:
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


def test_turning_the_progress_bar_off_is_one_key(tmp_path, kaggle_folder, compose_config):
    """`trainer.enable_progress_bar=false` alone: the default progress-bar callback is left out, not refused."""
    overrides = [o for o in tiny_overrides(tmp_path, kaggle_folder) if o != "callbacks.progress_bar=null"]
    cfg = compose_config(overrides + ["trainer.enable_progress_bar=false", "trainer.limit_train_batches=1", "test=false"])
    assert cfg.callbacks.progress_bar is not None
    assert "val/gender/acc" in train(cfg)


@pytest.mark.parametrize("override", ["trainer.precision=bf16-true", "trainer.precision=64-true", "trainer.fast_dev_run=true"])
def test_lightnings_other_precisions_and_fast_dev_run_run_to_the_end(override, tmp_path, kaggle_folder, compose_config):
    """A `*-true` precision puts the weights in its type: the calibration pass fed them float32 and failed, after
    training. `fast_dev_run` tested a "best" checkpoint Lightning never keeps there, and its run stayed RUNNING."""
    cfg = compose_config(tiny_overrides(tmp_path, kaggle_folder) + [override, "trainer.limit_train_batches=1"])
    metrics = train(cfg)
    assert 0.0 <= metrics["test/mean_acc"] <= 1.0
    assert runs_of(tmp_path).iloc[0]["status"] == "FINISHED"


def test_a_run_whose_loss_diverged_stops_failed_and_says_what_to_change(tmp_path, kaggle_folder, compose_config):
    """16-true on CPU: AdamW's eps is 0 in half precision, so the first step makes the weights NaN. The run
    went on FINISHED, and its bundle tagged every photo with confidence NaN."""
    cfg = compose_config(tiny_overrides(tmp_path, kaggle_folder) + ["trainer.precision=16-true", "trainer.max_epochs=3"])
    with pytest.raises(TrainingDiverged, match=r"loss diverged in epoch \d \(gender nan, .*\): lower optimizer.lr or set "
                                               r"trainer.gradient_clip_val; trainer.precision=16-true keeps the weights"):
        train(cfg)
    assert runs_of(tmp_path).iloc[0]["status"] == "FAILED"


def test_a_checkpoint_of_another_head_is_refused_before_the_run_opens(tmp_path, kaggle_folder, compose_config):
    """`ckpt_path=` of a linear-head run into an MLP-head config was a page of torch's "Missing key(s) ...
    size mismatch" once the data was set up, in a FAILED MLflow run."""
    from fashion.config import ConfigError

    overrides = tiny_overrides(tmp_path, kaggle_folder) + ["trainer.limit_train_batches=1", "test=false"]
    train(compose_config(overrides + ["head=linear"]))
    checkpoint = tmp_path / "out" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"ckpt_path: its weights do not fit the model this config builds: \d+ tensor\(s\) "
                                          r"missing from it \(first model\.heads\..*; \d+ tensor\(s\) of another shape"):
        train(compose_config(overrides + ["head=mlp", f"ckpt_path={checkpoint}"]))
    assert len(runs_of(tmp_path)) == 1   # only the first run's
    # as Lightning loads it: a checkpoint from before calibration, without temperatures, still starts a run
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    del saved["state_dict"]["model.temperature"]
    torch.save(saved, checkpoint)
    train(compose_config(overrides + ["head=linear", f"ckpt_path={checkpoint}"]))
    assert len(runs_of(tmp_path)) == 2


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


def test_a_tool_run_is_tagged_like_a_training_run_and_fails_as_one(tmp_path, monkeypatch):
    """Evaluation, data-report and promotion runs go through fashion.tracking too: the same store layout,
    experiment kind and commit tags as training, and an error ends the run FAILED, not RUNNING forever."""
    import fashion.tracking.run as tracking
    from fashion.tracking.run import EXPERIMENT_KIND, tool_run

    monkeypatch.setattr(tracking, "git_commit", lambda: {"mlflow.source.git.commit": "abc123", "git.dirty": "False"})
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    with pytest.raises(RuntimeError, match="evaluation exploded"):
        with tool_run(uri, "fashion", "eval photos", "evaluation", {"eval.data": "photos"}):
            mlflow.log_metric("eval/gender/acc", 0.5)
            raise RuntimeError("evaluation exploded")
    run = runs_of(tmp_path).iloc[0]
    assert (run["status"], run["tags.run_type"], run["tags.eval.data"]) == ("FAILED", "evaluation", "photos")
    assert run["tags.mlflow.runName"] == "eval photos" and run["metrics.eval/gender/acc"] == 0.5
    assert (run["tags.mlflow.source.git.commit"], run["tags.git.dirty"]) == ("abc123", "False")
    experiment = MlflowClient(uri).get_experiment_by_name("fashion")
    assert experiment.tags[EXPERIMENT_KIND] == "custom_model_development"
    assert Path(experiment.artifact_location) == (tmp_path / "mlruns" / "artifacts").resolve()


def test_monitoring_a_top5_that_a_small_head_never_logs_is_refused_before_the_run(tmp_path, kaggle_folder, compose_config):
    """The config check passes val/gender/top5 (it cannot know the head sizes); the checkpoint callback
    failed on it only after the first epoch. Now the run refuses it once the labels give the sizes."""
    from fashion.config import ConfigError

    for key in ("optimized_metric", "callbacks.early_stopping.monitor"):   # a callback's own monitor is checked too
        cfg = compose_config(tiny_overrides(tmp_path, kaggle_folder) + [f"{key}=val/gender/top5"])
        with pytest.raises(ConfigError, match=f"{key}: 'val/gender/top5' is not logged by this run: gender has \\d "
                                              "classes here, and top5 is logged only for heads of more than 5"):
            train(cfg)
    assert not (tmp_path / "mlruns").exists() or runs_of(tmp_path).empty   # no run was opened for it


def test_a_sweep_stopped_early_ends_as_its_stopped_job_did(tmp_path, monkeypatch):
    """A -m sweep that never reached its end was closed FAILED even when Ctrl-C stopped it, while the job
    it interrupted ended KILLED. Now its jobs say which: KILLED if one was stopped on purpose, else FAILED."""
    from omegaconf import OmegaConf

    from fashion.tracking.run import PARENT_RUN_ENV, end_sweep, start_sweep

    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    cfg = OmegaConf.create({"logger": {"tracking_uri": uri, "experiment_name": "fashion"}, "tags": {}})
    client = MlflowClient(uri)
    for job_statuses, expected in ((["FINISHED", "KILLED"], "KILLED"), (["FINISHED", "FAILED"], "FAILED")):
        sweep = start_sweep(cfg, "sweep")
        for status in job_statuses:
            job = client.create_run(client.get_run(sweep).info.experiment_id, tags={"mlflow.parentRunId": sweep})
            client.set_terminated(job.info.run_id, status)
        end_sweep(cfg, sweep, None)
        assert client.get_run(sweep).info.status == expected


def test_the_ui_hint_names_the_store_the_run_went_to(tmp_path, monkeypatch):
    """The end of a run said `make ui` whatever the store: with paths.mlruns elsewhere that UI showed other
    runs, and a team server is its own UI. Each store now gets the command (or link) that shows it."""
    import fashion.tracking.run as tracking

    from fashion import config

    monkeypatch.setattr(config, "SHELL_TRACKING_URI", None)
    monkeypatch.setattr(tracking, "ui_url", lambda uri, experiment="fashion", host="http://127.0.0.1:5000": f"{host}/#/x")
    project = f"sqlite:///{config.PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"
    assert tracking.ui_hint(project).startswith("Open the MLflow UI with: make ui   (then http://127.0.0.1:5000/#/x)")
    elsewhere = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)   # as MLflow sets it once a run opens: not what `make ui` serves
    assert tracking.ui_hint(elsewhere).startswith(f"Open the MLflow UI with: mlflow ui --backend-store-uri {elsewhere}")
    assert tracking.ui_hint("https://mlflow.example.com/") == "Open the MLflow UI: https://mlflow.example.com/#/x"
    monkeypatch.setattr(config, "SHELL_TRACKING_URI", elsewhere)   # the user's shell names it: `make ui` serves it
    assert "make ui" in tracking.ui_hint(elsewhere)


def test_a_moved_project_keeps_its_runs_artifacts_and_writes_new_ones_beside_them(tmp_path):
    """MLflow records absolute artifact paths: after the project folder moves, new runs wrote into the old
    place (re-creating it) and the old runs' artifacts could not be read. The store follows the move; an
    artifact location chosen on purpose elsewhere is left alone."""
    import shutil

    from fashion.tracking.run import tool_run, ui_url

    def log_text(uri: str, name: str) -> str:
        with tool_run(uri, "fashion", name, "evaluation", {}) as run:
            mlflow.log_text(name, f"{name}.txt")
        return run.info.run_id

    before, after = tmp_path / "before" / "mlruns", tmp_path / "after" / "mlruns"
    first = log_text(f"sqlite:///{before}/mlflow.db", "first")
    shutil.move(before.parent, after.parent)
    uri = f"sqlite:///{after}/mlflow.db"
    second = log_text(uri, "second")
    client = MlflowClient(uri)
    for run_id, name in ((first, "first"), (second, "second")):
        assert Path(client.get_run(run_id).info.artifact_uri).is_relative_to(after.resolve())
        assert mlflow.artifacts.load_text(f"{client.get_run(run_id).info.artifact_uri}/{name}.txt") == name
    assert Path(client.get_experiment_by_name("fashion").artifact_location) == (after / "artifacts").resolve()
    assert not (tmp_path / "before").exists()   # nothing written where the project used to be

    copy = tmp_path / "copy" / "mlruns"         # a copy on the same machine: each store reads its own folder
    shutil.copytree(after, copy)
    ui_url(f"sqlite:///{copy}/mlflow.db")        # what `make ui` asks first
    assert Path(MlflowClient(f"sqlite:///{copy}/mlflow.db").get_run(first).info.artifact_uri).is_relative_to(copy.resolve())
    assert Path(client.get_run(first).info.artifact_uri).is_relative_to(after.resolve())

    elsewhere = tmp_path / "big-disk" / "mlruns" / "artifacts"   # chosen on purpose: never rewritten
    own = f"sqlite:///{tmp_path / 'own' / 'mlruns'}/mlflow.db"
    with tool_run(own, "shared-artifacts", "x", "evaluation", {}, artifact_location=str(elsewhere)) as run:
        mlflow.log_text("x", "x.txt")
    with tool_run(own, "shared-artifacts", "y", "evaluation", {}, artifact_location=str(elsewhere)):
        pass
    assert Path(MlflowClient(own).get_run(run.info.run_id).info.artifact_uri).is_relative_to(elsewhere)


def prepare_store_at_the_signal(uri: str, start, answers) -> None:
    from fashion.tracking import ensure_experiment

    start.wait()
    try:
        answers.put(ensure_experiment(uri, "fashion"))
    except Exception as err:   # noqa: BLE001 - what each process met is the result
        answers.put(f"{type(err).__name__}: {err}"[:200])


def test_processes_that_open_a_new_store_together_all_get_the_experiment(tmp_path):
    """torchrun's ranks (or a shell loop's jobs) each prepare the store as they start: on a new SQLite
    store they ran MLflow's table migrations at once, and all but one, sometimes all, failed with
    `table ... already exists`; the first torchrun job of a fresh clone stopped there."""
    import multiprocessing

    spawn, processes = multiprocessing.get_context("spawn"), 4
    uri, start, answers = f"sqlite:///{tmp_path}/mlruns/mlflow.db", spawn.Barrier(processes), spawn.Queue()
    workers = [spawn.Process(target=prepare_store_at_the_signal, args=(uri, start, answers)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    results = [answers.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join()
    assert results == [MlflowClient(uri).get_experiment_by_name("fashion").experiment_id] * processes, results


def broken_scheduler(optimizer, total_steps):
    raise RuntimeError("scheduler exploded")


def test_weight_ema_is_one_override_away(tmp_path, kaggle_folder, compose_config):
    ema = "callbacks.ema={_target_: fashion.training.callbacks.EMAWeights, decay: 0.9}"
    cfg = compose_config(tiny_overrides(tmp_path, kaggle_folder) + ["trainer.limit_train_batches=2", ema])
    metrics = train(cfg)
    assert "test/articleType/acc" in metrics
    assert runs_of(tmp_path).iloc[0]["params.callbacks.ema._target_"] == "fashion.training.callbacks.EMAWeights"


def test_a_run_reads_well_in_the_mlflow_ui(tmp_path, kaggle_folder, compose_config, monkeypatch):
    """Training-runs experiment, dataset inputs per split, a description with the test table, system metrics."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    metrics = train(compose_config(tiny_overrides(tmp_path, kaggle_folder)))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("fashion")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "default · test_efficientnet · dataset"
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"dataset/train", "dataset/val", "dataset/test"}
    assert {t.value for i in inputs.values() for t in i.tags if t.key == "mlflow.data.context"} == {"train", "val", "test"}
    assert len({i.dataset.digest for i in inputs.values()}) == 3      # different products, different digests
    note = run.data.tags["mlflow.note.content"]
    assert "| attribute | test acc | test macro-F1 |" in note
    assert f"| gender | {100 * metrics['test/gender/acc']:.1f} |" in note
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics)
    # What the numbers depend on besides the config: another processor or library version trains differently
    import cv2
    import timm
    tags = run.data.tags
    assert tags["version.torch"] == torch.__version__ and tags["version.timm"] == timm.__version__, tags
    assert tags["version.opencv"].startswith(cv2.__version__) and tags["version.python"] == platform.python_version()
    assert tags["hardware"].startswith("CPU (") and torch.backends.cpu.get_cpu_capability() in tags["hardware"], tags["hardware"]
    pinned = client.download_artifacts(run.info.run_id, "environment/requirements.txt", str(tmp_path))
    assert f"timm=={timm.__version__}\n" in Path(pinned).read_text() and "fashion==" not in Path(pinned).read_text()


def test_the_hardware_tag_counts_the_gpus_however_devices_names_them(monkeypatch):
    """trainer=ddp's `devices: auto` was written as it stood: "autox NVIDIA H100 x 1 node(s)"."""
    from omegaconf import OmegaConf

    from fashion.tracking.environment import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "GPU-X")
    named = [hardware("gpu", d, 2) for d in ("auto", -1, 2, "2", "0,1", OmegaConf.create({"d": [0, 2, 3]}).d)]
    assert named == [f"{n}x GPU-X x 2 node(s)" for n in (4, 4, 2, 2, 2, 3)]
    # a Mac's GPU, which Lightning picks for accelerator=mps (or auto, or gpu): was called a CPU run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert hardware("mps", 1, 1).startswith("Apple GPU (MPS) on ") and hardware("auto", 1, 1).startswith("Apple GPU (MPS)")
    assert hardware("cpu", 1, 1).startswith("CPU (")


def test_onnxruntime_fills_are_described_by_the_processors_own_instruction_set(tmp_path, monkeypatch):
    """onnxruntime's kernels dispatch on what the CPU offers, whatever torch's are capped to."""
    import fashion.machine as machine

    flags = {"AVX512": "fpu sse avx fma avx2 avx512f avx512dq avx512bw avx512vl", "AVX2": "fpu sse avx fma avx2 avx512f",
             "DEFAULT": "fpu sse sse4_2 avx", None: ""}
    for expected, line in flags.items():
        cpuinfo = tmp_path / f"cpuinfo-{expected}"
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {line}\n\nprocessor\t: 1\n" if line else
                           "processor\t: 0\nFeatures\t: fp asimd sve\n")   # an ARM server: no x86 flags
        monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
        machine.cpu_instruction_set.cache_clear()
        assert machine.cpu_instruction_set() == expected, line
    machine.cpu_instruction_set.cache_clear()


def test_the_hardware_tag_says_when_onednn_is_capped(monkeypatch):
    """oneDNN's instruction set changes the numbers as ATen's does (0.7410 against 0.7210 on one machine)."""
    from fashion.machine import processor

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    processor.cache_clear()
    try:
        assert processor().endswith(f", {torch.backends.cpu.get_cpu_capability()}, oneDNN at most AVX2")
    finally:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
        processor.cache_clear()


def test_equal_data_gives_equal_dataset_digests(tmp_path, kaggle_folder, compose_config):
    for seed in (1, 2):   # another seed trains differently on the same split
        train(compose_config(tiny_overrides(tmp_path, kaggle_folder) + [f"seed={seed}", "logger.system_metrics=false"]))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("fashion").experiment_id])
    digests = [{i.dataset.name: i.dataset.digest for i in r.inputs.dataset_inputs} for r in runs]
    assert len(runs) == 2 and digests[0] == digests[1]
    assert not any(key.startswith("system/") for r in runs for key in r.data.metrics)


def test_only_the_frozen_norms_count_of_eval_modules_is_silenced():
    """Lightning warns of modules that start training in eval mode; the frozen batch norms do on purpose, any
    other number of modules still warns."""
    import warnings

    from lightning.fabric.utilities.warnings import PossibleUserWarning

    from fashion.training.console import expect_frozen_norms_in_eval

    def warned(count: int) -> bool:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            expect_frozen_norms_in_eval(72)
            warnings.warn(f"Found {count} module(s) in eval mode at the start of training.", PossibleUserWarning)
        return bool(caught)

    assert not warned(72) and warned(73) and warned(7)


def test_torchs_leafspec_deprecation_is_ignored_in_lightnings_code_only():
    """Lightning's step-output flattening builds torch's deprecated LeafSpec; that warning goes, the same
    deprecation raised from other code stays."""
    import warnings

    from lightning.pytorch.utilities._pytree import _tree_flatten
    from torch.utils._pytree import LeafSpec

    from fashion.training.console import ignore_lightnings_leafspec_deprecation

    def warned(call) -> bool:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ignore_lightnings_leafspec_deprecation()
            call()
        return any("LeafSpec" in str(w.message) for w in caught)

    assert not warned(lambda: _tree_flatten(1.0))
    assert warned(LeafSpec)


def test_a_loss_as_the_optimized_metric_keeps_the_lowest_and_a_sweep_names_the_lowest(tmp_path, kaggle_folder,
                                                                                       compose_config, monkeypatch):
    """The checkpoint and early stopping were fixed to "max": `optimized_metric=val/loss` kept the checkpoint of
    the highest validation loss as the best, tested it and exported it; a sweep named its highest-loss job."""
    from fashion.tracking.run import PARENT_RUN_ENV, end_sweep, start_sweep

    cfg = compose_config(tiny_overrides(tmp_path, kaggle_folder) + ["optimized_metric=val/loss", "trainer.max_epochs=4"])
    metrics = train(cfg)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = runs_of(tmp_path).iloc[0]
    losses = [m.value for m in sorted(client.get_metric_history(run["run_id"], "val/loss"), key=lambda m: m.step)]
    assert len(set(losses)) > 1, losses   # the test needs epochs that differ
    assert metrics["best/val/loss"] == pytest.approx(min(losses))
    assert run["tags.best_checkpoint"] == f"checkpoints/best-epoch{losses.index(min(losses)):02d}.ckpt"
    assert "Columns worth adding: `best/val/loss`" in run["tags.mlflow.note.content"]   # the run page names its metric

    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    sweep = start_sweep(cfg, "sweep")
    for loss in (2.0, 1.0, 3.0):
        job = client.create_run(client.get_run(sweep).info.experiment_id, tags={"mlflow.parentRunId": sweep}).info.run_id
        client.log_metric(job, "best/val/loss", loss)
        client.set_terminated(job)
    end_sweep(cfg, sweep)
    best = client.get_run(client.get_run(sweep).data.tags["best_run_id"])
    assert best.data.metrics["best/val/loss"] == 1.0 and client.get_run(sweep).data.metrics["best/val/loss"] == 1.0
