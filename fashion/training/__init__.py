"""Training stage: the LightningModule, metrics, schedules and MLflow tracking."""

from fashion.training.module import TaggerModule

__all__ = ["TaggerModule"]
