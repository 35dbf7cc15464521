"""The command line as users run it: multirun sweeps and DDP, each checked in the MLflow store."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import PROJECT_ROOT, tiny_overrides

pytestmark = pytest.mark.slow


def run_cli(args: list[str], tmp_path: Path, timeout: int = 300, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(
        [sys.executable, *launcher, "-m", "fashion.train", *args], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def finished_runs(tmp_path: Path, experiment: str = "fashion") -> list:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def cli_overrides(tmp_path: Path, data_root: Path) -> list[str]:
    # paths.output_dir keeps its ${hydra:...} default on the command line; Hydra's own dirs go to tmp
    overrides = [o for o in tiny_overrides(tmp_path, data_root) if not o.startswith("paths.output_dir")]
    return overrides + [f"hydra.run.dir={tmp_path}/outputs", f"hydra.sweep.dir={tmp_path}/multirun"]


# Runs `python -m <module> <args>` for each command in turn, in one process: each command line's exit status and
# standard error, as the command would give them alone (Hydra is reset between them), without each paying the
# seconds of Lightning's, timm's and MLflow's imports again.
ONE_PROCESS = """
import io, json, runpy, sys, traceback
from contextlib import redirect_stderr
from hydra.core.global_hydra import GlobalHydra
answers = []
for module, *args in json.loads(sys.stdin.read()):
    GlobalHydra.instance().clear()
    sys.argv, stderr, code = [module, *args], io.StringIO(), 0
    with redirect_stderr(stderr):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as done:
            code = done.code
        except BaseException:
            traceback.print_exc()
            code = 1
    answers.append((code, stderr.getvalue()))
