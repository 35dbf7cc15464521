"""Inference stage: checkpoint or bundle -> Predictor -> labels, confidences, top-k."""

from fashion.inference.bundle import export_bundle, load_bundle
from fashion.inference.checkpoint import TrainedModel, load_checkpoint
from fashion.inference.predictor import Prediction, Predictor

__all__ = ["export_bundle", "load_bundle", "TrainedModel", "load_checkpoint", "Prediction", "Predictor"]
