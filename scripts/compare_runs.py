"""Are two runs' results the same to the last digit? (a refactor's before/after check, issue #19)

    python scripts/compare_runs.py RUN_A RUN_B
    python scripts/compare_runs.py RUN_A RUN_B --uri-a sqlite:///old/mlruns/mlflow.db   # runs in two stores

Compares every test/, val/ and eval/ metric the first run logged; exits 1 when any differs. Then names what
else the two runs differ in that changes numbers: the config (`config.hash`), the data (`dataset.fingerprint`),
the code (git commit), the processor (`hardware`), what filled the feature cache the run read
(`feature_cache.filled_on`) and the library versions (`version.*`): one commit and config gave test/mean_acc
0.7377 on one machine and 0.7175 on another.
"""

from __future__ import annotations

import argparse
import sys

from mlflow.tracking import MlflowClient

from fashion.config import tracking_uri

PREFIXES = ("test/", "val/", "eval/")
CAUSES = ("config.hash", "dataset.fingerprint", "mlflow.source.git.commit", "git.dirty", "hardware", "feature_cache.filled_on")


def other_differences(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """The tags of `CAUSES` and `version.*` that differ between two runs' tags, as `key: a -> b`."""
    keys = [*CAUSES, *sorted({k for k in (*a, *b) if k.startswith("version.")})]
    return [f"{k}: {a.get(k, '(none)')} -> {b.get(k, '(none)')}" for k in keys if a.get(k) != b.get(k)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--uri-a", default=tracking_uri())
    parser.add_argument("--uri-b", default=None, help="default: --uri-a")
    args = parser.parse_args(argv)
    run_a = MlflowClient(args.uri_a).get_run(args.run_a).data
    run_b = MlflowClient(args.uri_b or args.uri_a).get_run(args.run_b).data
    a, b = run_a.metrics, run_b.metrics
    keys = sorted(k for k in a if k.startswith(PREFIXES))
    differ = [(k, a[k], b.get(k)) for k in keys if a[k] != b.get(k)]
    print(f"{len(keys)} metrics, {len(keys) - len(differ)} identical, {len(differ)} differ")
    for key, before, after in differ:
        print(f"  {key}: {before!r} -> {after!r}")
    others = other_differences(run_a.tags, run_b.tags)
    print("the runs differ in: " + ("; ".join(others) if others else "nothing of " + ", ".join([*CAUSES, "version.*"])))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
