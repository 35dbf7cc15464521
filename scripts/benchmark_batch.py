"""Catalogue scoring throughput, in one run on the same images: the bare model, fashion-predict end to
end, and Spark local[2] through the pyfunc.

    python scripts/benchmark_batch.py --bundle bundles/best                 # data/sample's 1,000 photos
    python scripts/benchmark_batch.py --bundle bundles/best --images ../shared/data/fashion-product-images-small/images --limit 5000

1. bare: onnxruntime (the bundle's model.onnx, as fashion-predict's runtime=auto) on tensors decoded
   and preprocessed beforehand: the reference, no decoding in the timed part;
2. fashion-predict: manifest -> Parquet, decoding in `workers` loader processes (0, 1, 2: the command a
   user runs; 0 decodes between the model's batches);
3. Spark local[2]: the same manifest through `mlflow.pyfunc.spark_udf` (session start-up not timed;
   skipped without the spark extra).
The bare run is repeated last; ratios are to the faster of the two. Images/s, the ratio to bare, and the
peak RSS of the process and its children. Writes docs/batch_scoring.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fashion.data.images import load_rgb  # noqa: E402
from fashion.inference.runtime import load_predictor  # noqa: E402
from fashion.predict import main as fashion_predict  # noqa: E402


class PeakRSS:
    """Peak resident memory of this process plus its children (loader workers, the JVM), sampled every 50 ms."""

    def __enter__(self) -> PeakRSS:
        self.peak, self.running = 0, True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self) -> None:
        me = psutil.Process()
        while self.running:
            try:
                total = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                continue
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()


def bare(bundle: str, paths: list[str], batch_size: int) -> tuple[float, int]:
    predictor = load_predictor(bundle=bundle, runtime="onnx", batch_size=batch_size)
    batches = [predictor.to_tensor([load_rgb(p) for p in paths[i:i + batch_size]]) for i in range(0, len(paths), batch_size)]
    predictor.probabilities(batches[0])   # warm-up
    with PeakRSS() as memory:
        started = time.perf_counter()
        for batch in batches:
            predictor.probabilities(batch)
        seconds = time.perf_counter() - started
    return len(paths) / seconds, memory.peak


def end_to_end(bundle: str, manifest: Path, out: Path, workers: int, batch_size: int) -> tuple[float, int]:
    with PeakRSS() as memory:
        started = time.perf_counter()
        fashion_predict([f"bundle={bundle}", f"manifest={manifest}", "format=parquet", f"output={out}",
                         f"workers={workers}", f"batch_size={batch_size}"])
        seconds = time.perf_counter() - started
    return len(pd.read_parquet(out)) / seconds, memory.peak


def spark(bundle: str, manifest: Path, out: Path, tmp: Path) -> tuple[float, int] | None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return None
    import mlflow

    from fashion.inference.pyfunc import log_pyfunc
    from fashion.inference.spark import local_session, score_manifest

    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    mlflow.set_experiment("benchmark")
    uri = log_pyfunc(bundle)
    session = local_session(2, "fashion-benchmark")
    try:
        with PeakRSS() as memory:
            started = time.perf_counter()
            score_manifest(session, uri, str(manifest), str(out))
            seconds = time.perf_counter() - started
        return len(pd.read_parquet(out)) / seconds, memory.peak
    finally:
        session.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--images", default=str(ROOT / "data" / "sample" / "images"))
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="fashion-predict's loader processes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "batch_scoring.md")
    args = parser.parse_args()
    paths = [str(p) for p in sorted(Path(args.images).glob("*.jpg"))[:args.limit]]
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        manifest = tmp / "manifest.parquet"
        pd.DataFrame({"path": paths}).to_parquet(manifest)
        first = bare(args.bundle, paths, args.batch_size)
        for workers in args.workers:
            rows[f"fashion-predict, manifest -> Parquet, workers={workers}"] = end_to_end(
                args.bundle, manifest, tmp / f"local{workers}", workers, args.batch_size)
        result = spark(args.bundle, manifest, tmp / "spark", tmp)
        if result:
            rows["Spark local[2], pyfunc spark_udf"] = result
        last = bare(args.bundle, paths, args.batch_size)   # again at the end: the machine's drift shows
    # The reference is the faster of the two bare runs, so a ratio is never flattered by a slow reference.
    reference = max(first[0], last[0])
    rows = {"bare onnxruntime, pre-decoded tensors (first run)": first, "bare, again after the others": last, **rows}
    size = load_predictor(bundle=args.bundle).trained.preprocessing.image_size
    lines = ["# Catalogue scoring throughput", "",
             f"Written by `python scripts/benchmark_batch.py --bundle <bundle> --limit {args.limit}`; measured in one run.", "",
             f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
             f"Python {platform.python_version()}",
             f"- Images: {len(paths):,} from `{Path(args.images).name}/`; the model's input {size}x{size}, batch {args.batch_size}",
             "", "| path | images/s | vs bare (the faster bare run) | peak RSS (GiB, with children) |", "|---|---|---|---|"]
    for name, (speed, peak) in rows.items():
        lines.append(f"| {name} | {speed:.1f} | {speed / reference:.2f} | {peak / 2**30:.2f} |")
    if "Spark local[2], pyfunc spark_udf" not in rows:
        lines += ["", "Spark: not measured (the spark extra is not installed)."]
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