print("ANSWERS", json.dumps(answers))
"""


def commands_in_one_process(commands: list[list[str]], cwd: Path, env: dict[str, str]) -> list[tuple[int, str]]:
    result = subprocess.run([sys.executable, "-c", ONE_PROCESS], input=json.dumps(commands), cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert "ANSWERS " in result.stdout, result.stderr[-3000:]
    return [tuple(answer) for answer in json.loads(result.stdout.split("ANSWERS ", 1)[1])]


def test_two_job_multirun_gives_two_tagged_mlflow_runs(tmp_path, kaggle_folder):
    result = run_cli(["-m", *cli_overrides(tmp_path, kaggle_folder), "loss_weighting=fixed,uncertainty"], tmp_path)
    everything = finished_runs(tmp_path)
    (parent,) = [r for r in everything if r.data.tags.get("run_type") == "sweep"]   # one run for the sweep ...
    runs = [r for r in everything if r is not parent]
    assert len(runs) == 2, result.stdout[-2000:]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}   # ... its jobs nested under it
    assert parent.data.tags["best_run_id"] in {r.info.run_id for r in runs} and parent.info.status == "FINISHED"
    assert parent.data.metrics["best/val/mean_acc"] == max(r.data.metrics["best/val/mean_acc"] for r in runs)
    # names say what was trained (recipe, backbone, data, model overrides), not display flags
    assert all(r.info.run_name.startswith("default · test_efficientnet · dataset · ") for r in runs)
    assert not any("progress_bar" in r.info.run_name or "paths." in r.info.run_name for r in runs)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["loss_weighting._target_"] for r in runs} == {
        "fashion.losses.FixedWeighting", "fashion.losses.UncertaintyWeighting"}
    assert len({r.data.tags["sweep"] for r in runs}) == 1  # one sweep, one tag to filter on
    assert {r.data.tags["sweep.job"] for r in runs} == {"0", "1"}
    assert any("loss_weighting=uncertainty" in r.info.run_name for r in runs)  # run names show the overrides
    # Lightning's lines once a job, on the console and in the job's log (its own handler printed them a second time)
    assert (result.stdout + result.stderr).count("Seed set to") == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert sum(log.read_text().count("Seed set to") for log in (tmp_path / "multirun").rglob("*.log")) == 2
    # the frozen batch norms start training in eval mode on purpose: no warning that it "may lead to unexpected behavior"
    assert "in eval mode at the start of training" not in result.stderr
    assert "Tip:" not in result.stdout + result.stderr   # Lightning's advertisement for another tracking platform


# the README's launch (torchrun, the processes started from outside) and trainer=ddp_cpu (spawned from one)
DDP_LAUNCHES = {
    "ddp": (("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
            ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false",
             "trainer.precision=32-true"]),
    "ddp_spawn": ((), ["trainer=ddp_cpu"]),
}


@pytest.mark.parametrize("strategy", DDP_LAUNCHES)
def test_ddp_on_two_cpu_processes_logs_one_run_that_counts_each_product_once(strategy, tmp_path, kaggle_folder):
    launcher, trainer = DDP_LAUNCHES[strategy]
    # odd val and test splits, one product a batch: the two processes' evaluation runs differ by a batch
    result = run_cli([*cli_overrides(tmp_path, kaggle_folder), *trainer, "trainer.limit_train_batches=1",
                      "trainer.log_every_n_steps=1", "data.eval_batch_size=1",
                      "split.fractions={train:0.75,val:0.2,test:0.05}"], tmp_path, launcher=launcher)
    # Lightning's advice to sync what torchmetrics already gathered: ~70 lines a run, in every process kind
    assert "It is recommended to use `self.log(" not in result.stderr + result.stdout
    runs = finished_runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.strategy"] == strategy and run.data.params["trainer.devices"] == "2"
    assert "test/gender/acc" in run.data.metrics and "val/mean_acc" in run.data.metrics
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert len(client.get_metric_history(run.info.run_id, "val/gender/acc")) == 1  # logged by rank 0 only
    # each test product counted once: the two ranks split the test set without padding it with repeats
    artifacts = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts")))
    split = pd.read_csv(artifacts / "data" / "split.csv")
    sizes = split["split"].value_counts()
    assert sizes["val"] % 2 == 1 and sizes["test"] % 2 == 1   # which a padding sampler would round up to even
    tested = int(sizes["test"])
    report = pd.read_csv(artifacts / "test" / "report_gender.csv", index_col="class")
    assert report.loc[["Men", "Women"], "support"].sum() == tested
    assert run.data.metrics["calibration/gender/val_samples"] == sizes["val"]   # rank zero calibrates on all of val
    # one batch a process: the epoch's training loss is the mean of both, not rank zero's batch (train/loss_step),
    # and it is the weighted sum of the attributes' epoch losses, which are means over both processes too
    metrics = run.data.metrics
    assert metrics["train/loss_epoch"] != pytest.approx(metrics["train/loss_step"], abs=1e-6)
    attributes = [k.split("/")[1] for k in metrics if k.startswith("loss_weight/")]
    assert attributes and metrics["train/loss_epoch"] == pytest.approx(
        sum(metrics[f"loss_weight/{a}"] * metrics[f"train/{a}/loss"] for a in attributes), rel=1e-5)


def test_wrong_override_fails_fast_naming_the_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run([sys.executable, "-m", "fashion.train", "trainer.max_epoch=3"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "trainer.max_epoch" in result.stderr
    assert not (PROJECT_ROOT / "mlruns" / "nonexistent").exists()


def test_a_folder_named_by_digits_is_taken_as_a_folder(tmp_path):
    """Hydra reads `data.root=2024` as a number: refused as "Input should be a valid string (got 2024)". The
    command line's text is kept for a key that takes text (here the folder is empty, so the data says so)."""
    (tmp_path / "2024").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run([sys.executable, "-m", "fashion.train", "data.root=2024", f"paths.root={tmp_path}"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "fashion-train: image folder not found: 2024/images" in result.stderr, result.stderr


def test_help_and_a_wrong_key_answer_before_the_training_stack_loads(tmp_path):
    """`fashion-train --help` and a misspelt override need only Hydra: Lightning, timm and MLflow
    (10-14 s to import on 2 cores) load once a config has composed."""
    probe = ("import runpy, sys\n"
             "module = sys.argv.pop(1)\n"
             "try:\n    runpy.run_module(module, run_name='__main__')\n"
             "except SystemExit as done:\n    print('EXIT', done.code)\n"
             "print('LOADED', sorted({'torch', 'lightning', 'timm', 'mlflow'} & {m.split('.')[0] for m in sys.modules}))")
    # Hydra's advice for a misspelt key is to append it: a top-level append nothing reads trained as if it were not
    # there (the configured 6 epochs); a group or a key inside one may still be appended.
    # An appended key no config has is refused with the misspelt ones, before the Hydra callback prepares the MLflow
    # store (it was refused once the job had started: MLflow loaded, the store made). fashion-tune's missing search
    # space is the job's own, after the store, but before Lightning and timm (the tracking stage loaded them
    # eagerly: 7 s, not 2.5; fashion-tune and fashion-data imported the stack at the top of their modules: 8 s)
    store = [f"hydra.run.dir={tmp_path}/outputs", f"paths.mlruns={tmp_path}/mlruns"]
    cases = ((["fashion.train", "--help"], "Configuration groups", 0, "[]"),
             # Hydra's refusal of a key, exit 1, advised appending it (+trainer.max_epoch=3), refused once the run began
             (["fashion.train", "trainer.max_epoch=3"],
              "fashion-train: no key trainer.max_epoch in the config (did you mean trainer.max_epochs?)", 2, "[]"),
             (["fashion.train", "experiment=best_cpu", "module.lr=0.1"],   # a key of the same name elsewhere
              "fashion-train: no key module.lr in the config (did you mean optimizer.lr?)", 2, "[]"),
             # a parameter of the class that the config does not list (AdamW's betas): appending it is the way
             (["fashion.train", "optimizer.betas=[0.9,0.99]"], "fashion-train: no key optimizer.betas in the config; to add "
              "a key optimizer's config does not list, append it: +optimizer.betas=[0.9,0.99]", 2, "[]"),
             (["fashion.train", "-m", "loss_weighting=fixed,uncertanty"],   # any value of a sweep, not only its first
              "fashion-train: loss_weighting=uncertanty: no such option (did you mean uncertainty?); the options: dwa, "
              "fixed, uncertainty", 2, "[]"),
             (["fashion.tune", "hparams_search=optuna", "trainer.max_epoch=3"],
              "fashion-tune: no key trainer.max_epoch in the config (did you mean trainer.max_epochs?)", 2, "[]"),
             (["fashion.data_report", "report", "data.rot=x"],
              "fashion-data report: no key data.rot in the config (did you mean data.root?)", 2, "[]"),
             (["fashion.train", "+tags.owner=me", "+max_epochs=3", *store],
              "fashion-train: +max_epochs adds a key no config has, so nothing would read it (did you mean trainer.max_epochs?)",
              2, "[]"),
             (["fashion.tune", *store], "fashion-tune: no search space: give one, e.g. fashion-tune hparams_search=optuna",
              2, "['mlflow']"),
             (["fashion.tune", "--help"], "Configuration groups", 0, "[]"),   # the sweep's MLflow code was imported at the top
             (["fashion.data_report", "report", "+lables.min_count=100000", *store],
              "fashion-data report: +lables adds a key no config has, so nothing would read it (did you mean labels?)",
              2, "[]"),
             # the server's keys, before torch: the runtime's type was defined beside the predictor (3 s, not 0.2)
             (["fashion.serve", "--help"], "usage: fashion-serve [key=value ...]", 0, "[]"),
             (["fashion.export", "--help"], "usage: fashion-export [key=value ...]", 0, "[]"),   # imported MLflow and torch: 4 s
             # the scoring's libraries were imported at the top of the entry modules: 6 s and 2.5 s
             (["fashion.evaluate", "--help"], "usage: fashion-eval [key=value ...]", 0, "[]"),
             (["fashion.evaluate", "bundel=b", "root=r"], "fashion-eval: no key 'bundel' in conf/eval.yaml (did you mean 'bundle'?)",
              2, "[]"),
             (["fashion.predict", "--help"], "usage: fashion-predict [key=value ...]", 0, "[]"),
             (["fashion.promote", "--help"], "usage: fashion-promote [key=value ...]", 0, "[]"))   # the registry imported MLflow
    for args, expect, code, loaded in cases:
        result = subprocess.run([sys.executable, "-c", probe, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"})
        assert expect in result.stdout + result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr, result.stderr[-2000:]
        assert f"EXIT {code}\nLOADED {loaded}" in result.stdout, (args, result.stdout[-500:])
        assert code == 0 or loaded != "[]" or not (tmp_path / "mlruns").exists(), (args, "a refused line made a store")
        shutil.rmtree(tmp_path / "mlruns", ignore_errors=True)


def test_a_value_the_classes_refuse_or_a_missing_path_is_one_line_and_exit_2(tmp_path):
    """As every other tool reports a bad command line: no "Error executing job" and stack above the line
    that names the key; HYDRA_FULL_ERROR=1 still gives the traceback."""
    store = tmp_path / "store"
    store.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db"}
    missing = tmp_path / "no_such_catalogue"
    not_a_split = tmp_path / "split.csv"
    not_a_split.write_text("foo,bar\n1,2\n")
    latin = tmp_path / "latin_catalogue"   # a spreadsheet's CSV in its code page: was UnicodeDecodeError's traceback
    (latin / "images").mkdir(parents=True)
    (latin / "styles.csv").write_bytes("id,gender\n1,Men\n2,Women,Caf\u00e9\n".encode("cp1252"))
    cases = [(["fashion.train", f"split.path={not_a_split}"],   # exists, but is not a split: was a traceback
              f"fashion-train: split.path: {not_a_split}: a split file needs columns id,split; it has ['foo', 'bar']"),
             (["fashion.train", "backbone.freeze=sometimes"], "fashion-train: invalid config: backbone.freeze: "),
             # labels the data cannot give a head (a tiny folder, a high min_count): was a traceback
             (["fashion.data_report", "report", "labels.min_count=100000"],
              "fashion-data report: attribute 'gender' has 0 class(es) with >= 100000 training samples; a head needs at least 2"),
             (["fashion.train", f"data.root={missing}"], f"fashion-train: data.root does not exist: {missing}"),
             (["fashion.train", f"data.root={latin}"], f"fashion-train: {latin / 'styles.csv'} is not UTF-8 text (line 3)"),
             (["fashion.data_report", "report", f"data.root={missing}"], f"fashion-data report: data.root does not exist: {missing}"),
             # refused in a class's __init__, which Hydra's instantiate wraps: the refusal is still the one line
             (["fashion.train", "data.train_only=[feedback]"], "fashion-train: data.train_only holds photos at their true aspect"),
             # ValueErrors of the network and loss pieces were Hydra's "Error in call to target" and full_key lines
             (["fashion.train", "backbone.name=resnet999"], "fashion-train: backbone.name='resnet999' is not a timm model"),
             (["fashion.train", "loss_weighting.weights={colour:2}"],
              "fashion-train: loss_weighting.weights names ['colour'], which are not trained attributes")]
    answers = commands_in_one_process([[*args, f"hydra.run.dir={tmp_path}/outputs"] for args, _ in cases], tmp_path, env)
    for (args, first_line), (code, stderr) in zip(cases, answers, strict=True):
        assert code == 2, (args, stderr[-2000:])
        assert first_line in stderr and "Traceback" not in stderr and "Error executing job" not in stderr, stderr
    full = subprocess.run([sys.executable, "-m", "fashion.train", "backbone.freeze=sometimes", f"hydra.run.dir={tmp_path}/outputs"],
                          cwd=tmp_path, env={**env, "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True, timeout=180)
    assert full.returncode == 1 and "Traceback" in full.stderr and "ConfigError" in full.stderr
    # In a sweep a bad job stays Hydra's failed job: the sweep still launches the others, then reports it.
    sweep = subprocess.run([sys.executable, "-m", "fashion.train", "-m", f"data.root={missing}1,{missing}2",
                            f"hydra.sweep.dir={tmp_path}/multirun"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert sweep.returncode == 1 and f"#1 : data.root={missing}2" in sweep.stdout + sweep.stderr
    assert "Error executing job" in sweep.stderr
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")   # the store is prepared before the job starts ...
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.data.tags.get("run_type") for r in runs] == ["sweep"]   # ... but no job's run was opened, only the sweep's,
    assert runs[0].info.status == "FAILED"   # closed as failed, not left running


def test_a_trainer_value_lightning_refuses_once_the_data_is_loaded_is_one_line(tmp_path, kaggle_folder):
    """`trainer.limit_val_batches=0.5` of a split with one validation batch: Lightning's message names the key
    and the way out, but came under Hydra's "Error executing job" and a traceback."""
    result = subprocess.run([sys.executable, "-m", "fashion.train", *tiny_overrides(tmp_path, kaggle_folder),
                             "trainer.num_sanity_val_steps=1", "trainer.limit_val_batches=0.5", f"hydra.run.dir={tmp_path}/outputs"],
                            cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert ("fashion-train: You requested to check 0.5 of the `val_dataloader` but 0.5 * 1 < 1. Please increase the "
            "`limit_val_batches` argument." in result.stderr)
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr
