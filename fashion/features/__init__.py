"""Frozen-backbone features computed once and kept on disk (the `feature_cache` config key).

`fingerprint` says what the features depend on, `runners` computes them (onnxruntime or eager
PyTorch), `store` keeps them; `fashion.data.cached` serves them to training as data.
"""

from fashion.features.runners import RUNTIMES, compute_cacheable_inputs
from fashion.features.store import FeatureCache

__all__ = ["FeatureCache", "RUNTIMES", "compute_cacheable_inputs"]
