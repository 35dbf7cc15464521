"""`fashion-promote name=tagger`: the promotion gate between the registry's challenger and champion.

Both versions are scored on the same fixed evaluation sets (`sets`: Kaggle-layout folders, as
fashion-eval takes them). The challenger becomes champion only when no attribute's accuracy on any
set drops by more than `margin` (absolute, 0.01 = one point); without a champion yet (the alias names
no version), it is promoted, but a champion that cannot be fetched stops the gate.
The numbers and the decision are printed and logged as an MLflow run (tag `run_type=promotion`,
metrics `<set>/<attribute>/{champion,challenger,delta}`); the serving API picks the new champion up on
`POST /v1/admin/reload`. Exit status: 0 promoted (or, with dry_run, would be), 1 refused, 2 bad input.
Keys: conf/promote.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fashion.cli import tool_config
from fashion.config import refused_credentials
from fashion.data.eval_sets import EvalSource
from fashion.inference.runtime import Runtime, load_predictor
from fashion.tracking.registry import (CHALLENGER, CHAMPION, RegisteredBundle, check_names, fetch_bundle, has_alias,
                                      set_alias)


def main(argv: list[str] | None = None) -> int:
    cfg = tool_config("fashion-promote", "promote", sys.argv[1:] if argv is None else argv, promote)
    return promote(**cfg)


def accuracies(bundle: RegisteredBundle, sets: dict[str, EvalSource], runtime: Runtime) -> dict[str, float]:
    """Per set and attribute, the accuracy of what the API serves: the taxonomy levels decoded together."""
    from fashion.inference.batch import lanes_for
    from fashion.inference.evaluation import evaluate

    predictor = load_predictor(bundle=bundle.bundle, runtime=runtime, top_k=1, batch_size=32, threads=1)   # a thread per lane
    scores = {}
    for name, source in sets.items():
        values, _, _ = evaluate(predictor, source, lanes=lanes_for(predictor))
        for attribute in predictor.attributes:
            served = next((values[key] for key in (f"eval/{attribute}/acc_taxonomy", f"eval/{attribute}/acc") if key in values), None)
            if served is not None:
                scores[f"{name}/{attribute}"] = served
    return scores


def gate(champion: dict[str, float], challenger: dict[str, float], margin: float) -> tuple[bool, list[str]]:
    """(passed, the attributes that dropped by more than `margin`); an attribute the challenger no longer
    predicts counts as a drop."""
    drops = [key for key, before in champion.items() if before - challenger.get(key, float("-inf")) > margin]
    return not drops, drops


def promote(name: str, sets: dict[str, dict[str, Any]], margin: float = 0.01, champion: str = CHAMPION,
            challenger: str = CHALLENGER, dry_run: bool = False, runtime: Runtime = "auto",
            tracking_uri: str | None = None, model_cache: str = "model_cache", mlflow: bool = True) -> int:
    """Scores both versions on `sets`, moves `champion` to the challenger when the gate passes."""
    from mlflow.exceptions import MlflowException   # here: `--help` and a refused key answer without MLflow
    if not sets:
        print("fashion-promote: sets is empty: name at least one evaluation folder, e.g. "
              "+sets.holdout.root=/data/held-out-photos", file=sys.stderr)
        return 2
    try:
        check_names(name, {"champion": champion, "challenger": challenger})
    except ValueError as err:
        print(f"fashion-promote: {err}", file=sys.stderr)
        return 2
    step = "sets"
    try:
        sources = {set_name: EvalSource(**spec) for set_name, spec in sets.items()}
        for set_name, source in sources.items():   # a folder that is not there, or holds no photo: before any download
            step = f"sets.{set_name}"
            source.table((), check_images=False)
        step = f"the challenger, models:/{name}@{challenger}"
        contender = fetch_bundle(f"models:/{name}@{challenger}", tracking_uri, Path(model_cache))
        step = f"the champion, models:/{name}@{champion}"   # none yet only when the alias names none:
        incumbent = fetch_bundle(f"models:/{name}@{champion}", tracking_uri, Path(model_cache)) \
            if has_alias(name, champion, tracking_uri) else None   # one that cannot be fetched stops the gate
    except (MlflowException, TypeError, ValueError, OSError) as err:
        print(f"fashion-promote: {step}: {refused_credentials(tracking_uri, err) or err}", file=sys.stderr)
        return 2
    new = accuracies(contender, sources, runtime)
    old = accuracies(incumbent, sources, runtime) if incumbent else {}
    passed, drops = gate(old, new, margin)
    print_comparison(old, new, incumbent, contender)
    verdict = ("promote" if passed else "refuse") + (" (dry run)" if dry_run else "")
    reason = (f"no attribute dropped by more than {margin:.3f}" if incumbent else "no champion yet") if passed else \
        f"dropped by more than {margin:.3f}: {', '.join(drops)}"
    print(f"decision: {verdict}: {contender.label} {'->' if passed else 'stays'} {champion}; {reason}")
    if passed and not dry_run:
        set_alias(name, champion, contender.version, tracking_uri)
    if mlflow:
        log_promotion(tracking_uri, name, incumbent, contender, old, new, margin, verdict, reason, sets)
    return 0 if passed else 1


def print_comparison(old: dict[str, float], new: dict[str, float], incumbent: RegisteredBundle | None,
                     contender: RegisteredBundle) -> None:
    print(f"{'set/attribute':40s} {incumbent.label if incumbent else 'no champion':>14s} {contender.label:>14s}  delta")
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        delta = f"{after - before:+.4f}" if before is not None and after is not None else ""
        print(f"{key:40s} {'' if before is None else f'{before:.4f}':>14s} {'' if after is None else f'{after:.4f}':>14s}  {delta}")


def log_promotion(tracking_uri: str | None, name: str, incumbent: RegisteredBundle | None, contender: RegisteredBundle,
                  old: dict[str, float], new: dict[str, float], margin: float, verdict: str, reason: str,
                  sets: dict[str, dict[str, Any]]) -> None:
    import mlflow as tracking

    from fashion.tracking.run import tool_run

    with tool_run(tracking_uri, "fashion", f"promotion · {name} · {contender.label}", "promotion",
                  {"decision": verdict, "reason": reason, "challenger": contender.label,
                   "champion": incumbent.label if incumbent else "none"}):
        tracking.log_params({"margin": margin, **{f"set.{k}": str(v) for k, v in sets.items()}})
        metrics = {f"{key}/challenger": value for key, value in new.items()}
        metrics |= {f"{key}/champion": value for key, value in old.items()}
        metrics |= {f"{key}/delta": new[key] - value for key, value in old.items() if key in new}
        tracking.log_metrics(metrics)


if __name__ == "__main__":
    sys.exit(main())
