"""Inference stage: checkpoint or bundle -> Predictor -> labels, confidences, top-k."""

from fashion import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "fashion.inference.bundle": ["export_bundle", "load_bundle"],
    "fashion.inference.checkpoint": ["TrainedModel", "load_checkpoint"],
    "fashion.inference.predictor": ["Prediction", "Predictor"],
})
