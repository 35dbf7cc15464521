"""Run `fashion.train` but SIGKILL the process right after its first `last.ckpt` is written.

Used by test_resume.py to simulate a job killed by the scheduler or the OOM killer: no exception
handler, no logger finalisation, the MLflow run left RUNNING.
"""

import os
import signal

from lightning.pytorch.callbacks import ModelCheckpoint

_save_last = ModelCheckpoint._save_last_checkpoint


def _save_last_then_die(self, trainer, monitor_candidates):
    _save_last(self, trainer, monitor_candidates)
    os.kill(os.getpid(), signal.SIGKILL)


ModelCheckpoint._save_last_checkpoint = _save_last_then_die

if __name__ == "__main__":
    from fashion.train import main

    main()
