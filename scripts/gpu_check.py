"""The GPU check: `best_gpu` on the catalogue, in 16-mixed and bf16-mixed, measured against the bare model.

    python scripts/gpu_check.py                                  # the whole catalogue in ../shared
    python scripts/gpu_check.py data.root=/data/small --epochs 25 --max-minutes 4 --output docs/gpu.md

For each precision, in one process and on the same batches' shapes:
- our training loop (Lightning, the recipe's datamodule with its augmentation and loader workers):
  images/s over steady-state steps, and peak GPU memory;
- the bare model: forward + backward + AdamW step on batches already on the GPU (no data loading, no
  Lightning), the reference the loop is compared with;
- inference: eval forward on batches already on the GPU, images/s and peak memory.
Then the recipe itself for `--epochs` (default 1; its precision, validation each epoch, at most
`--max-minutes`) gives the wall time per epoch, so a projection of the whole recipe, and val/test
accuracy on the data's own split (after one epoch: a smoke check that the GPU path learns, not a
result). Writes a Markdown report.
No MLflow run: the model is assembled by `fashion.training.assembly`, as `fashion-train` does.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from lightning.pytorch import Callback  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fashion.config import CONFIG_DIR  # noqa: E402
from fashion.data.datamodule import FashionDataModule  # noqa: E402
from fashion.training.assembly import build_model, build_module  # noqa: E402
from fashion.training.console import ignore_lightnings_leafspec_deprecation, log_lightning_once  # noqa: E402
from fashion.training.module import evaluate_sets  # noqa: E402

PRECISIONS = ("16-mixed", "bf16-mixed")
AUTOCAST = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
CUDA = torch.cuda.is_available()   # without it (--allow-cpu, the test's dry run) memory reads as nan
DEVICE = "cuda" if CUDA else "cpu"


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def reset_peak() -> None:
    if CUDA:
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if CUDA else float("nan")


class StepTimer(Callback):
    """Images/s of the training loop between step `warmup` and the last step (the GPU synchronised at both ends)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.started, self.steps, self.images = warmup, 0.0, 0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            sync()
            self.started = time.perf_counter()
        if trainer.global_step >= self.warmup:
            self.images += len(batch[0])
            self.steps += 1

    def on_train_end(self, trainer, pl_module) -> None:
        sync()
        self.seconds = time.perf_counter() - self.started

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.steps else float("nan")


def compose_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=["experiment=best_gpu", "data=catalogue",
                                           "paths.output_dir=${paths.root}/outputs/gpu_check", *overrides])


def build(cfg: DictConfig, datamodule: FashionDataModule):
    backbone = instantiate(cfg.backbone)
    return build_module(cfg, datamodule, build_model(cfg, datamodule, backbone))


def trainer(cfg: DictConfig, precision: str, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="gpu" if CUDA else "cpu", devices=1, precision=precision, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, benchmark=True,
                     num_sanity_val_steps=0, **kwargs)


def loop_throughput(cfg, datamodule, precision: str, steps: int, warmup: int) -> dict:
    module = build(cfg, datamodule)
    timer = StepTimer(warmup)
    reset_peak()
    trainer(cfg, precision, max_steps=warmup + steps, limit_val_batches=0, callbacks=[timer]).fit(module, datamodule=datamodule)
    return {"loop_img_s": timer.images_per_s, "loop_peak_gib": peak_gib(), "module": module}


