"""What this process computes on: the processor, the instruction set each runtime's kernels pick on it, the
cores it may use, and the installed libraries.

A run's tags (fashion/tracking/environment.py), a feature-cache entry's record of what filled it
(fashion/features/store.py), the logged model's pinned requirements (fashion/inference/pyfunc.py) and the
scoring lanes (fashion/inference/batch.py) all read it; it sits beside the config glue so that none of those
stages imports another for it.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from importlib import metadata
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def installed(*names: str) -> str | None:
    """The version of the first of `names` that is installed (OpenCV has four wheels), or None."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


@cache
def processor_name() -> str:
    """The CPU's model name (`AMD EPYC 9R14`), or the platform's word for it where /proc/cpuinfo is not there."""
    name = cpuinfo_field("model name")
    return name or platform.processor() or platform.machine()


@cache
def processor() -> str:
    """The CPU and the instruction set torch's kernels use (AVX2, AVX512, ...; `ATEN_CPU_CAPABILITY` lowers
    it), and oneDNN's when `ONEDNN_MAX_CPU_ISA` caps it: on one AVX512 machine the default run's
    test/mean_acc was 0.7175, 0.7410 with ATen at AVX2, 0.7210 with oneDNN at AVX2 too."""
    import torch

    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return f"{processor_name()}, {torch.backends.cpu.get_cpu_capability()}" + (f", oneDNN at most {onednn}" if onednn else "")


@cache
def cpu_instruction_set() -> str | None:
    """The widest vector instruction set the CPU offers, in torch's words (AVX512, AVX2, DEFAULT): what
    onnxruntime's kernels dispatch on. torch's own choice can be capped (`ATEN_CPU_CAPABILITY`), onnxruntime's
    cannot, so a feature filled by onnxruntime is described by this, not by `processor()`. None where the CPU's
    flags cannot be read (not Linux, or not x86)."""
    flags = set((cpuinfo_field("flags") or "").split())
    if not flags:
        return None
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "AVX512"
    return "AVX2" if {"avx2", "fma"} <= flags else "DEFAULT"


def cpuinfo_field(field: str) -> str | None:
    """The first processor's `field` in /proc/cpuinfo (Linux), or None."""
    if not CPUINFO.is_file():
        return None
    lines = CPUINFO.read_text(errors="replace").splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == field), None)


def usable_cores() -> int:
    """The cores this process may run on (a container's or a SLURM job's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
