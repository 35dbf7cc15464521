"""The layout the README draws is the layout the code has: stages import one way, no cycles."""

import os
import re
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tests.conftest import PROJECT_ROOT, load_script

sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
import import_graph  # noqa: E402


def test_the_readme_import_graph_is_current_and_acyclic(capsys):
    assert import_graph.main(["--check"]) == 0, capsys.readouterr().out


def test_the_cycle_check_can_fail():
    assert import_graph.cycles({"data": {"models"}, "models": {"data"}})
    assert not import_graph.cycles({"models": {"data"}, "data": set()})


def test_lower_stages_do_not_reach_into_training():
    graph = import_graph.stage_graph()
    for stage in ("data", "models", "metrics", "features", "losses", "inference", "serving", "tracking"):
        assert "training" not in graph.get(stage, set()), stage
    assert "models" not in graph["data"] and "features" not in graph["data"]


def test_every_script_still_imports():
    """The scripts are not in the package and most run for many minutes, so no other test imports them: a function
    the package renamed or moved broke one only when somebody next ran it."""
    for path in sorted((PROJECT_ROOT / "scripts").glob("*.py")):
        assert callable(getattr(load_script(path.stem), "main", None)), f"{path.name} has no main()"
    for path in sorted((PROJECT_ROOT / "scripts").glob("*.sh")):   # bash's own syntax check: it runs nothing
        checked = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


def test_the_readme_lists_every_option_of_every_group_it_tables():
    """The README's group table is where a user learns what to sweep: it listed 3 of the 11 experiment recipes
    (not best_cpu), and neither data=catalogue_feedback nor backbone=vgg16."""
    text = (PROJECT_ROOT / "README.md").read_text()
    table = text[text.index("| group | options | default |"):]
    rows = [line.strip("|").split("|") for line in table[:table.index("\n\n")].splitlines()[2:]]
    defaults = OmegaConf.to_container(OmegaConf.load(PROJECT_ROOT / "conf" / "train.yaml").defaults)
    chosen = {group: option for entry in defaults if isinstance(entry, dict) for group, option in entry.items()}
    assert len(rows) >= 12
    for group, options, default in rows:
        group = group.strip().strip("`")
        present = {path.stem for path in (PROJECT_ROOT / "conf" / group).glob("*.yaml")}
        assert set(re.findall(r"`([\w-]+)`", options)) == present, (group, sorted(present))
        assert default.strip() == ("none" if chosen[group] is None else f"`{chosen[group]}`"), group


def test_the_readme_layout_names_every_script():
    """Four scripts that write the docs' tables were in no list a newcomer reads."""
    import fnmatch

    text = (PROJECT_ROOT / "README.md").read_text()
    block = text[text.index("\nscripts/ "):]
    named = re.findall(r"[\w*]+\.(?:py|sh)", block[:block.index("\ntests/")])
    for path in (PROJECT_ROOT / "scripts").iterdir():
        if path.suffix in (".py", ".sh"):
            assert any(fnmatch.fnmatch(path.name, name) for name in named), f"README's layout does not name scripts/{path.name}"


def test_the_package_list_names_every_package_and_config_folder():
    """pyproject.toml lists the packages (conf/ travels as fashion.conf): a new folder missing from the list
    would be missing from every wheel."""
    import tomllib

    listed = set(tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    def folders(root, prefix):
        return {prefix + ".".join((p.relative_to(root)).parts) if p != root else prefix.rstrip(".")
                for p in [root, *root.rglob("*")] if p.is_dir() and p.name != "__pycache__"}
    assert listed == folders(PROJECT_ROOT / "fashion", "fashion.") | folders(PROJECT_ROOT / "conf", "fashion.conf.")


def test_a_wheel_carries_its_configs_and_trains_and_exports_outside_a_checkout(tmp_path, kaggle_folder):
    """`pip install .` (a serving image, a cluster's environment) gave a package without conf/: every entry point
    failed with Hydra's "Primary config directory not found", and the exported pyfunc would have copied
    <cwd>/fashion as its code. Installed from a wheel, the tools read the configs the wheel carries and work in
    the directory they are started from (./mlruns, ./outputs), as MLflow and Hydra do."""
    import shutil
    import subprocess
    import zipfile

    import mlflow
    from mlflow.tracking import MlflowClient

    source = tmp_path / "source"   # a copy: a build writes build/ and *.egg-info beside the sources
    for folder in ("fashion", "conf"):
        shutil.copytree(PROJECT_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_ROOT / file, source / file)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"),
                    str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("fashion-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")   # what pip install puts in site-packages
    work = tmp_path / "work"
    work.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "PYTHONPATH": str(tmp_path / "site")}

    def tool(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)

    trained = tool("-m", "fashion.train", f"data.root={kaggle_folder}", "backbone=test_tiny", "labels.min_count=1",
                   "data.batch_size=8", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "callbacks.progress_bar=null")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (work / "mlruns" / "mlflow.db").is_file() and list((work / "outputs").iterdir())
    assert f"mlflow ui --backend-store-uri sqlite:///{work}/mlruns/mlflow.db" in trained.stdout   # no Makefile here
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("fashion").experiment_id])
    assert run.data.tags["version.fashion"] == "0.1.0" and "mlflow.source.git.commit" not in run.data.tags
    exported = tool("-m", "fashion.export", f"run_id={run.info.run_id}", f"output={work / 'bundle'}")
    assert exported.returncode == 0, exported.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns/mlflow.db")
    (logged,) = mlflow.search_logged_models([run.info.experiment_id], f"source_run_id = '{run.info.run_id}'", output_format="list")
    model = Path(mlflow.artifacts.download_artifacts(logged.model_uri, dst_path=str(tmp_path / "model")))
    assert (model / "code" / "fashion" / "predict.py").is_file() and (model / "code" / "fashion" / "conf" / "train.yaml").is_file()
