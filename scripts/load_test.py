"""Load test of `fashion-serve` on loopback: p50/p99 latency and throughput at 1, 8 and 32 clients.

    python scripts/load_test.py --bundle bundles/best
    python scripts/load_test.py --bundle bundles/best --clients 1 8 32 --requests 200

Starts the server as its own process (as in production), sends bounded concurrent requests (each
client waits for its answer before sending the next), and measures in the same run the in-process
model call on the same image, as the floor the HTTP path is compared with. Writes docs/serving_load.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = sorted((ROOT / "data" / "sample" / "images").glob("*.jpg"))[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, port: int, runtime: str, review: Path) -> subprocess.Popen:
    """The review queue stays on, as a served model has it, but in `review`: in the project's own review/ the
    benchmark's photo waited in a real queue for a person."""
    command = [sys.executable, "-m", "fashion.serve", f"bundle={bundle}", f"port={port}", f"runtime={runtime}", "log_level=warning",
               f"review_url=sqlite:///{review / 'review.db'}", f"review_images={review / 'images'}"]
    process = subprocess.Popen(command, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise TimeoutError("server did not become healthy in 120 s")


def run_level(url: str, payload: bytes, clients: int, total: int) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    remaining = [total]

    def client() -> None:
        nonlocal errors
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                started = time.perf_counter()
                try:
                    ok = http.post(url, files={"file": ("image.jpg", payload, "image/jpeg")}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    errors += 0 if ok else 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"clients": clients, "requests": len(latencies), "errors": errors,
            "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "throughput": len(latencies) / wall}


def in_process_ms(bundle: Path, image: Path, runtime: str, repeats: int = 30) -> float:
    """The floor: decode + preprocess + model on one image, no HTTP, in this process."""
    from fashion.data.images import load_rgb
    from fashion.inference.runtime import load_predictor

    predictor = load_predictor(bundle=bundle, runtime=runtime, top_k=3, taxonomy=True)
    for _ in range(3):
        predictor.predict([load_rgb(image)])
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.predict([load_rgb(image)])
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--runtime", default="auto", choices=["auto", "onnx", "torch"], help="the server's runtime")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "serving_load.md")
    args = parser.parse_args()
    payload = args.image.read_bytes()
    references = {runtime: in_process_ms(args.bundle, args.image, runtime) for runtime in ("torch", "onnx")}
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="load_test_review_") as review:
        server = start_server(args.bundle.resolve(), port, args.runtime, Path(review))
        try:
            served_by = httpx.get(f"http://127.0.0.1:{port}/health").json()["runtime"]
            url = f"http://127.0.0.1:{port}/v1/predict"
            run_level(url, payload, 1, 10)  # warm-up
            levels = [run_level(url, payload, c, max(args.requests, 4 * c)) for c in args.clients]
        finally:
            server.terminate()
            server.wait(timeout=30)
    from fashion.inference.bundle import read_manifest

    manifest = read_manifest(args.bundle)
    lines = [
        "# Serving load test", "",
        f"Generated by `python scripts/load_test.py --bundle <bundle> --clients {' '.join(map(str, args.clients))} "
        f"--requests {args.requests} --runtime {args.runtime}`; do not edit by hand.", "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores; server and load generator on the same machine (loopback)",
        f"- Model: {manifest['backbone']} at {manifest['image_size']}px, {len(manifest['attributes'])} heads; "
        f"image: `{args.image.name}` ({len(payload)} bytes)",
        f"- Server runtime: {served_by}",
        "- Reference in the same run, no HTTP: decode + preprocess + model in-process, median "
        + ", ".join(f"{ms:.1f} ms ({runtime})" for runtime, ms in references.items()), "",
        "| clients | requests | errors | p50 (ms) | p99 (ms) | throughput (req/s) |", "|---|---|---|---|---|---|",
        *[f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['throughput']:.1f} |" for r in levels],
        "",
    ]
    text = "\n".join(lines)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
