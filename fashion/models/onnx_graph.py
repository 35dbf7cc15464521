"""ONNX export with the settings every graph of ours shares: one opset, a dynamic batch axis.

Both the bundle's model.onnx and the feature cache's frozen prefix go through here, so a change of
opset or exporter reaches both.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

ONNX_OPSET = 17


def export_graph(module: nn.Module, example: torch.Tensor, path: str | Path, input_name: str,
                 output_names: Sequence[str]) -> Path:
    """Trace `module` (eval mode) on `example` into `path`; every input and output is batch-dynamic.

    The TorchScript tracer (`dynamo=False`) handles timm's dynamic 'same' padding at a fixed image
    size; its warnings about shape checks frozen into constants are expected and silenced.
    """
    names = list(output_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (example,), str(path), input_names=[input_name], output_names=names,
            dynamic_axes={n: {0: "batch"} for n in [input_name, *names]}, opset_version=ONNX_OPSET, dynamo=False,
        )
    return Path(path)
