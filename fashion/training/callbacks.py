"""Lightning callbacks of our own (the rest come from Lightning via the `callbacks` config)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EMAWeightAveraging


class EpochSeed(Callback):
    """Reseed every RNG with `seed + epoch` at each epoch start.

    Shuffling, dropout and augmentation of epoch k then depend only on (seed, k), so a run resumed
    from the checkpoint of epoch k-1 trains exactly as the uninterrupted run did.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        L.seed_everything(self.seed + trainer.current_epoch, workers=True, verbose=False)


class EMAWeights(EMAWeightAveraging):
    """Lightning's exponential moving average of the weights, tested as it was validated and saved.

    Validation, checkpoints and the end of training use the averaged weights. The stock callback keeps
    its averaged copy after `fit`, so `trainer.test(ckpt_path="best")` restores the raw weights saved
    beside the average (`current_model_state`) and tests weights that validation never scored.
    Dropping the copy when training ends makes test, like inference, load the averaged `state_dict`.
    Enable with `callbacks.ema='{_target_: fashion.training.callbacks.EMAWeights, decay: 0.998}'`.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._average_model = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None:  # resuming `fit`: restore both the raw and the averaged weights
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
