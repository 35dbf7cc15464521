"""`fashion-data report`: the numbers in the report are the dataset's, and it lands in MLflow."""

import mlflow
import pandas as pd

from fashion.data_report import write_data_report
from tests.conftest import tiny_overrides


def test_report_counts_classes_and_lists_what_min_count_removes(tmp_path, kaggle_folder, compose_config):
    styles = pd.read_csv(kaggle_folder / "styles.csv")
    styles.loc[0, "usage"] = None                      # one missing value
    styles.loc[1, "articleType"] = "Bow Tie"           # one class with a single sample
    styles.to_csv(kaggle_folder / "styles.csv", index=False)
    overrides = [o for o in tiny_overrides(tmp_path, kaggle_folder) if not o.startswith("labels.min_count")]
    cfg = compose_config(overrides + ["labels.min_count=2", f"report.output_dir={tmp_path / 'report'}"], config_name="data_report")

    readme, run_id = write_data_report(cfg)

    text = readme.read_text()
    summary = pd.read_csv(tmp_path / "report" / "summary.csv", index_col="attribute")
    assert summary.loc["usage", "missing"] == 1
    removed_line = next(line for line in text.splitlines() if line.startswith("- **articleType**"))
    train_classes = set(pd.read_csv(tmp_path / "report" / "class_counts.csv", index_col=0)["articleType"].dropna().index)
    assert ("Bow Tie" in removed_line) == ("Bow Tie" in train_classes)  # 1 training sample < min_count 2
    assert "Tshirts" not in removed_line
    for name in ("class_counts", "missing_values", "cooccurrence_gender_x_articleType",
                 "cooccurrence_season_x_baseColour", "samples_articleType"):
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 1000
        assert f"({name}.png)" in text

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = mlflow.get_run(run_id)
    assert run.data.tags["run_type"] == "data_report"
    assert run.data.metrics["usage/missing"] == 1
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "data_report")}
    assert "data_report/README.md" in artifacts and "data_report/class_counts.png" in artifacts
