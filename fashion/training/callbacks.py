"""Lightning callbacks of our own (the rest come from Lightning via the `callbacks` config)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch import Callback


class EpochSeed(Callback):
    """Reseed every RNG with `seed + epoch` at each epoch start.

    Shuffling, dropout and augmentation of epoch k then depend only on (seed, k), so a run resumed
    from the checkpoint of epoch k-1 trains exactly as the uninterrupted run did.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        L.seed_everything(self.seed + trainer.current_epoch, workers=True, verbose=False)
