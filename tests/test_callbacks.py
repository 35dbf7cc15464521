"""Our Lightning callbacks, on Lightning's own BoringModel: seconds, no data set needed."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from fashion.training.callbacks import EMAWeights


class WeightsAtTest(BoringModel):
    """Records the weights `trainer.test` actually scores."""

    def test_step(self, batch, batch_idx):
        self.tested_weight = self.layer.weight.detach().clone()
        return super().test_step(batch, batch_idx)


def fit_then_test(tmp_path, ema) -> tuple[torch.Tensor, dict]:
    model = WeightsAtTest()
    checkpoint = ModelCheckpoint(dirpath=tmp_path)  # no monitor: "best" is the last epoch
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=2, limit_train_batches=4, limit_val_batches=2,
                        limit_test_batches=1, callbacks=[ema, checkpoint], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(model)
    trainer.test(model, ckpt_path="best")
    saved = torch.load(checkpoint.best_model_path, weights_only=True)
    return model.tested_weight, saved


def test_ema_weights_are_what_test_scores(tmp_path):
    tested, saved = fit_then_test(tmp_path, EMAWeights(decay=0.5))
    averaged, raw = saved["state_dict"]["layer.weight"], saved["current_model_state"]["layer.weight"]
    assert not torch.allclose(averaged, raw)  # the average really differs from the last raw weights
    assert torch.equal(tested, averaged)
