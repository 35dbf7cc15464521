"""Our Lightning callbacks, on Lightning's own BoringModel: seconds, no data set needed."""

from __future__ import annotations

import lightning as L
import pytest
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


@pytest.mark.parametrize("failed", [False, True])
def test_a_ddp_process_ends_its_process_group_at_exit_unless_its_run_failed(tmp_path, monkeypatch, failed):
    """Left to interpreter shutdown, a gloo group's worker threads can release tensors while Python tears down,
    and the process aborts after its run has finished (the ddp_spawn test's rank 1, once in 18 CI runs). After an
    error it is left alone: another process may still wait in a collective, and the destroy would wait too."""
    import atexit

    import torch.distributed as dist

    from fashion.training.distributed import EndProcessGroupAtExit

    at_exit = []
    monkeypatch.setattr(atexit, "register", at_exit.append)
    monkeypatch.setattr(atexit, "unregister", lambda handler: at_exit.remove(handler) if handler in at_exit else None)
    callback = EndProcessGroupAtExit()
    callback.setup(None, None, "fit")   # not distributed: nothing to end
    assert at_exit == []
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        callback.setup(None, None, "fit")
        callback.setup(None, None, "test")   # torchrun: fit and test in one process, ended once
        assert at_exit == [callback.end_process_group]
        if failed:
            callback.on_exception(None, None, RuntimeError("a rank failed"))
        at_exit[0]()
        assert dist.is_initialized() is failed
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
