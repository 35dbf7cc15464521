"""The bundle's ONNX model under onnxruntime, with the same preprocessing and output as Predictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fashion.inference.bundle import BundleFiles
from fashion.inference.checkpoint import TrainedModel
from fashion.inference.predictor import Predictor


class OnnxPredictor(Predictor):
    """Predictor whose forward pass is onnxruntime (CPU) instead of eager PyTorch."""

    runtime = "onnx"

    def __init__(self, trained: TrainedModel, bundle: str | Path | BundleFiles, top_k: int = 3, batch_size: int = 32,
                 taxonomy: bool = True, threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__(trained, top_k, batch_size, taxonomy)
        self.threads = threads   # intra-op threads per batch; None: every core
        files = bundle if isinstance(bundle, BundleFiles) else BundleFiles(bundle)
        if not files.has("model.onnx"):
            raise FileNotFoundError(f"no ONNX model in {files.path} (was it exported with --no-onnx?)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # From the verified bytes, not the path: the file onnxruntime parses is the one the manifest hashed.
        self.session = ort.InferenceSession(files.read_bytes("model.onnx"), options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        expected = trained.attributes
        if self.output_names != expected:
            raise ValueError(f"ONNX outputs {self.output_names} do not match the bundle's attributes {expected}")

    def probabilities(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.session.run(self.output_names, {"images": np.ascontiguousarray(batch.numpy(), dtype=np.float32)})
        return {name: torch.from_numpy(out) for name, out in zip(self.output_names, outputs)}
