"""Catalogue scoring throughput, in one run on the same images: the bare model, fashion-predict end to
end, and Spark local[2] through the pyfunc.

    python scripts/benchmark_batch.py --bundle bundles/best                 # data/sample's 1,000 photos
    python scripts/benchmark_batch.py --bundle bundles/best --images ../shared/data/fashion-product-images-small/images --limit 5000

1. bare: onnxruntime (the bundle's model.onnx, as fashion-predict's runtime=auto) on tensors decoded
   and preprocessed beforehand, no decoding in the timed part, run two ways: one session over every
   core, one batch at a time (onnxruntime's default), and one intra-op thread per core with one batch
   per core at once (how fashion-predict runs it). The faster is the reference;
2. fashion-predict end to end: the command a user runs, manifest -> Parquet, start-up included, with its
   default lanes and with `workers` loader processes (--workers);
3. Spark local[2]: the same manifest through `mlflow.pyfunc.spark_udf` (session start-up not timed;
   skipped without the spark extra), once.
A shared machine's speed drifts by 10-20% over minutes, so 1 and 2 are interleaved for `--rounds` rounds
and each path reports its best round (and the median); each round's ratio divides fashion-predict by the
mean of the per-core bare runs just before and just after it, so drift within the round cancels.
fashion-predict runs in this process: Python's imports (about 5 s on 2 cores) are not in its time,
its configuration, bundle loading and onnxruntime session are.
Images/s, the ratio to the reference, CPU time per photo (the pipeline's own work beside the model's, which a
machine's drift moves far less than the wall clock), and peak RSS of the process and its children.
Writes docs/batch_scoring.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnxruntime
import pandas as pd
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fashion.data.images import load_rgb  # noqa: E402
from fashion.inference.runtime import load_predictor  # noqa: E402
from fashion.predict import main as fashion_predict  # noqa: E402
from fashion.machine import usable_cores


def cpu_seconds() -> float:
    """CPU time of this process's threads and of its children that have ended (loader workers), user + system."""
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


class PeakRSS:
    """Peak resident memory of this process plus its children (loader workers, the JVM), sampled every 50 ms;
    and the CPU time spent meanwhile (`cpu`: a machine's drift moves it far less than the wall clock)."""

    def __enter__(self) -> PeakRSS:
        self.peak, self.running = 0, True
        self.baseline = psutil.Process().memory_info().rss   # what the process held before the measured path
        self.cpu_before = cpu_seconds()
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
        self.cpu = cpu_seconds() - self.cpu_before
        self.running = False
        self.thread.join()


def decoded(bundle: str, paths: list[str], batch_size: int) -> list[torch.Tensor]:
    predictor = load_predictor(bundle=bundle, runtime="onnx", batch_size=batch_size)
    return [predictor.to_tensor([load_rgb(p) for p in paths[i:i + batch_size]]) for i in range(0, len(paths), batch_size)]


