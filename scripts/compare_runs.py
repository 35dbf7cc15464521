"""Are two runs' results the same to the last digit? (a refactor's before/after check, issue #19)

    python scripts/compare_runs.py RUN_A RUN_B
    python scripts/compare_runs.py RUN_A RUN_B --uri-a sqlite:///old/mlruns/mlflow.db   # runs in two stores

Compares every test/, val/ and eval/ metric the first run logged; exits 1 when any differs.
"""

from __future__ import annotations

import argparse
import sys

from mlflow.tracking import MlflowClient

from fashion.config import tracking_uri

PREFIXES = ("test/", "val/", "eval/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--uri-a", default=tracking_uri())
    parser.add_argument("--uri-b", default=None, help="default: --uri-a")
    args = parser.parse_args(argv)
    a = MlflowClient(args.uri_a).get_run(args.run_a).data.metrics
    b = MlflowClient(args.uri_b or args.uri_a).get_run(args.run_b).data.metrics
    keys = sorted(k for k in a if k.startswith(PREFIXES))
    differ = [(k, a[k], b.get(k)) for k in keys if a[k] != b.get(k)]
    print(f"{len(keys)} metrics, {len(keys) - len(differ)} identical, {len(differ)} differ")
    for key, before, after in differ:
        print(f"  {key}: {before!r} -> {after!r}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
