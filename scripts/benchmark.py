"""Performance harness: our training loop vs the bare model on the same batches, in one process.

    python scripts/benchmark.py                      # default backbone, the shared 9,583-image subset
    python scripts/benchmark.py --batches 30 --skip-compile
    python scripts/benchmark.py --device cuda --precisions 32-true 16-mixed bf16-mixed

Prints one table and writes docs/performance.md. Measures:
  1. images/s of the framework's training step (Lightning loop, data loading + augmentation in
     workers, model, loss, metrics, MLflow logging) and of the bare model's forward + backward +
     optimizer step on the same batches already in memory; their ratio;
  2. the data pipeline per worker (decode + augment), and JPEG draft decoding on a full-size photo;
  3. channels_last, torch.compile and precision variants of the bare step;
  4. peak RSS of a default training run (one epoch), measured on a child process.
No timing here is a test: numbers depend on the machine, so they are reported, not asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from PIL import Image  # noqa: E402

from fashion.config import CONFIG_DIR, PROJECT_ROOT  # noqa: E402
from fashion.data.images import load_rgb  # noqa: E402
from fashion.training.assembly import build_model, build_module  # noqa: E402

ROWS: list[tuple[str, str, str]] = []


def report(name: str, value: str, note: str = "") -> None:
    ROWS.append((name, value, note))
    print(f"{name:<52} {value:>14}  {note}", flush=True)


def compose_cfg(overrides: list[str], mlruns: Path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.mlruns={mlruns}", f"paths.output_dir={mlruns / 'out'}"])


class StepTimer(L.Callback):
    """Wall time from the end of the warm-up batches to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.batches = warmup, None, None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup - 1:
            self.start = time.perf_counter()
        elif batch_idx >= self.warmup:
            self.end, self.batches = time.perf_counter(), self.batches + 1


def framework_throughput(cfg, warmup: int, batches: int, batch_size: int) -> float:
    """A real `train()`-style fit: Lightning loop, workers, metrics and the MLflow logger."""
    from fashion.tracking.run import open_run

    L.seed_everything(cfg.seed)
    backbone = instantiate(cfg.backbone)
    dm = instantiate(cfg.data, preprocessing=backbone.preprocessing, _convert_="object")
    module = build_module(cfg, dm, build_model(cfg, dm, backbone))
    timer = StepTimer(warmup)
    skip = {"progress_bar", "early_stopping", "model_checkpoint"}  # no validation in a timing run
    callbacks = [instantiate(c) for name, c in cfg.callbacks.items() if c is not None and name not in skip]
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision, max_epochs=1,
        limit_train_batches=warmup + batches, limit_val_batches=0, num_sanity_val_steps=0,
        logger=open_run(cfg, None), callbacks=[*callbacks, timer], enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=cfg.trainer.log_every_n_steps, default_root_dir=cfg.paths.output_dir,
    )
    trainer.fit(module, datamodule=dm)
    return timer.batches * batch_size / (timer.end - timer.start)


def collect_batches(cfg, count: int):
    """The framework's own first `count` training batches (same sampler seed, so the same images)."""
    backbone = instantiate(cfg.backbone)
    dm = instantiate(cfg.data, preprocessing=backbone.preprocessing, _convert_="object")
    dm.setup("fit")
    batches = []
    for i, batch in enumerate(dm.train_dataloader()):
        if i == count:
            break
        batches.append(batch)
    return dm, batches


def bare_throughput(cfg, dm, batches, warmup: int, device: str, precision: str, channels_last: bool,
                    compiled: bool) -> float:
    """forward + summed cross-entropy + backward + AdamW step, nothing else."""
    L.seed_everything(cfg.seed)
    backbone = instantiate(cfg.backbone)
    model = build_module(cfg, dm, build_model(cfg, dm, backbone)).model.to(device).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    step_model = torch.compile(model) if compiled else model
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=dtype) if dtype else nullcontext()
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=precision == "16-mixed")
    on_device = [(x.to(device, memory_format=memory_format), {k: v.to(device) for k, v in y.items()}) for x, y in batches]

    def step(images, targets) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = step_model(images)
            loss = sum(torch.nn.functional.cross_entropy(logits[a].float(), targets[a], ignore_index=-1) for a in logits)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for images, targets in on_device[:warmup]:
        step(images, targets)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for images, targets in on_device[warmup:]:
        step(images, targets)
    sync()
    return sum(x.shape[0] for x, _ in on_device[warmup:]) / (time.perf_counter() - start)


