"""The model bundle: a self-contained folder that serving needs and nothing that runs code on load.

    model.safetensors    weights (tensors only)
    model.onnx           the same network, softmax outputs per attribute, dynamic batch
    config.json          the run's backbone / head / extra_features config (rebuilds the architecture)
    vocabularies.json    class names per attribute, in head-output order
    preprocessing.json   image size, mean, std, pad fill
    taxonomy.json        articleType -> subCategory/masterCategory where training data is unanimous
    manifest.json        backbone, attributes, dataset fingerprint, metrics, source run, versions

Loading reads JSON and safetensors only: no pickle, so a bundle from elsewhere cannot execute code.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fashion.data.transforms import Preprocessing
from fashion.data.vocab import LabelVocabulary
from fashion.inference.checkpoint import TrainedModel, build_model
from fashion.models.onnx_graph import ONNX_OPSET, export_graph

BUNDLE_FILES = ("model.safetensors", "config.json", "vocabularies.json", "preprocessing.json", "manifest.json")


class ProbabilityModel(nn.Module):
    """Images -> one softmax tensor per attribute, as a tuple in attribute order (what ONNX exports)."""

    def __init__(self, model: nn.Module, attributes: list[str]) -> None:
        super().__init__()
        self.model, self.attributes = model, list(attributes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.model(images)
        return tuple(torch.softmax(logits[a], dim=1) for a in self.attributes)


def export_onnx(trained: TrainedModel, path: Path) -> Path:
    size = trained.preprocessing.image_size
    wrapper = ProbabilityModel(trained.model.eval(), trained.attributes).eval()
    example = torch.zeros(2, 3, size, size)
    return export_graph(wrapper, example, path, "images", trained.attributes)


def export_bundle(trained: TrainedModel, output: str | Path, manifest: dict[str, Any] | None = None, onnx: bool = True) -> Path:
    """Write the bundle folder; `manifest` adds provenance (run id, metrics, dataset fingerprint)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in trained.model.state_dict().items()}
    save_file(state, str(output / "model.safetensors"))
    config = {key: trained.run_config.get(key) for key in ("backbone", "head", "extra_features")}
    write_json(output / "config.json", config)
    write_json(output / "vocabularies.json", {a: v.to_dict() for a, v in trained.vocabularies.items()})
    write_json(output / "preprocessing.json", asdict(trained.preprocessing))
    write_json(output / "taxonomy.json", trained.taxonomy)
    files = list(BUNDLE_FILES)
    if onnx:
        export_onnx(trained, output / "model.onnx")
        files.append("model.onnx")
    write_json(output / "manifest.json", {
        "format": "fashion-bundle/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": trained.run_config["backbone"]["name"],
        "attributes": trained.attributes,
        "num_classes": {a: len(v) for a, v in trained.vocabularies.items()},
        "image_size": trained.preprocessing.image_size,
        "files": files,
        "onnx_opset": ONNX_OPSET if onnx else None,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        **(manifest or {}),
    })
    return output


def load_bundle(path: str | Path) -> TrainedModel:
    """Rebuild the model from JSON + safetensors (no pickle); a missing file names itself."""
    path = Path(path)
    missing = [name for name in BUNDLE_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete model bundle: missing {missing}")
    config = json.loads((path / "config.json").read_text())
    vocabularies = {a: LabelVocabulary.from_dict(v) for a, v in json.loads((path / "vocabularies.json").read_text()).items()}
    prep = json.loads((path / "preprocessing.json").read_text())
    preprocessing = Preprocessing(int(prep["image_size"]), tuple(prep["mean"]), tuple(prep["std"]), int(prep.get("pad_fill", 255)))
    taxonomy = json.loads((path / "taxonomy.json").read_text()) if (path / "taxonomy.json").is_file() else {}
    model = build_model(config, vocabularies)
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    return TrainedModel(model.eval(), vocabularies, preprocessing, config, taxonomy)


def read_manifest(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "manifest.json").read_text())


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
