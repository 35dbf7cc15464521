"""scripts/class_mix.py separates a set's class mix from its per-class accuracy, from a run's logged reports."""

import mlflow
import pytest
import torch

from fashion.metrics import classification_report
from tests.conftest import load_script, mlflow_store

CLASSES = ["Casual Shoes", "Formal Shoes", "Tshirts"]


def run_with_reports(tmp_path, confusions: dict[str, list[list[int]]]) -> tuple[str, str]:
    """A finished run in a fresh store that logged these per-stage reports, as training does; (uri, run id)."""
    uri = mlflow_store(tmp_path, "class-mix")   # not whatever experiment an earlier test left active
    with mlflow.start_run() as run:
        for stage, confusion in confusions.items():
            report = classification_report(torch.tensor(confusion), CLASSES)
            mlflow.log_text(report.to_csv(float_format="%.4f"), f"{stage}/report_articleType.csv")
    return uri, run.info.run_id


def test_a_set_that_is_mostly_the_hard_class_is_explained_by_its_mix(tmp_path):
    class_mix = load_script("class_mix")
    # in-split: shoes 80% right, T-shirts 95%; out of time: the same per-class accuracy, 10x more shoes
    uri, run_id = run_with_reports(tmp_path, {"test": [[8, 2, 0], [2, 8, 0], [0, 5, 95]],
                                              "eval/out_of_time": [[80, 20, 0], [20, 80, 0], [0, 1, 19]]})
    output = tmp_path / "mix.md"
    assert class_mix.main([run_id, "--tracking-uri", uri, "--output", str(output),
                           "--group", "footwear=Casual Shoes,Formal Shoes"]) == 0
    found = class_mix.reports(mlflow.MlflowClient(uri), run_id, "articleType")
    row = class_mix.set_row("out_of_time", found["test"], found["eval/out_of_time"], class_mix.parse_groups(
        ["footwear=Casual Shoes,Formal Shoes"]))
    assert row["accuracy"] == pytest.approx(179 / 220)                        # far under the test's 111/120
    assert row["test at the set's mix"] == pytest.approx((160 + 0.95 * 20) / 220)   # the mix alone explains it
    assert row["set at the test's mix"] == pytest.approx(0.8 * 20 / 120 + 0.95 * 100 / 120)  # the classes did not drop
    assert row["footwear: share of rows"] == pytest.approx(200 / 220)
    assert row["footwear: share of errors"] == pytest.approx(40 / 41)
    text = output.read_text()
    assert "| | test | out_of_time |" in text and "| footwear: accuracy | 80.0 | 80.0 |" in text


def test_a_run_without_the_attribute_is_a_clear_error(tmp_path):
    class_mix = load_script("class_mix")
    uri, run_id = run_with_reports(tmp_path, {"test": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]})
    with pytest.raises(SystemExit, match="no test/report_season.csv"):
        class_mix.main([run_id, "--tracking-uri", uri, "--attribute", "season"])
    with pytest.raises(SystemExit, match="expected NAME=class"):
        class_mix.main([run_id, "--tracking-uri", uri, "--group", "footwear"])
