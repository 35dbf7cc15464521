"""scripts/ensemble_check.py scores what training scored, and averages only what can be averaged."""


import mlflow
import pytest
import torch

from fashion.train import train
from tests.conftest import load_script, tiny_overrides


def scored(probs: list[list[float]], targets: list[int], classes: list[str]) -> dict:
    return {"probs": {"gender": torch.tensor(probs)}, "targets": {"gender": torch.tensor(targets)},
            "classes": {"gender": classes}}


def test_the_ensemble_averages_probabilities_and_skips_attributes_classified_differently():
    ensemble_check = load_script("ensemble_check")
    # each run alone gets one of the two images right; their average gets both right
    runs = {"a": scored([[0.9, 0.1], [0.6, 0.4]], [0, 1], ["Men", "Women"]),
            "b": scored([[0.4, 0.6], [0.1, 0.9]], [0, 1], ["Men", "Women"]),
            "c": scored([[0.9, 0.1], [0.1, 0.9]], [0, 1], ["Boys", "Girls"])}
    assert ensemble_check.accuracy_row("a", ("a",), runs)["gender"] == pytest.approx(50.0)
    assert ensemble_check.accuracy_row("b", ("b",), runs)["gender"] == pytest.approx(50.0)
    assert ensemble_check.accuracy_row("a+b", ("a", "b"), runs)["gender"] == pytest.approx(100.0)
    assert "gender" not in ensemble_check.accuracy_row("a+c", ("a", "c"), runs)


def test_single_runs_repeat_their_logged_test_accuracy_and_other_splits_are_refused(tmp_path, kaggle_folder, compose_config, capsys):
    tracking_uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    for name, extra in (("seed1", ["seed=1"]), ("seed2", ["seed=2"]), ("other_split", ["split.seed=5"])):
        train(compose_config(tiny_overrides(tmp_path, kaggle_folder) + [
            f"paths.output_dir={tmp_path / name}", "trainer.limit_train_batches=3", "callbacks.early_stopping=null", *extra]))
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["fashion"], order_by=["start_time ASC"])
    seed1, seed2, other = runs["run_id"]

    ensemble_check = load_script("ensemble_check")
    output = tmp_path / "ensembles.md"
    assert ensemble_check.main([seed1, seed2, "--tracking-uri", tracking_uri, "--output", str(output)]) == 0
    accuracy_table = output.read_text().split("Macro-F1")[0]
    lines = {line.split(" | ")[0].strip("| "): line for line in accuracy_table.splitlines() if line.startswith("| ")}
    for run_id in (seed1, seed2):
        logged = runs.set_index("run_id").loc[run_id]
        cells = lines[run_id[:8]].strip("| ").split(" | ")[1:8]
        assert [float(c) for c in cells] == pytest.approx(
            [100 * logged[f"metrics.test/{a}/acc"] for a in ("gender", "masterCategory", "subCategory", "articleType",
                                                               "baseColour", "season", "usage")], abs=0.006)
    assert f"{seed1[:8]} + {seed2[:8]}" in lines

    with pytest.raises(SystemExit):
        ensemble_check.main([seed1, other, "--tracking-uri", tracking_uri])
    assert "another split" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ensemble_check.main([seed1, seed1, "--tracking-uri", tracking_uri])
    assert "more than once" in capsys.readouterr().err
