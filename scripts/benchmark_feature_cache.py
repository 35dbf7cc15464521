"""Per-epoch training time with and without the frozen-feature cache, in one run on the same data.

    python scripts/benchmark_feature_cache.py                       # subset, linear_probe recipe
    python scripts/benchmark_feature_cache.py --overrides backbone.freeze=partial backbone.trainable_stages=2 head=mlp

Both paths train the same config for one epoch over the same training split (no validation); the
uncached path decodes, preprocesses and pushes every image through the frozen backbone, the cached
path reads the stored features. The one-off cost of filling the cache is reported separately, and
the fill itself is timed in both runtimes (eager PyTorch, onnxruntime) on the same images, with the
largest difference between their features. Writes markdown tables to docs/feature_cache.md (or --output).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Timer

from fashion.config import CONFIG_DIR, PROJECT_ROOT
from fashion.features import RUNTIMES, compute_cacheable_inputs
from fashion.training.assembly import build_model, build_module, use_feature_cache


def data_and_model(cfg):
    """A fresh datamodule (labels prepared) and model, as `fashion-train` builds them."""
    backbone = instantiate(cfg.backbone)
    datamodule = instantiate(cfg.data, preprocessing=backbone.preprocessing, _convert_="object")
    datamodule.prepare_labels()
    return datamodule, build_model(cfg, datamodule, backbone)


def epoch_seconds(cfg, use_cache: bool) -> tuple[float, float, int]:
    """(train-epoch seconds, cache fill seconds, training images) for one fresh module."""
    L.seed_everything(cfg.seed)
    datamodule, model = data_and_model(cfg)
    fill = 0.0
    if use_cache:
        started = time.perf_counter()
        cache = use_feature_cache(cfg, model, datamodule)
        fill = time.perf_counter() - started
        assert cache is not None and cache.last_status in ("built", "hit"), "the cache does not apply to this config"
    module = build_module(cfg, datamodule, model)
    timer = Timer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, callbacks=[timer],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, limit_train_batches=cfg.trainer.limit_train_batches)
    trainer.fit(module, datamodule=datamodule)
    images = min(len(datamodule.datasets["train"]), trainer.num_training_batches * datamodule.batch_size)
    return timer.time_elapsed("train"), fill, images


def fill_seconds(cfg, images: int) -> dict[str, tuple[float, float]]:
    """Per runtime: (seconds to fill the first `images` rows, max |feature - eager feature|)."""
    datamodule, model = data_and_model(cfg)
    paths = datamodule.table["path"].tolist()[:images]
    results, reference = {}, None
    for runtime in sorted(RUNTIMES, key=lambda r: r != "torch"):  # eager first: the reference
        started = time.perf_counter()
        inputs = compute_cacheable_inputs(model, datamodule.preprocessing, paths, cfg.feature_cache.batch_size, runtime=runtime)
        seconds = time.perf_counter() - started
        reference = reference or inputs
        results[runtime] = (seconds, max(float((inputs[n] - reference[n]).abs().max()) for n in inputs))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="subset")
    parser.add_argument("--experiment", default="linear_probe")
    parser.add_argument("--limit-batches", type=int, default=None, help="train batches per epoch (default: all)")
    parser.add_argument("--fill-images", type=int, default=1024, help="images for the fill-by-runtime comparison")
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "docs" / "feature_cache.md")
    args = parser.parse_args()
    cache_dir = Path(tempfile.mkdtemp(prefix="feature-cache-bench-"))
    overrides = [f"data={args.data}", f"experiment={args.experiment}", f"paths.cache={cache_dir}", f"paths.output_dir={cache_dir}",
                 f"trainer.limit_train_batches={args.limit_batches or 'null'}", *args.overrides]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    try:
        uncached, _, images = epoch_seconds(cfg, use_cache=False)
        cached, fill, _ = epoch_seconds(cfg, use_cache=True)
        fills = fill_seconds(cfg, args.fill_images)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    rows = [
        "| path | train epoch (s) | images/s | speedup |",
        "|---|---|---|---|",
        f"| uncached (decode + frozen backbone + heads) | {uncached:.1f} | {images / uncached:.0f} | 1.0x |",
        f"| cached features (heads only) | {cached:.2f} | {images / cached:.0f} | {uncached / cached:.0f}x |",
    ]
    eager = fills["torch"][0]
    fill_rows = [
        f"Filling the cache, the first {args.fill_images} images, by `feature_cache.runtime` (decoding included):",
        "",
        "| runtime | fill (s) | images/s | speedup | max abs difference from eager |",
        "|---|---|---|---|---|",
        *(f"| {runtime} | {seconds:.1f} | {args.fill_images / seconds:.0f} | {eager / seconds:.1f}x | {diff:.1e} |"
          for runtime, (seconds, diff) in fills.items()),
    ]
    text = "\n".join([
        "# Frozen-feature cache: per-epoch speedup",
        "",
        "Generated by `python scripts/benchmark_feature_cache.py " + " ".join(
            [f"--data {args.data}", f"--experiment {args.experiment}"]
            + ([f"--limit-batches {args.limit_batches}"] if args.limit_batches else [])
            + ([f"--fill-images {args.fill_images}"] if args.fill_images != 1024 else [])
            + ([f"--overrides {' '.join(args.overrides)}"] if args.overrides else [])) + "`; do not edit by hand.",
        "",
        f"- Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        f"- Config: experiment={args.experiment}, data={args.data}, backbone {cfg.backbone.name} "
        f"(freeze={cfg.backbone.freeze}, {cfg.backbone.image_size}px), {images} training images per epoch",
        f"- One-off cache fill (all splits, {cfg.backbone.name}, feature_cache.runtime={cfg.feature_cache.runtime}): {fill:.1f} s",
        "",
        *rows,
        "",
        *fill_rows,
        "",
    ])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