def pipeline_per_worker(dm, items: int) -> float:
    """Decode + augment + normalise, one process, one thread: what one DataLoader worker delivers."""
    dataset = dm.datasets["train"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    for i in range(items):
        dataset[i % len(dataset)]
    torch.set_num_threads(threads)
    return items / (time.perf_counter() - start)


def draft_decoding(sample: Path, size: int, repeats: int = 20) -> tuple[float, float]:
    """ms per full-size (1800x2400) JPEG: plain decode vs libjpeg draft downscaling."""
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.jpg"
        Image.open(sample).convert("RGB").resize((1800, 2400), Image.BICUBIC).save(big, quality=90)
        timings = []
        for min_side in (None, size):
            start = time.perf_counter()
            for _ in range(repeats):
                load_rgb(big, min_side=min_side)
            timings.append(1000 * (time.perf_counter() - start) / repeats)
    return timings[0], timings[1]


def _high_water_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_of_default_run(mlruns: Path) -> float:
    """Peak RSS (MiB) of `fashion-train` with the default config for one epoch.

    Read from the child's own VmHWM while it runs: getrusage/wait4 would report this (larger)
    benchmark process, whose peak a forked child inherits across exec.
    """
    command = [sys.executable, "-m", "fashion.train", "trainer.max_epochs=1", "test=false",
               f"paths.mlruns={mlruns}", f"hydra.run.dir={mlruns / 'rss_run'}", "callbacks.progress_bar=null"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, _high_water_mib(process.pid) or 0.0)
        time.sleep(0.2)
    if process.returncode != 0:
        raise RuntimeError(f"default run failed: {process.stderr.read().decode()[-2000:]}")
    return peak


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, GPU: {gpu}")


def write_markdown(path: Path, args: argparse.Namespace, overrides: list[str]) -> None:
    lines = [
        "# Performance",
        "",
        f"Written by `python scripts/benchmark.py {' '.join(sys.argv[1:])}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Do not edit by hand: rerun the script.",
        "",
        f"- Machine: {machine()}",
        f"- Config: default (`{' '.join(overrides) or 'no overrides'}`), batch size {args.batch_size}, "
        f"{args.batches} timed batches after {args.warmup} warm-up batches, best of {args.repeats} interleaved "
        f"runs for the framework/bare pair, device {args.device}",
        "",
        "| measurement | value | note |",
        "|---|---:|---|",
        *[f"| {name} | {value} | {note} |" for name, value, note in ROWS],
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="subset", help="data config (default: the shared 9,583-image subset)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved framework/bare measurements; best kept")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the data config's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides, e.g. trainer.precision=bf16-mixed")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "performance.md")
    args = parser.parse_args()

    overrides = [f"data={args.data}", f"data.batch_size={args.batch_size}"]
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    if args.device != "cpu":
        overrides += ["trainer=gpu", "trainer.precision=32-true"]
    overrides += args.override
    with tempfile.TemporaryDirectory() as tmp:
        mlruns = Path(tmp) / "mlruns"
        cfg = compose_cfg(overrides, mlruns)
        count = args.warmup + args.batches
        dm, batches = collect_batches(cfg, count)

        framework_runs, bare_runs = [], []
        for _ in range(args.repeats):  # interleaved, best of each: background noise only ever slows a run
            framework_runs.append(framework_throughput(cfg, args.warmup, args.batches, args.batch_size))
            bare_runs.append(bare_throughput(cfg, dm, batches, args.warmup, args.device, cfg.trainer.precision,
                                             bool(cfg.module.get("channels_last")), False))
        framework, bare = max(framework_runs), max(bare_runs)
        print(f"runs: framework {[round(x, 1) for x in framework_runs]}, bare {[round(x, 1) for x in bare_runs]}")
        layout = ", channels_last" if cfg.module.get("channels_last") else ""
        report("training step, framework (images/s)", f"{framework:.1f}",
               f"Lightning + {cfg.data.num_workers} workers + metrics + MLflow, {cfg.trainer.precision}{layout}")
        report("training step, bare model (images/s)", f"{bare:.1f}", "same batches in memory, fwd+bwd+AdamW, same precision/layout")
        report("framework / bare", f"{framework / bare:.3f}", "target >= 0.90")

        per_worker = pipeline_per_worker(dm, items=8 * args.batch_size)
        steps = ", ".join(type(t).__name__ for t in dm.augmentation.steps) or "no augmentation"
        report("data pipeline, one worker (images/s)", f"{per_worker:.1f}",
               f"decode + {steps} + normalise; the model consumes {bare:.1f}/s")
        plain_ms, draft_ms = draft_decoding(Path(dm.datasets["train"].paths[0]), dm.preprocessing.image_size)
        report("full-size JPEG decode, plain (ms)", f"{plain_ms:.1f}", "1800x2400, as in the full Kaggle set")
        report("full-size JPEG decode, draft (ms)", f"{draft_ms:.1f}", f"libjpeg downscale to >= {dm.preprocessing.image_size}px")

        default = (cfg.trainer.precision, bool(cfg.module.get("channels_last")))
        variants = [(p, cl, False) for p in args.precisions for cl in (False, True) if (p, cl) != default]
        if not args.skip_compile:
            variants.append(("32-true", False, True))
        for precision, channels_last, compiled in variants:
            name = f"bare, {precision}" + (", channels_last" if channels_last else "") + (", torch.compile" if compiled else "")
            try:
                speed = bare_throughput(cfg, dm, batches, args.warmup, args.device, precision, channels_last, compiled)
                report(f"{name} (images/s)", f"{speed:.1f}", f"x{speed / bare:.2f} vs the bare default above")
            except Exception as err:  # a variant the platform cannot run is a result too
                report(f"{name} (images/s)", "failed", f"{type(err).__name__}: {str(err)[:80]}")

        if not args.skip_rss:
            report("peak RSS, default training run (MiB)", f"{peak_rss_of_default_run(mlruns):.0f}",
                   "`fashion-train` defaults on the sample, one epoch (VmHWM)")
        report("peak RSS, this benchmark process (MiB)", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}",
               "all of the above in one process")
    write_markdown(args.out, args, overrides)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    np.random.seed(0)
    main()
