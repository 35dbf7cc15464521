"""Lightning's console, kept to what a run's user can act on: each of its lines once, none advertising
another platform, and no warning about what this project does on purpose or what only Lightning can fix.
No MLflow here, so scripts that train without a run (the GPU check) use it too."""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.warnings import PossibleUserWarning


def log_lightning_once() -> None:
    """Lightning's loggers print to the console themselves ('INFO: ...') and also pass each record up to the
    root, where Hydra's handlers print it again (the model summary twice) and write it to the run's
    train.log. With the root configured (Hydra, pytest), Lightning's own handlers go and its records go to
    the root's: each line once, on the console and in train.log alike (hydra#2898). Without, nothing changes.
    Either way its "💡 Tip" lines, which advertise another tracking platform to a run logging to MLflow, go."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, NoTips) for f in rank_zero.filters):
        rank_zero.addFilter(NoTips())
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lightning = logging.getLogger(name)
        for handler in lightning.handlers[:]:
            lightning.removeHandler(handler)
        lightning.propagate = True


class NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def expect_frozen_norms_in_eval(count: int) -> None:
    """Lightning warns of every module that starts training in eval mode ("may lead to unexpected behavior").
    The frozen batch norms are so on purpose; the warning is silenced for exactly their number, so any other
    module left in eval mode still warns."""
    if count:
        warnings.filterwarnings("ignore", message=rf"Found {count} module\(s\) in eval mode", category=PossibleUserWarning)


def ignore_lightnings_leafspec_deprecation() -> None:
    """torch deprecates `LeafSpec`, which Lightning 2.6 still builds from each step's outputs: a FutureWarning
    about Lightning's code in every run, that a user cannot act on (Lightning-AI/pytorch-lightning#21326).
    Ignored where Lightning raises it only: the same call from anywhere else still warns."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.")


def ignore_sync_advice_for_gathered_values() -> None:
    """Under DDP Lightning advises `sync_dist=True` for every value logged per epoch without it: about 70 lines
    in a two-process run, none a user can act on. The metrics (val/, test/, eval/) are torchmetrics' results,
    gathered over the processes when computed, and so are the epoch's training losses and the loss weights set
    from them. The loss logged per step is rank zero's on purpose: syncing it would gather at every step. A value
    logged under any other name still gets the advice."""
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test|eval|loss_weight|train)/",
                            category=PossibleUserWarning)


class QuietConsole(Callback):
    """The filters above in every process of a run: those of `trainer=ddp_cpu` (ddp_spawn) start without the
    filters the launching process set."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        ignore_lightnings_leafspec_deprecation()
        ignore_sync_advice_for_gathered_values()
