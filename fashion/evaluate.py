"""`fashion-eval`: a bundle or checkpoint, evaluated on any folder in the Kaggle layout.

    fashion-eval bundle=bundles/best root=../shared/data/fashion-product-images-subset
    fashion-eval checkpoint=best.ckpt root=/data/new-catalogue output=eval_out/

The evaluation sets a training run scores (`data.out_of_time_years`, `data.eval_sets`) are the same calls:
    fashion-eval bundle=b root=../shared/data/fashion-product-images-small years=[2013,2014,2018,2019]
    fashion-eval bundle=b root=../shared/data/fashion-product-images-subset true_aspect=0.75 exclude_split=split.csv
(`split.csv`: the run's `data/split.csv` artifact; its train and val products are left out.) Keys: conf/eval.yaml.

Labels are encoded with the *training* vocabularies: a label the model never learned is counted
(`unseen/<attribute>`) and left out of that attribute's metrics, never a crash. Prints per attribute
accuracy (each head on its own, and with the taxonomy levels decoded together as served), macro-F1,
top-5, calibration error (ECE, 15 bins) and, at the model's thresholds, coverage (share accepted) and
the precision of the accepted tags; counts predictions whose articleType/subCategory/masterCategory
never occur together in the training data (`taxonomy/inconsistent*`). Writes confusion matrices,
per-class reports, reliability diagrams and coverage curves, and logs an MLflow run
(tag `run_type=evaluation`) that points at the training run (`source_run_id`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fashion.cli import tool_config
from fashion.inference.runtime import Runtime, load_predictor
from fashion.validation import Aspect, AtLeastOne

if TYPE_CHECKING:   # the scoring's libraries (torch, torchmetrics, matplotlib, MLflow: 5-6 s) load once the command line is read
    import pandas as pd

def main(argv: list[str] | None = None) -> int:
    cfg = tool_config("fashion-eval", "eval", sys.argv[1:] if argv is None else argv, evaluate_folder,
                      renamed={"data": "root"})
    return evaluate_folder(**cfg)


def evaluate_folder(root: str, bundle: str | None = None, checkpoint: str | None = None, styles_file: str = "styles.csv",
                    true_aspect: Aspect | None = None, years: list[int] | None = None, exclude_split: str | None = None,
                    output: str = "eval_output", batch_size: AtLeastOne = 32, runtime: Runtime = "auto", taxonomy: bool = True,
                    mlflow: bool = True,
                    tracking_uri: str | None = None, experiment: str = "fashion") -> int:
    """Scores the model on the folder, writes reports under `output`, logs an evaluation run; 2 on bad input."""
    import pandas as pd

    from fashion.data.eval_sets import EvalSource
    from fashion.data.split import load_split
    from fashion.inference.batch import lanes_for
    from fashion.inference.evaluation import evaluate, write_reports

    try:
        predictor = load_predictor(bundle=bundle, checkpoint=checkpoint, runtime=runtime, top_k=5, batch_size=batch_size,
                                   taxonomy=taxonomy, threads=1)   # onnxruntime: a thread per lane, a lane per core
    except (ValueError, OSError) as err:  # a refused, tampered or missing bundle/checkpoint: say why, no traceback
        print(f"fashion-eval: cannot load the model: {err}", file=sys.stderr)
        return 2
    out = Path(output)
    try:   # before the scoring, which can take minutes: a folder that cannot be made is known now
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"fashion-eval: cannot write to {out}: {err}", file=sys.stderr)
        return 2
    try:
        split = load_split(exclude_split) if exclude_split else pd.Series(dtype=str)
    except (ValueError, OSError) as err:
        print(f"fashion-eval: cannot read exclude_split: {err}", file=sys.stderr)
        return 2
    try:   # the run is logged after the scoring: a server that does not answer, or refuses the request, is known now
        if mlflow:
            from fashion.tracking.run import ensure_experiment
            ensure_experiment(tracking_uri, experiment)
    except ValueError as err:
        print(f"fashion-eval: {err} (or mlflow=false)", file=sys.stderr)
        return 2
    exclude = set(split.index[split.isin(["train", "val"])])
    source = EvalSource(root=root, styles_file=styles_file, true_aspect=true_aspect, years=years)
    try:
        values, counts, metrics = evaluate(predictor, source, exclude, lanes_for(predictor))
    except (ValueError, FileNotFoundError) as err:
        print(f"fashion-eval: {err}", file=sys.stderr)
        return 2
    mix_ups = write_reports(metrics, predictor, out)
    (out / "metrics.json").write_text(json.dumps({**values, **counts}, indent=2))
    print_table(predictor.attributes, values, counts)
    print_mix_ups(mix_ups, out)
    print(f"images evaluated: {counts['images']}, rows without image: {counts['rows_without_image']}, unreadable: {counts['unreadable_images']}")
    if mlflow:
        settings = {"model": bundle or checkpoint, "data": root, "runtime": predictor.runtime, "taxonomy": taxonomy,
                    "true_aspect": true_aspect,
                    "years": years, "exclude_split": exclude_split}
        log_evaluation(tracking_uri, experiment, bundle, settings, values, counts, out)
    return 0


def print_table(attributes: list[str], values: dict[str, float], counts: dict) -> None:
    columns = [("acc", "acc"), ("acc_taxonomy", "acc+tax"), ("f1", "macro-F1"), ("top5", "top-5"), ("ece", "ECE"),
               ("coverage", "coverage"), ("accepted_precision", "prec@acc")]
    print(f"{'attribute':<15}" + "".join(f" {title:>9}" for _, title in columns) + f" {'unseen':>7}")
    for attribute in attributes:
        if f"eval/{attribute}/acc" not in values:   # a folder that labels some attributes only
            print(f"{attribute:<15} (no product of the folder is labelled with it)")
            continue
        cells = [values.get(f"eval/{attribute}/{key}") for key, _ in columns]
        print(f"{attribute:<15}" + "".join(f" {'':>9}" if v is None else f" {v:9.4f}" for v in cells)
              + f" {counts[f'unseen/{attribute}']:7d}")
    if "taxonomy/inconsistent" in values:
        print(f"taxonomy: {values['taxonomy/inconsistent']:.0f} inconsistent predictions decoded jointly (as served), "
              f"{values['taxonomy/inconsistent_independent']:.0f} with each head on its own")


def print_mix_ups(mix_ups: dict[str, pd.DataFrame], output: Path, most: int = 3) -> None:
    """Each attribute's most frequent mix-ups, the first thing to read after the accuracies."""
    if not any(len(pairs) for pairs in mix_ups.values()):
        return
    print(f"most mixed up (true -> predicted: count; every pair in {output}/confusions_<attribute>.csv):")
    for attribute, pairs in mix_ups.items():
        if len(pairs):
            print(f"  {attribute}: " + ", ".join(f"{row.true} -> {row.predicted}: {row.count}"
                                                 for row in pairs.head(most).itertuples()))


def log_evaluation(tracking_uri: str, experiment: str, bundle: str | None, settings: dict, values: dict, counts: dict,
                   output: Path) -> None:
    import mlflow

    from fashion.tracking.run import tool_run

    source_run = source_run_id(bundle)
    tags = {"eval.data": str(Path(settings["data"]).resolve())}
    if source_run:
        tags["source_run_id"] = source_run
    with tool_run(tracking_uri, experiment, f"eval {Path(settings['data']).name}", "evaluation", tags) as run:
        mlflow.log_params(settings)
        mlflow.log_metrics(values)
        mlflow.log_metrics({f"eval_data/{k}": float(v) for k, v in counts.items()})
        mlflow.log_artifacts(str(output), artifact_path="evaluation")
    print(f"MLflow evaluation run {run.info.run_id}" + (f" (of training run {source_run})" if source_run else ""))


def source_run_id(bundle: str | None) -> str | None:
    if not bundle:
        return None
    manifest = Path(bundle) / "manifest.json"
    return json.loads(manifest.read_text()).get("source", {}).get("mlflow_run_id") if manifest.is_file() else None


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