def bare_throughput(module, precision: str, batch_size: int, size: int, steps: int, warmup: int) -> dict:
    """forward + backward + AdamW on GPU-resident batches: what the hardware gives the same network."""
    model = module.model.to(DEVICE).train().to(memory_format=torch.channels_last)
    images = torch.randn(batch_size, 3, size, size, device=DEVICE).contiguous(memory_format=torch.channels_last)
    targets = {a: torch.randint(0, n, (batch_size,), device=DEVICE) for a, n in model.heads.num_classes.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(DEVICE, enabled=CUDA and precision == "16-mixed")
    reset_peak()
    for step in range(warmup + steps):
        if step == warmup:
            sync()
            started = time.perf_counter()
        with torch.autocast(DEVICE, dtype=AUTOCAST[precision]):
            logits = model(images)
            loss = sum(torch.nn.functional.cross_entropy(logits[a].float(), t) for a, t in targets.items())
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    sync()
    seconds = time.perf_counter() - started
    return {"bare_img_s": steps * batch_size / seconds, "bare_peak_gib": peak_gib()}


@torch.inference_mode()
def inference_throughput(module, precision: str, batch_size: int, size: int, batches: int) -> dict:
    model = module.model.to(DEVICE).eval()
    images = torch.randn(batch_size, 3, size, size, device=DEVICE).contiguous(memory_format=torch.channels_last)
    reset_peak()
    for step in range(batches + 3):
        if step == 3:
            sync()
            started = time.perf_counter()
        with torch.autocast(DEVICE, dtype=AUTOCAST[precision]):
            model(images)
    sync()
    return {"infer_img_s": batches * batch_size / (time.perf_counter() - started), "infer_peak_gib": peak_gib()}


class EpochTimer(Callback):
    """Wall time of each training epoch, its validation included."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        sync()
        if not trainer.sanity_checking:
            self.seconds.append(time.perf_counter() - self.started)


def fit_and_test(cfg, datamodule, epochs: int, max_minutes: float) -> dict:
    """The recipe for `epochs` epochs (its cosine schedule spans them) or until `max_minutes`, then the test split."""
    module = build(cfg, datamodule)
    timer = EpochTimer()
    fit = trainer(cfg, cfg.trainer.precision, max_epochs=epochs, callbacks=[timer],
                  max_time={"seconds": int(max_minutes * 60)})
    fit.fit(module, datamodule=datamodule)
    val = {k: float(v) for k, v in fit.callback_metrics.items() if k.startswith("val/") and k.endswith("acc")}
    fit.test(module, datamodule=datamodule, verbose=False)
    test = {k: float(v) for k, v in fit.callback_metrics.items() if k.startswith("test/") and k.endswith("/acc")}
    scores = {"val": val, "test": test}
    loaders = datamodule.eval_dataloaders()   # out of time, cross-resolution, ...
    sets = evaluate_sets(fit, module, loaders, None)
    for name in loaders:
        scores[name] = {k.replace(f"eval/{name}/", "test/"): v for k, v in sets.items()
                        if k.startswith(f"eval/{name}/") and k.endswith("/acc")}
    return {"epoch_s": timer.seconds, "epochs": epochs, "scores": scores, "test": test}


def shown_arguments() -> list[str]:
    """The command line with machine paths cut to their last component (the report goes into the repo)."""
    return [re.sub(r"(^|=)(/\S+)", lambda m: f"{m.group(1)}.../{Path(m.group(2)).name}", a) for a in sys.argv[1:]]


def report(args, cfg, datamodule, setup_s: float, rows: dict, epoch: dict, started: float) -> str:
    sizes = datamodule.table["split"].value_counts().to_dict()
    images = sum(sizes.values())
    full = args.catalogue_size
    epochs = int(cfg.trainer.max_epochs)
    lines = [
        "# GPU check: best_gpu on the catalogue",
        "",
        f"Written by `scripts/gpu_check.sh {' '.join(shown_arguments()) or ''}`; the numbers below are what it measured.",
        "",
        f"- Device: {torch.cuda.get_device_name(0) if CUDA else 'CPU (dry run)'}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"lightning {L.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPU cores",
        f"- Recipe: `experiment=best_gpu data=catalogue` ({cfg.backbone.name} at {cfg.backbone.image_size}px, "
        f"freeze={cfg.backbone.freeze}, batch {cfg.data.batch_size}, {cfg.data.num_workers} loader workers, "
        f"augmentation: {', '.join(type(s).__name__ for s in datamodule.augmentation.steps) or 'none'})",
        f"- Data: {images:,} images ({', '.join(f'{k} {v:,}' for k, v in sorted(sizes.items()))}) from "
        f"`{Path(cfg.data.root).name}`; labels read and every image decoded once in {setup_s:.1f} s",
        "",
        "| precision | training loop img/s | bare model img/s | loop / bare | loop peak GiB | bare peak GiB | inference img/s (batch %d) | inference peak GiB |" % args.infer_batch,
        "|---|---|---|---|---|---|---|---|",
    ]
    for precision, r in rows.items():
        lines.append(f"| {precision} | {r['loop_img_s']:.0f} | {r['bare_img_s']:.0f} | {r['loop_img_s'] / r['bare_img_s']:.2f} | "
                     f"{r['loop_peak_gib']:.2f} | {r['bare_peak_gib']:.2f} | {r['infer_img_s']:.0f} | {r['infer_peak_gib']:.2f} |")
    lines += ["", f"Training loop: {args.steps} steps after {args.warmup} warm-up steps, real batches from the "
              "datamodule (decode, resize, augmentation in the loader workers). Bare model: the same network, "
              "forward + backward + AdamW on one batch kept on the GPU, same batch size and precision."]
    if epoch:
        done, mean_s = len(epoch["epoch_s"]), sum(epoch["epoch_s"]) / max(1, len(epoch["epoch_s"]))
        cut = "" if done >= epoch["epochs"] else f" (stopped by the time limit; the schedule was set for {epoch['epochs']})"
        lines += ["", f"The recipe itself ({cfg.trainer.precision}, validation each epoch): {done} epoch(s){cut}, "
                  f"{mean_s:.1f} s per epoch for {sizes.get('train', 0):,} training images. Projected for the whole "
                  f"catalogue ({full:,} products) and the recipe's {epochs} epochs: {mean_s * epochs * full / images / 60:.1f} min.",
                  "", f"Accuracy (%) after those {done} epoch(s): val and test are this data's own split (in-split, "
                  f"{sizes.get('test', 0):,} test images), further rows its evaluation sets "
                  f"({'a smoke check that the GPU path learns, not a result' if done < 3 else 'the sets the data config names'}):",
                  "", "| split | " + " | ".join(k.split("/")[1] for k in epoch["test"]) + " |",
                  "|---|" + "---|" * len(epoch["test"])]
        for split, values in epoch["scores"].items():
            row = [values.get(k.replace("test/", f"{split}/") if split == "val" else k, float("nan")) for k in epoch["test"]]
            lines.append(f"| {split} | " + " | ".join(f"{v * 100:.1f}" for v in row) + " |")
    lines += ["", f"Whole check: {(time.perf_counter() - started) / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.root=/data/small")
    parser.add_argument("--steps", type=int, default=80, help="timed training steps per precision")
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--infer-batch", type=int, default=256)
    parser.add_argument("--infer-batches", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the recipe to run and test (0: none)")
    parser.add_argument("--max-minutes", type=float, default=3.0, help="stop that run after this long")
    parser.add_argument("--catalogue-size", type=int, default=38_800, help="products the projection scales to")
    parser.add_argument("--output", type=Path, default=Path("docs/gpu.md"))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--allow-cpu", action="store_true", help="dry run without a GPU (the script's own test)")
    args = parser.parse_intermixed_args()   # overrides may come before or after the options
    if not CUDA and not args.allow_cpu:
        sys.exit("gpu_check: no CUDA device visible (--allow-cpu for a dry run)")
    started = time.perf_counter()
    log_lightning_once()   # fashion-train's console: no "Tip" lines, no LeafSpec warning about Lightning's code
    ignore_lightnings_leafspec_deprecation()
    cfg = compose_config(args.overrides)
    L.seed_everything(cfg.seed, workers=True)
    datamodule: FashionDataModule = instantiate(cfg.data, preprocessing=instantiate(cfg.backbone).preprocessing, _convert_="object")
    datamodule.prepare_labels()
    setup_s = time.perf_counter() - started
    size, batch = int(cfg.backbone.image_size), int(cfg.data.batch_size)
    rows = {}
    for precision in args.precisions:
        result = loop_throughput(cfg, datamodule, precision, args.steps, args.warmup)
        module = result.pop("module")
        result |= bare_throughput(module, precision, batch, size, args.steps, args.warmup)
        result |= inference_throughput(module, precision, args.infer_batch, size, args.infer_batches)
        rows[precision] = result
        print(precision, {k: round(v, 2) for k, v in result.items()}, flush=True)
        del module
        if CUDA:
            torch.cuda.empty_cache()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report(args, cfg, datamodule, setup_s, rows, {}, started))   # kept if the run below is cut off
    epoch = fit_and_test(cfg, datamodule, args.epochs, args.max_minutes) if args.epochs else {}
    text = report(args, cfg, datamodule, setup_s, rows, epoch, started)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
