"""What a run's numbers depend on besides its config and data: the processor and the library versions.

The same commit and config gave the default run's test/mean_acc 0.7377 on one 2-core machine and 0.7175 on
another (each repeatable to the last digit on its own machine): torch picks its CPU kernels by the
processor's instruction set, and a library upgrade can change the pixels (OpenCV 5's warp differs from
4.x's in the training augmentation). A run records both, so two runs of one config can be told apart in the
MLflow UI, and a resumed run says when it continues under other versions.
"""

from __future__ import annotations

import logging
import os
import platform
from importlib import metadata

from fashion.machine import installed, processor

log = logging.getLogger(__name__)

# The libraries whose version changes a run's numbers: the network's arithmetic, the pixels, the metrics (and this
# package's own, which identifies the code where no git commit does: an installed wheel).
# Each is a tag `version.<name>`; a name with alternatives is the first installed (OpenCV has four wheels).
# Python's and torch's come from the interpreter (torch's with its build: `2.14.1+cu130`, `2.14.1+cpu`).
SHAPING = {"fashion": ("fashion",), "python": (), "torch": (), "lightning": ("lightning", "pytorch-lightning"), "timm": ("timm",),
           "torchmetrics": ("torchmetrics",), "albumentations": ("albumentations",),
           "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python"),
           "pillow": ("pillow",), "numpy": ("numpy",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu")}


def version_tags() -> dict[str, str]:
    """`version.<library>` for each of `SHAPING` that is installed."""
    import torch   # here, not at the top: the tracking stage loads before every job (its Hydra callback)

    versions = {name: installed(*names) for name, names in SHAPING.items()} | {"python": platform.python_version(),
                                                                              "torch": torch.__version__}
    return {f"version.{name}": value for name, value in versions.items() if value}


def requirements() -> str:
    """Every installed distribution as `name==version` (pip freeze's form), for the run's environment artifact.
    This project itself is left out: it is on no index, and the run's commit or `version.fashion` tag says which
    code ran."""
    found = {(dist.metadata["Name"] or "").lower(): dist.version for dist in metadata.distributions()}
    return "".join(f"{name}=={version}\n" for name, version in sorted(found.items()) if name and name != "fashion")


def hardware(accelerator: str, devices: object, num_nodes: int) -> str:
    """What the run trained on, in words, for the results table."""
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return f"{gpu_count(devices)}x {torch.cuda.get_device_name(0)} x {num_nodes} node(s)"
    if accelerator in ("gpu", "mps", "auto") and torch.backends.mps.is_available():   # Lightning's choice on a Mac
        return f"Apple GPU (MPS) on {processor().split(',')[0]}"
    return f"CPU ({processor()}), {torch.get_num_threads()} threads on {os.cpu_count()} cores"


def gpu_count(devices: object) -> int:
    """GPUs per node from `trainer.devices` as Lightning reads it: a count, indices ("0,1", [0, 1]), or "auto" / -1
    for all of them (trainer=ddp's: the tag read "autox ...")."""
    import torch

    if str(devices).strip() in ("auto", "-1"):
        return torch.cuda.device_count()
    if isinstance(devices, str):
        return len([d for d in devices.split(",") if d.strip()]) if "," in devices else int(devices)
    return int(devices) if isinstance(devices, int) else len(list(devices))


def environment_tags(tags: dict[str, str]) -> dict[str, str]:
    """A run's `hardware` and `version.*` tags: what its numbers depended on besides config and data."""
    return {k: v for k, v in tags.items() if k == "hardware" or k.startswith("version.")}


def changed_environment(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """What a resumed run continues under that it did not start with: `hardware` and `version.*` tags of
    `current` that differ from the run's `recorded` ones, as `timm 1.0.30 -> 1.0.31`."""
    return [f"{k.removeprefix('version.')} {recorded[k]} -> {v}" for k, v in environment_tags(current).items()
            if recorded.get(k, v) != v]
