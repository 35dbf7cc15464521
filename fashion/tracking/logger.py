"""Lightning's MLflow logger, made safe to resume into."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only


class MLflowRunLogger(MLFlowLogger):
    """Lightning's MLFlowLogger that never logs a metric twice at one step.

    Lightning sends `epoch` with every metrics dict of a step, and a resumed run (`run_id=`)
    replays the steps after its last checkpoint: both would leave duplicate points in MLflow.
    """

    def __init__(self, *args: Any, system_metrics: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.system_metrics = system_metrics   # the run's CPU/memory/GPU use as system/* metrics (fashion.tracking.run)
        self._continuing = kwargs.get("run_id") is not None
        self._logged: set[tuple[str, int]] | None = None

    def _already_logged(self) -> set[tuple[str, int]]:
        if self._logged is None:
            self._logged = set()
            if self._continuing:
                client, run_id = self.experiment, self.run_id
                for key in client.get_run(run_id).data.metrics:
                    self._logged |= {(key, m.step) for m in client.get_metric_history(run_id, key)}
        return self._logged

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        seen = self._already_logged()
        fresh = {k: v for k, v in metrics.items() if (k, step or 0) not in seen}
        if fresh:
            super().log_metrics(fresh, step)
            seen |= {(k, step or 0) for k in fresh}
