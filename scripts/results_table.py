"""Write docs/results.md from the MLflow runs of the experiment configs: nothing in it is typed by hand.

    python scripts/results_table.py                       # local store (mlruns/), experiment "fashion"
    python scripts/results_table.py --tracking-uri http://mlflow:5000 --output docs/results.md

Which runs count: finished runs tagged `recipe` (the experiment configs set it), one section per data
source (the run's `dataset.root`: the whole catalogue, the subset; runs on the bundled smoke sample are
left out). Per source, recipe and backbone the newest run is shown, with its in-split test accuracy and,
side by side, every evaluation set it logged (`eval/<set>/`: out of time, cross-resolution) with that
set's majority-class floor. Published numbers and targets come from docs/published.yaml (or a
run's own `published/<attribute>`, `target/<attribute>` tags, which older experiment configs set); runs
tagged `study=loss_weighting` make the ablation section. Everything after the `HISTORY` marker in the
existing output (the hand-written recipe history) is kept.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import mlflow
import pandas as pd
import yaml

from fashion.config import PROJECT_ROOT, tracking_uri
from fashion.data.styles import ATTRIBUTES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from outside_split_table import cell, eval_sets_of, rows_of  # noqa: E402

REPRODUCTIONS = ("vgg16_7heads", "efficientnetb0_6heads", "resnet18_4heads", "convnext_tiny_4heads", "linear_probe")
OURS = ("best_cpu", "best_gpu")
REFERENCE = yaml.safe_load((PROJECT_ROOT / "docs" / "published.yaml").read_text()) or {}
HISTORY = "<!-- recipe history: written by hand, kept by scripts/results_table.py -->"
SOURCES = {   # the last folder of a run's dataset.root -> (its name here, what that data is), in the order shown
    "fashion-product-images-small": ("the whole catalogue", "`data=catalogue`: 38,800 products of every catalogue year "
                                     "at 60x80, true 3:4 aspect; the 2013, 2014, 2018 and 2019 catalogues are held out "
                                     "of train, validation and test as the out-of-time set"),
    "fashion-product-images-subset": ("the subset", "`data=subset`: the 9,583-image subset, 224x224 photos squashed "
                                      "from 3:4, mostly one catalogue year"),
}
SMOKE = "sample"   # data/sample, the bundled smoke sample: not a result


def load_runs(tracking_uri: str, experiment: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=[experiment], order_by=["start_time DESC"])
    if runs.empty:
        return runs
    runs = runs[runs["status"] == "FINISHED"].copy()
    for column in ("tags.recipe", "tags.study", "tags.hardware", "params.backbone.name", "tags.seed", "tags.dataset.root"):
        if column not in runs:
            runs[column] = None
    runs["source"] = [source_of(root) for root in runs["tags.dataset.root"]]
    return runs[runs["source"] != SMOKE]


def data_name(run: pd.Series) -> str:
    return SOURCES.get(run["source"], (text_of(run["source"]),))[0]


def source_of(root: object) -> str:
    """The data a run trained on, by the last folder of its dataset root ("" where the run did not say)."""
    return "" if missing(root) else Path(str(root)).name


def missing(value: object) -> bool:
    """MLflow's DataFrame has None or NaN where a run lacks a tag, param or metric."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def percent(value: object) -> str:
    return "–" if missing(value) else f"{100 * float(value):.2f}"


def weights_of(run: pd.Series) -> str:
    if str(run.get("params.backbone.packaged_weights")) not in ("None", "nan", ""):
        return f"packaged ({cell(run['params.backbone.packaged_weights'])})"
    if str(run.get("params.backbone.checkpoint_path")) not in ("None", "nan", ""):
        return "local checkpoint"
    if str(run.get("params.backbone.pretrained")) == "True":
        return "timm hub"
    return "RANDOM (not a reproduction)"


def wall_minutes(run: pd.Series) -> str:
    seconds = run.get("metrics.time/total_s")
    if missing(seconds):
        seconds = (run["end_time"] - run["start_time"]).total_seconds()
    return f"{seconds / 60:.1f}"


def attributes_of(run: pd.Series) -> list[str]:
    return [a for a in ATTRIBUTES if f"metrics.test/{a}/acc" in run and not pd.isna(run[f"metrics.test/{a}/acc"])]


