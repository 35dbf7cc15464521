"""What every process of a DDP run does at its end, beside what Lightning does."""

from __future__ import annotations

import atexit
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class EndProcessGroupAtExit(Callback):
    """Each process destroys its process group as it exits, while the interpreter is still whole.

    Lightning does so for NCCL only. Left to interpreter shutdown, a gloo group (DDP on CPU: `trainer=ddp_cpu`,
    or `trainer=ddp` with `accelerator=cpu`) can still hold tensors in its worker threads, which release them as
    Python tears down, and the process aborts after the run has finished ("terminate called without an active
    exception", SIGABRT; pytorch/pytorch#190489): seen once in 18 runs of the ddp_spawn test. Not after an error:
    another process may still wait in a collective, and the destroy would wait with it."""

    def __init__(self) -> None:
        self.failed = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            atexit.unregister(self.end_process_group)   # fit, then test, in one process: once
            atexit.register(self.end_process_group)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.failed = True

    def end_process_group(self, *_: Any) -> None:
        if not self.failed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
