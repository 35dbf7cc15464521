"""The MLflow UI in headless Chromium over a store with two tiny runs and a two-job sweep: the training-runs
view, readable run names, the dataset inputs, and the sweep's jobs nested under its run.

Needs Debian's chromium, like the upload page's test (.ci/run installs it and sets FASHION_REQUIRE_BROWSER=1).
"""

import os

import pytest
from hydra import compose, initialize_config_dir

from fashion.config import CONFIG_DIR
from fashion.tracking.run import end_sweep, start_sweep, ui_url
from fashion.train import train
from tests.conftest import server_process, tiny_overrides, write_kaggle_folder
from tests.test_web_e2e import CHROMIUM, CHROMIUM_FLAGS

pytestmark = pytest.mark.slow


@pytest.fixture
def store(tmp_path):
    """Two runs and a sweep made the way fashion-train makes them (a `-m` sweep's Hydra callback calls
    start_sweep / end_sweep around its jobs)."""
    data = tmp_path / "dataset"
    write_kaggle_folder(data, n=60)
    base = tiny_overrides(tmp_path, data) + ["logger.system_metrics=false"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for extra in ([], ["head=linear"]):
            train(compose("train", overrides=base + extra))
        cfg = compose("train", overrides=base)
        sweep = start_sweep(cfg, "sweep lr")
        for lr in ("1e-3", "3e-3"):
            train(compose("train", overrides=[*base, f"optimizer.lr={lr}", f"logger.run_name='trial lr={lr}'"]))
        end_sweep(cfg, sweep)
    return cfg.logger.tracking_uri


@pytest.fixture
def mlflow_ui(store, tmp_path):
    with server_process(["mlflow", "ui", "--backend-store-uri", store], "/health", cwd=tmp_path) as host:
        yield ui_url(store, host=host)


def test_the_mlflow_ui_shows_training_runs_datasets_and_the_nested_sweep(mlflow_ui, tmp_path):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("FASHION_REQUIRE_BROWSER"):
            pytest.fail(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS,
                                             ignore_default_args=["--headless=new"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(mlflow_ui)
        expect(page.get_by_text("sweep lr")).to_be_visible(timeout=60_000)
        assert "/runs" in page.url and "workflowType=machine_learning" in page.url   # the training-runs view
        names = page.locator("[role=row]", has_text="default · test_efficientnet · dataset")
        expect(names).to_have_count(2)                                  # readable names, no override soup
        expect(page.get_by_text("progress_bar")).to_have_count(0)
        expect(page.get_by_text("dataset/train").first).to_be_visible()  # the Dataset column
        expect(page.get_by_text("trial lr=1e-3")).to_have_count(0)      # the jobs are folded into the sweep ...
        page.locator("[role=row]", has_text="sweep lr").locator("button[data-component-id*=runnamecellrenderer]").click()
        expect(page.get_by_text("trial lr=1e-3")).to_be_visible()       # ... and unfold under it
        expect(page.get_by_text("trial lr=3e-3")).to_be_visible()
        page.screenshot(path=str(tmp_path / "mlflow_ui.png"))
        browser.close()