def tag_value(run: pd.Series, name: str) -> float | None:
    value = run.get(f"tags.{name}")
    if missing(value):   # published/gender -> docs/published.yaml's <recipe>.published.gender
        kind, _, attribute = name.partition("/")
        value = (REFERENCE.get(run.get("tags.recipe")) or {}).get(kind, {}).get(attribute)
    return None if missing(value) else float(value) / 100


def newest_per_recipe(runs: pd.DataFrame, recipes: tuple[str, ...]) -> list[pd.Series]:
    chosen = runs[runs["tags.recipe"].isin(recipes) & runs["tags.study"].isna()]
    chosen = chosen.drop_duplicates(subset=["tags.recipe", "params.backbone.name"], keep="first")
    order = {r: i for i, r in enumerate(recipes)}
    return sorted((row for _, row in chosen.iterrows()), key=lambda r: order[r["tags.recipe"]])


def run_table(rows: list[pd.Series]) -> list[str]:
    lines = ["| data | recipe | backbone | weights | test images | mean acc | wall (min) | hardware | run id |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in rows:
        lines.append(
            f"| {data_name(run)} | {run['tags.recipe']} | {text_of(run['params.backbone.name'])} | {weights_of(run)} | "
            f"{int(run.get('metrics.data/split_size/test', 0) or 0)} | {percent(run.get('metrics.test/mean_acc'))} | "
            f"{wall_minutes(run)} | {run['tags.hardware'] or '?'} | `{run['run_id']}` |"
        )
    return lines


def attribute_table(run: pd.Series) -> list[str]:
    """Per attribute: published number and target next to what the run measured on its test split and, where
    it logged evaluation sets, on each of them against the goal for photos outside the split."""
    sets = eval_sets_of(run)
    header = ["attribute", "published", "target", "test acc", "macro-F1", *(["goal outside the split"] if sets else []), *sets]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for a in attributes_of(run):
        published, target, goal = (tag_value(run, f"{kind}/{a}") for kind in ("published", "target", "target_outside"))
        cells = [a, percent(published), percent(target), percent(run[f"metrics.test/{a}/acc"]) + verdict(run[f"metrics.test/{a}/acc"], target),
                 percent(run.get(f"metrics.test/{a}/f1"))]
        if sets:
            cells += [percent(goal), *(percent(run.get(f"metrics.eval/{s}/{a}/acc")) + verdict(run.get(f"metrics.eval/{s}/{a}/acc"), goal)
                                       for s in sets)]
        lines.append("| " + " | ".join(cells) + " |")
    source = run.get("tags.published_source")
    if missing(source):
        source = (REFERENCE.get(run.get("tags.recipe")) or {}).get("published_source")
    if isinstance(source, str) and source:
        lines += ["", f"Published numbers: {source}"]
    return lines


def verdict(value: object, target: float | None) -> str:
    if target is None or missing(value):
        return ""
    return " (met)" if float(value) >= target else " (**missed**)"


def summary_table(ours: list[pd.Series], reproductions: list[pd.Series]) -> list[str]:
    """One row per attribute: the best public number we know, our best recipe, every reproduction."""
    runs = ours + reproductions
    header = ["attribute", "best published", *(f"{r['tags.recipe']} ({short_backbone(r)})" for r in runs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for a in ATTRIBUTES:
        published = next((tag_value(r, f"published/{a}") for r in ours if tag_value(r, f"published/{a}") is not None), None)
        cells = [percent(r.get(f"metrics.test/{a}/acc")) + ("†" if grouped(r, a) else "") for r in runs]
        if any(c != "–" for c in cells):
            lines.append(f"| {a} | {percent(published)} | " + " | ".join(cells) + " |")
    return lines + ["", "† classes grouped by the recipe (`labels.mappings`, e.g. colour families): not the raw classes."]


def grouped(run: pd.Series, attribute: str) -> bool:
    prefix = f"params.labels.mappings.{attribute}."
    return any(k.startswith(prefix) and isinstance(v, str) and v for k, v in run.items())


def tried_section(runs: pd.DataFrame) -> list[str]:
    """Every run behind our recipes (tagged `trial`, or an earlier run of a recipe), oldest first:
    what was tried, including what did not help."""
    if "tags.trial" not in runs:
        runs = runs.assign(**{"tags.trial": None})
    tried = runs[(runs["tags.trial"].notna() | runs["tags.recipe"].isin(OURS)) & runs["tags.study"].isna()].iloc[::-1]
    if tried.empty:
        return ["No runs."]
    header = ["run id", "data", "recipe", "trial", *ATTRIBUTES, "mean", "wall (min)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, run in tried.iterrows():
        cells = [percent(run.get(f"metrics.test/{a}/acc")) for a in ATTRIBUTES]
        lines.append(f"| `{run['run_id'][:8]}` | {data_name(run)} | "
                     f"{text_of(run['tags.recipe'])} | {text_of(run['tags.trial'])} | "
                     + " | ".join(cells) + f" | {percent(run.get('metrics.test/mean_acc'))} | {wall_minutes(run)} |")
    return lines


def text_of(value: object) -> str:
    return "–" if missing(value) or value == "" else cell(value)


def short_backbone(run: pd.Series) -> str:
    return cell(run["params.backbone.name"]).replace("tf_efficientnet_", "")


def ablation_section(runs: pd.DataFrame) -> list[str]:
    study = runs[runs["tags.study"] == "loss_weighting"]
    if study.empty:
        return ["No runs tagged `study=loss_weighting` yet: `scripts/reproduce.sh ablation`."]
    study = study.assign(weighting=study["params.loss_weighting._target_"].str.rsplit(".", n=1).str[-1])
    attributes = [a for a in ATTRIBUTES if f"metrics.test/{a}/acc" in study and study[f"metrics.test/{a}/acc"].notna().all()]
    lines = ["| weighting | seeds | " + " | ".join(attributes) + " | mean |", "|---|---|" + "---|" * (len(attributes) + 1)]
    stats = {}
    for weighting, group in study.groupby("weighting"):
        cols = [f"metrics.test/{a}/acc" for a in attributes] + ["metrics.test/mean_acc"]
        mean, std = group[cols].mean(), group[cols].std(ddof=1)
        stats[weighting] = (mean, std, len(group))
        cells = [f"{100 * m:.2f} ± {100 * (0 if math.isnan(s) else s):.2f}" for m, s in zip(mean, std)]
        lines.append(f"| {weighting} | {len(group)} | " + " | ".join(cells) + " |")
    if "FixedWeighting" in stats:
        base_mean, base_std, _ = stats["FixedWeighting"]
        lines += ["", "Difference to fixed weighting, in points; **bold** where it exceeds twice the larger seed-to-seed "
                  "standard deviation of the two (with 2 seeds per arm this is a rough screen, not a test):", "",
                  "| weighting | " + " | ".join(attributes) + " | mean |", "|---|" + "---|" * (len(attributes) + 1)]
        for weighting, (mean, std, _) in stats.items():
            if weighting == "FixedWeighting":
                continue
            cells = []
            for (column, m), s, bm, bs in zip(mean.items(), std, base_mean, base_std):
                diff, noise = 100 * (m - bm), 200 * max(0 if math.isnan(s) else s, 0 if math.isnan(bs) else bs)
                cells.append(f"**{diff:+.2f}**" if abs(diff) > noise and noise > 0 else f"{diff:+.2f}")
            lines.append(f"| {weighting} | " + " | ".join(cells) + " |")
    run_ids = ", ".join(f"`{r[:8]}`" for r in study["run_id"])
    lines += ["", f"Runs: {run_ids}. Recipe: {study.iloc[0].get('tags.study_recipe', '?')}."]
    return lines


def render(runs: pd.DataFrame) -> str:
    lines = [
        "# Results",
        "",
        "Generated by `python scripts/results_table.py` from the MLflow runs; do not edit by hand.",
        "",
        "One section per data source. Accuracies are on the test split of the framework's fixed, near-duplicate-grouped",
        "split, and, where a run logged evaluation sets, on those sets beside it. Published numbers are on the full 44k",
        "dataset (other splits, sometimes other class sets): context, not a like-for-like comparison. Where a recipe names a",
        "hub backbone (VGG16, ResNet18, ...) and no hub was reachable, the run used the offline `tf_efficientnet_lite0`",
        "ImageNet weights with the recipe otherwise unchanged: the backbone column says which. Top-k accuracy per",
        "attribute: `fashion-eval` on a bundle.",
        "",
    ]
    shown: list[pd.Series] = []
    known = [s for s in SOURCES if s in set(runs["source"])]
    for source in known + sorted(set(runs["source"]) - set(known)):
        group = runs[runs["source"] == source]
        ours, reproductions = newest_per_recipe(group, OURS), newest_per_recipe(group, REPRODUCTIONS)
        if ours or reproductions:
            lines += data_section(source, ours, reproductions)
            shown += ours + reproductions
    if not any(r["tags.recipe"] == "best_gpu" for r in shown):
        lines += ["`best_gpu` has no run in this store (no GPU was available where the table was made).", ""]
    lines += ["## All runs in this table", ""] + run_table(shown) + [""]
    lines += ["## Runs behind our recipes", "",
              "Every run tagged `trial` or of a `best_*` recipe, oldest first (the newest per recipe and data is the one "
              "above); overrides are in each run's `mlflow.runName`.", ""] + tried_section(runs) + [""]
    lines += ["## Loss weighting ablation", ""] + ablation_section(runs) + [""]
    return "\n".join(lines)


def data_section(source: str, ours: list[pd.Series], reproductions: list[pd.Series]) -> list[str]:
    runs = ours + reproductions
    name, about = SOURCES.get(source, (f"data at `{source}`" if source else "data the runs did not name", ""))
    sizes = sorted({int(sum(r.get(f"metrics.data/split_size/{s}", 0) or 0 for s in ("train", "val", "test"))) for r in runs})
    lines = [f"## On {name}", "", f"{about}{'; ' if about else ''}images in the runs' train, validation and test "
             f"splits: {', '.join(f'{n:,}' for n in sizes)}.", "",
             "### Test accuracy per attribute", "",
             "Best published: the best public numbers on the full dataset known to issue #3 (class sets differ).", "",
             *summary_table(ours, reproductions), ""]
    beside = [r for r in runs if eval_sets_of(r)]
    if beside:
        lines += ["### Inside and outside the split", "",
                  "Accuracy (%) on the in-split test and on each evaluation set the run logged: `out_of_time`, catalogue "
                  "years the run never saw; `cross_resolution`, the subset's 224px photos (true aspect restored) of "
                  "products it neither trained nor validated on. Below each set, the accuracy of always answering its "
                  "most common class: the floor a model must beat there (season follows the catalogue year, so only its "
                  "out-of-time row says how it transfers to a new catalogue).", "",
                  "| recipe | run | set | " + " | ".join(ATTRIBUTES) + " |", "|---" * (len(ATTRIBUTES) + 3) + "|"]
        for run in beside:
            lines += [f"| {run['tags.recipe']} | `{run['run_id'][:8]}` | {stage} | " + " | ".join(values) + " |"
                      for stage, values in rows_of(run)]
        lines += [""]
    if ours:
        lines += ["### Our recipes against the targets", ""]
    for run in ours:
        lines += [f"#### {run['tags.recipe']} ({run['params.backbone.name']}, {run['tags.hardware']}, {wall_minutes(run)} min)", ""]
        lines += attribute_table(run) + [""]
    if reproductions:
        lines += ["### Reproductions", ""]
    for run in reproductions:
        lines += [f"#### {run['tags.recipe']} on {text_of(run['params.backbone.name'])} ({weights_of(run)})", ""]
        lines += attribute_table(run) + [""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=tracking_uri())
    parser.add_argument("--experiment", default="fashion")
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "docs" / "results.md")
    args = parser.parse_args()
    runs = load_runs(args.tracking_uri, args.experiment)
    if runs.empty:
        raise SystemExit(f"no finished runs in experiment {args.experiment!r} at {args.tracking_uri}")
    text = render(runs)
    if args.output.is_file() and HISTORY in args.output.read_text():
        text += "\n" + HISTORY + args.output.read_text().split(HISTORY, 1)[1]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
