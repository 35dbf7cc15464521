"""One eval-mode pass of the network's frozen part over images: eager PyTorch or onnxruntime."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader

from fashion.data.dataset import ProductImages
from fashion.data.transforms import Preprocessing
from fashion.models.onnx_graph import export_graph
from fashion.models.tagger import MultiHeadTagger

if TYPE_CHECKING:
    import albumentations as A

Runtime = Literal["onnx", "torch"]
InputsRunner = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def compute_cacheable_inputs(model: MultiHeadTagger, preprocessing: Preprocessing, paths: list[str],
                             batch_size: int = 64, num_workers: int = 0, runtime: Runtime = "torch",
                             view: A.BasicTransform | None = None, true_aspect: float | None = None,
                             ) -> dict[str, torch.Tensor]:
    """`model.cacheable_inputs` of every image (or its `view`), with the same preprocessing as training."""
    fixed = [view] if view is not None else []
    dataset = ProductImages(paths, {}, preprocessing.eval_transform(*fixed), preprocessing.decode_side, true_aspect)
    # Its own generator: filling the cache must not advance the global RNG, or a cached run would
    # draw different dropout masks than the same run without the cache.
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, generator=torch.Generator())
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {}
    try:
        run = RUNNERS[runtime](model, preprocessing.image_size)
        with torch.inference_mode():
            for images, _ in loader:
                for name, tensor in run(images).items():
                    chunks.setdefault(name, []).append(tensor.float().contiguous())
    finally:
        model.train(was_training)
    return {name: torch.cat(parts).contiguous() for name, parts in chunks.items()}


def torch_runner(model: MultiHeadTagger, image_size: int) -> InputsRunner:
    return lambda images: model.cacheable_inputs(images.contiguous(memory_format=torch.channels_last))


class _CacheableInputsGraph(nn.Module):
    """`cacheable_inputs` with tuple outputs, the form ONNX export takes."""

    def __init__(self, model: MultiHeadTagger) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.cacheable_inputs(images).values())


def onnx_runner(model: MultiHeadTagger, image_size: int) -> InputsRunner:
    """The eval-mode frozen part and extras exported to ONNX once, then run by onnxruntime.

    Eager PyTorch runs EfficientNet's depthwise convolutions slowly on CPU; the exported graph has
    its BatchNorms folded into the convolutions and runs on onnxruntime's fused kernels. The file is
    temporary: the session holds the graph, and the fill is its only user.
    """
    import onnxruntime as ort

    names = ["backbone", *model.extras]
    with tempfile.TemporaryDirectory() as tmp:
        path = export_graph(_CacheableInputsGraph(model), torch.zeros(2, 3, image_size, image_size),
                            Path(tmp) / "cacheable_inputs.onnx", "images", names)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = session.run(names, {"images": images.contiguous().numpy()})
        return {name: torch.from_numpy(output) for name, output in zip(names, outputs)}

    return run


RUNNERS: dict[str, Callable[[MultiHeadTagger, int], InputsRunner]] = {"onnx": onnx_runner, "torch": torch_runner}
RUNTIMES = tuple(RUNNERS)
