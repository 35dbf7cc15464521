"""Shared fixtures: a tiny Kaggle-layout dataset built on the fly and composed Hydra configs."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)

from fashion.config import CONFIG_DIR  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = PROJECT_ROOT / "data" / "sample"


def load_script(name: str):
    """A module of scripts/ (they are not part of the package), e.g. load_script("results_table")."""
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

COLOURS = {"Black": (20, 20, 20), "White": (235, 235, 235), "Red": (200, 30, 30), "Blue": (30, 40, 190)}
ARTICLES = {  # articleType -> (masterCategory, subCategory)
    "Tshirts": ("Apparel", "Topwear"),
    "Jeans": ("Apparel", "Bottomwear"),
    "Casual Shoes": ("Footwear", "Shoes"),
}


def write_kaggle_folder(root: Path, n: int = 48, seed: int = 0, size: int = 32) -> pd.DataFrame:
    """n products with every attribute, solid-colour JPEGs whose colour is the baseColour label."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        article = list(ARTICLES)[i % len(ARTICLES)]
        colour = list(COLOURS)[(i // 3) % len(COLOURS)]
        master, sub = ARTICLES[article]
        pid = 1000 + 3 * i  # gaps > max_id_gap, so every product is its own group
        rows.append({
            "id": pid, "gender": ["Men", "Women"][i % 2], "masterCategory": master, "subCategory": sub,
            "articleType": article, "baseColour": colour, "season": ["Summer", "Fall"][(i // 2) % 2],
            "year": 2012, "usage": ["Casual", "Sports"][(i // 4) % 2],
        })
        pixels = np.full((size, size, 3), COLOURS[colour], dtype=np.uint8)
        pixels = np.clip(pixels.astype(int) + rng.integers(-10, 10, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{pid}.jpg", quality=90)
    frame = pd.DataFrame(rows)
    frame.to_csv(root / "styles.csv", index=False)
    return frame


@pytest.fixture
def kaggle_folder(tmp_path: Path) -> Path:
    root = tmp_path / "dataset"
    write_kaggle_folder(root)
    return root


def tiny_overrides(tmp_path: Path, data_root: Path) -> list[str]:
    """Overrides that make any config train in seconds on the tiny dataset, logging into tmp_path."""
    return [
        f"data.root={data_root}",
        "data.num_workers=0",
        "data.batch_size=8",
        "data.eval_batch_size=16",
        "labels.min_count=1",
        f"paths.mlruns={tmp_path / 'mlruns'}",
        f"paths.output_dir={tmp_path / 'out'}",
        f"paths.cache={tmp_path / 'cache'}",
        "backbone=test_tiny",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
    ]


@pytest.fixture
def compose_config() -> Callable[..., DictConfig]:
    def _compose(overrides: list[str] = (), config_name: str = "train") -> DictConfig:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))

    return _compose


@pytest.fixture(autouse=True)
def isolated_mlflow_uri(monkeypatch):
    """mlflow.set_tracking_uri() also exports MLFLOW_TRACKING_URI, which our logger config honours:
    without this, one test's store would leak into the next test's runs."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    import mlflow

    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


# Where the tools write by default, relative to the working directory (conf/*.yaml): a test that leaves
# one of these in the checkout shows up in `git status`, or worse, in a commit (review/review.db once did).
DEFAULT_OUTPUTS = ("mlflow.db", "review", "model_cache", "eval_output", "outputs", "multirun")


@pytest.fixture(scope="session", autouse=True)
def project_store_left_alone() -> Iterator[None]:
    """Every test keeps its MLflow store in its own tmp folder (`mlflow_store`), so the project's mlruns/ gains
    nothing. Tests once made a database there, and put 1.4 GB of logged models into mlruns/1. The tools'
    other default outputs (`DEFAULT_OUTPUTS`) must not appear in the checkout either."""
    def present() -> set[str]:
        return ({f"mlruns/{p.name}" for p in (PROJECT_ROOT / "mlruns").iterdir()}
                | {name for name in DEFAULT_OUTPUTS if (PROJECT_ROOT / name).exists()})

    before = present()
    yield
    added = sorted(present() - before)
    assert not added, f"tests wrote into the project's checkout {PROJECT_ROOT}: {added}"


def mlflow_store(tmp_path: Path, experiment: str) -> str:
    """A sqlite store in `tmp_path`, with `experiment` active and its artifacts beside it (`ensure_experiment`,
    as the CLIs make theirs): an experiment created without an artifact location keeps them in ./mlruns of
    the working directory, the repo's own store (a logged pyfunc copies the package and the bundle there).
    Returns the tracking URI."""
    import mlflow

    from fashion.tracking import ensure_experiment

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=ensure_experiment(uri, experiment))
    return uri


@dataclass
class TrainedArtifacts:
    """One tiny trained model shared by the inference and serving tests."""

    root: Path            # tmp folder holding everything below
    data: Path            # its Kaggle-layout dataset
    checkpoint: Path
    run_id: str
    tracking_uri: str
    bundle: Path


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> TrainedArtifacts:
    """Train test_tiny (with the colour histogram) for one epoch, then export it as a bundle."""
    import mlflow

    from fashion.export import export
    from fashion.train import train

    root = tmp_path_factory.mktemp("trained")
    data = root / "dataset"
    write_kaggle_folder(data, n=60)
    overrides = tiny_overrides(root, data) + [
        "trainer.limit_train_batches=3", "+extra_features.colour={_target_:fashion.models.ColourHistogram,bins:4,size:16}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    train(cfg)
    tracking_uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    run = mlflow.search_runs(experiment_names=["fashion"]).iloc[0]
    checkpoint = next((root / "out" / "checkpoints").glob("best-*.ckpt"))
    bundle, _ = export(run["run_id"], None, root / "bundle", tracking_uri, onnx=True, log_to_mlflow=False)
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return TrainedArtifacts(root, data, checkpoint, run["run_id"], tracking_uri, bundle)


@contextmanager
def server_process(args: list[str], health: str, tries: int = 240, **popen) -> Iterator[str]:
    """`python -m <args...> --port <free port>` until it answers `health`; yields its base URL.

    In its own process group, stopped as a group: `mlflow ui` and `mlflow models serve` start uvicorn
    and job-queue workers that a plain terminate() would leave behind.
    """
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", *args, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **popen)
    host = f"http://127.0.0.1:{port}"
    try:
        for _ in range(tries):
            try:
                if httpx.get(host + health).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        yield host
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