def bare(bundle: str, batches: list[torch.Tensor], lanes: int) -> tuple[float, int]:
    """The model alone on pre-decoded batches: `lanes` batches at once with cores/lanes threads each."""
    predictor = load_predictor(bundle=bundle, runtime="onnx", threads=max(1, usable_cores() // lanes))
    predictor.probabilities(batches[0])   # warm-up
    with PeakRSS() as memory, ThreadPoolExecutor(lanes) as pool:
        started = time.perf_counter()
        list(pool.map(predictor.probabilities, batches))
        seconds = time.perf_counter() - started
    images = sum(len(b) for b in batches)
    return images / seconds, memory.peak, memory.peak - memory.baseline, memory.cpu / images


def end_to_end(bundle: str, manifest: Path, out: Path, workers: int, batch_size: int) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)   # a fresh job each round, not a resumed one
    with PeakRSS() as memory:
        started = time.perf_counter()
        fashion_predict([f"bundle={bundle}", f"manifest={manifest}", "format=parquet", f"output={out}",
                         f"workers={workers}", f"batch_size={batch_size}"])
        seconds = time.perf_counter() - started
    images = len(pd.read_parquet(out))
    return images / seconds, memory.peak, memory.peak - memory.baseline, memory.cpu / images


def spark(bundle: str, manifest: Path, out: Path, tmp: Path) -> tuple[float, int] | None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return None
    import mlflow

    from fashion.inference.pyfunc import log_pyfunc
    from fashion.inference.spark import local_session, score_manifest

    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    # the model's artifacts beside the store: by default MLflow puts them under ./mlruns, the project's own store
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("benchmark", artifact_location=str(tmp / "artifacts")))
    uri = log_pyfunc(bundle)
    session = local_session(2, "fashion-benchmark")
    try:
        with PeakRSS() as memory:
            started = time.perf_counter()
            score_manifest(session, uri, str(manifest), str(out))
            seconds = time.perf_counter() - started
        return len(pd.read_parquet(out)) / seconds, memory.peak, memory.peak - memory.baseline, None   # its workers are the JVM's
    finally:
        session.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--images", default=str(ROOT / "data" / "sample" / "images"))
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0], help="fashion-predict's loader processes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "batch_scoring.md")
    args = parser.parse_args()
    paths = [str(p) for p in sorted(Path(args.images).glob("*.jpg"))[:args.limit]]
    cores = usable_cores()
    runs: dict[str, list[tuple[float, int, int, float | None]]] = {}
    brackets: list[tuple[float, float]] = []   # per round, the per-core bare run just before and just after fashion-predict
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        manifest = tmp / "manifest.parquet"
        pd.DataFrame({"path": paths}).to_parquet(manifest)
        single = "bare onnxruntime, one session over every core, one batch at a time"
        per_core = f"bare onnxruntime, one thread per core, {cores} batches at once"
        for round in range(args.rounds):
            batches = decoded(args.bundle, paths, args.batch_size)
            runs.setdefault(single, []).append(bare(args.bundle, batches, 1))
            before = bare(args.bundle, batches, cores)
            del batches   # freed before fashion-predict, whose memory is measured
            gc.collect()
            for workers in args.workers:
                runs.setdefault(f"fashion-predict, manifest -> Parquet, workers={workers}", []).append(
                    end_to_end(args.bundle, manifest, tmp / f"local{workers}", workers, args.batch_size))
            batches = decoded(args.bundle, paths, args.batch_size)
            after = bare(args.bundle, batches, cores)
            del batches
            gc.collect()
            runs.setdefault(per_core, []).extend([before, after])
            brackets.append((before[0], after[0]))
            print(f"round {round + 1}: " + ", ".join(f"{v[-1][0]:.1f}" for v in runs.values()) + f" (per core before: {before[0]:.1f})", flush=True)
        result = spark(args.bundle, manifest, tmp / "spark", tmp)
        if result:
            runs["Spark local[2], pyfunc spark_udf (one run)"] = [result]
    best = {name: max(speed for speed, *_ in values) for name, values in runs.items()}
    # The reference is the faster bare configuration in its best round, so a ratio is never flattered.
    reference = max(speed for name, speed in best.items() if name.startswith("bare"))
    size = load_predictor(bundle=args.bundle).trained.preprocessing.image_size
    lines = ["# Catalogue scoring throughput", "",
             f"Written by `python scripts/benchmark_batch.py --bundle <bundle> --images {os.path.relpath(args.images, ROOT)} "
             f"--limit {args.limit} --rounds {args.rounds}`; measured in one run.", "",
             f"- Machine: {platform.processor() or platform.machine()}, {cores} CPU cores, torch {torch.__version__}, "
             f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}",
             f"- Images: {len(paths):,} from `{Path(args.images).name}/`; the model's input {size}x{size}, batch {args.batch_size}",
             f"- Rounds: {args.rounds}, interleaved; images/s of the best round (median in brackets); memory: peak RSS of"
             " the process and its children during the path, and what the path added to what the process held before it;"
             " CPU: milliseconds of CPU time per photo (user + system, every thread; median of the rounds)",
             "", "| path | images/s | vs bare (the faster bare configuration) | CPU (ms per photo) | peak RSS (GiB) | added (GiB) |",
             "|---|---|---|---|---|---|"]
    for name, values in runs.items():
        speeds = [speed for speed, *_ in values]
        cpu = [v[3] for v in values if v[3] is not None]
        lines.append(f"| {name} | {best[name]:.1f} ({statistics.median(speeds):.1f}) | {best[name] / reference:.2f} | "
                     f"{f'{statistics.median(cpu) * 1000:.2f}' if cpu else '–'} | "
                     f"{max(v[1] for v in values) / 2**30:.2f} | {max(v[2] for v in values) / 2**30:.2f} |")
    for workers in args.workers:
        name = f"fashion-predict, manifest -> Parquet, workers={workers}"
        ratios = [runs[name][r][0] / statistics.mean(brackets[r]) for r in range(args.rounds)]
        lines.append(f"\nPer round, {name} / the mean of the per-core bare runs just before and just after it "
                     f"(the machine's drift within a round cancels): " + ", ".join(f"{ratio:.2f}" for ratio in ratios)
                     + f"; median {statistics.median(ratios):.2f}")
        bare_cpu = statistics.median(v[3] for v in runs[per_core])
        lines.append(f"\nCPU per photo, {name} / the per-core bare model's (medians; the pipeline's own work, drift "
                     f"aside): {statistics.median(v[3] for v in runs[name]) / bare_cpu:.3f}")
    if not any(name.startswith("Spark") for name in runs):
        lines += ["", "Spark: not measured (the spark extra is not installed)."]
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
