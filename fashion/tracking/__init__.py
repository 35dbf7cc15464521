"""Tracking stage: the MLflow run (`run`: store, identity, life), what it records (`artifacts`) and
the Lightning logger that writes its metrics (`logger`)."""

from fashion.config import tracking_uri
from fashion.tracking.artifacts import MLflowArtifacts, describe_run, log_run_inputs
from fashion.tracking.logger import MLflowRunLogger
from fashion.tracking.run import PrepareMLflowStore, ensure_experiment, find_resume_point, tracked_run

__all__ = ["MLflowArtifacts", "MLflowRunLogger", "PrepareMLflowStore", "describe_run", "ensure_experiment",
           "find_resume_point", "log_run_inputs", "tracked_run", "tracking_uri"]
