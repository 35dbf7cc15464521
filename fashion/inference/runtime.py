"""One place that turns a bundle or checkpoint into a Predictor, on the runtime the user asked for.

onnxruntime answers about 3x faster than eager PyTorch on CPU with the same probabilities
(docs/onnx.md), so `auto` takes it whenever a bundle carries a model.onnx. A checkpoint has no ONNX
graph: it always runs in PyTorch. Grad-CAM needs gradients and always runs on the PyTorch model,
whichever runtime answers the predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fashion.validation import typed

if TYPE_CHECKING:   # torch loads with it: `fashion-serve --help` and a refused key need only the `Runtime` below
    from fashion.inference.predictor import Predictor

Runtime = Literal["auto", "onnx", "torch"]


@typed
def load_predictor(*, bundle: str | Path | None = None, checkpoint: str | Path | None = None, runtime: Runtime = "auto",
                   top_k: int = 3, batch_size: int = 32, taxonomy: bool = True, threads: int | None = None) -> Predictor:
    """Exactly one of `bundle` (a fashion-export folder) and `checkpoint` (a fashion-train .ckpt). `threads`:
    onnxruntime's intra-op threads per batch (None: every core); PyTorch keeps its process-wide setting."""
    from fashion.inference.predictor import Predictor

    if (bundle is None) == (checkpoint is None):
        raise ValueError("give exactly one of a bundle and a checkpoint")
    if checkpoint is not None:
        if runtime == "onnx":
            raise ValueError(f"runtime=onnx needs a bundle with model.onnx; {checkpoint} is a checkpoint (fashion-export it first)")
        from fashion.inference.checkpoint import load_checkpoint

        return Predictor(load_checkpoint(checkpoint), top_k=top_k, batch_size=batch_size, taxonomy=taxonomy)
    from fashion.inference.bundle import BundleFiles, load_bundle

    files = BundleFiles(bundle)   # one manifest read: every file of this load is checked against the same one
    if runtime == "onnx" or (runtime == "auto" and files.has("model.onnx")):
        from fashion.inference.onnx_runtime import OnnxPredictor

        return OnnxPredictor(load_bundle(files, build_now=False), files, top_k=top_k, batch_size=batch_size, taxonomy=taxonomy, threads=threads)
    return Predictor(load_bundle(files), top_k=top_k, batch_size=batch_size, taxonomy=taxonomy)
