"""The model bundle: a self-contained folder that serving needs, verified file by file on load.

    model.safetensors    weights (tensors only)
    model.onnx           the same network, softmax outputs per attribute, dynamic batch
    config.json          the run's backbone / head / extra_features config (rebuilds the architecture)
    vocabularies.json    class names per attribute, in head-output order
    preprocessing.json   image size, mean, std, pad fill, resolution normalisation (source max side, JPEG quality)
    taxonomy.json        articleType / subCategory / masterCategory combinations of the training split
    decision.json        per attribute the confidence threshold for accepting a tag (calibration)
    labels.json          how the training data's labels were mapped (labels.mappings), when they were
    manifest.json        format version, sha256 of every file above, backbone, attributes, dataset
                         fingerprint, metrics, source run, versions

Bundles are shared and pulled from registries, so loading treats one as untrusted data:
- every file is read through `BundleFiles`, which refuses a file the manifest does not list or whose
  sha256 differs (a tampered or truncated file names itself);
- the architecture is rebuilt from `config.json` by `fashion.models.architecture`, which admits only
  this project's model classes with typed fields (never Hydra `instantiate`);
- weights are safetensors, the rest JSON: nothing is unpickled.
The hashes make a bundle self-consistent, not authentic: whoever can rewrite the folder can rewrite
the manifest too. Pin a bundle's origin by its manifest's digest, or pull it from a registry you trust.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import pydantic
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn

from fashion.calibration import Decision
from fashion.data.taxonomy import Taxonomy
from fashion.data.transforms import Preprocessing
from fashion.data.vocab import LabelVocabulary, saved_label_mapping
from fashion.inference.checkpoint import TrainedModel, check_temperatures
from fashion.models.architecture import ArchitectureError, build_model, validate_architecture
from fashion.models.onnx_graph import ONNX_OPSET, export_graph
from fashion.validation import ImageSide, JpegQuality, describe

FORMAT = "fashion-bundle/2"          # 2: manifest["files"] maps each file to its sha256
REQUIRED_FILES = ("model.safetensors", "config.json", "vocabularies.json", "preprocessing.json")
OPTIONAL_FILES = ("taxonomy.json", "decision.json", "model.onnx", "labels.json")
BUNDLE_FILES = (*REQUIRED_FILES, "manifest.json")
MANIFEST = "manifest.json"


class BundleError(ValueError):
    """A bundle that cannot be trusted or read: says which file and what is wrong with it."""


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


def export_bundle(trained: TrainedModel, output: str | Path, manifest: dict[str, Any] | None = None, onnx: bool = True,
                  overwrite: bool = False) -> Path:
    """Write the bundle folder; `manifest` adds provenance (run id, metrics, dataset fingerprint).

    It is written beside `output` and renamed into place, so `output` is never half a bundle. Replacing one
    takes two renames (old aside, new in), so for that instant there is none: a server reloading then
    fails its reload and keeps serving the model it has. A folder that holds anything is refused: a bundle
    unless `overwrite`, anything else always (nothing of a user's is written over)."""
    output = Path(output)
    refuse_occupied(output, overwrite)
    refuse_non_finite(trained.model)
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)   # left by an export that died
    staging.mkdir(parents=True)
    try:
        write_bundle(trained, staging, manifest, onnx)
        replaced = output.with_name(f".{output.name}.replaced")
        shutil.rmtree(replaced, ignore_errors=True)
        if output.exists():
            output.rename(replaced)
        staging.rename(output)
        shutil.rmtree(replaced, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def refuse_occupied(output: Path, overwrite: bool) -> None:
    """FileExistsError unless `output` is new or empty, or holds a bundle and `overwrite` (fashion-export
    asks before it downloads a checkpoint, export_bundle again before it writes)."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not (output / MANIFEST).is_file():
            raise FileExistsError(f"{output} exists and is not a bundle: write the bundle to a new or empty folder")
        if not overwrite:
            raise FileExistsError(f"{output} already holds a bundle: overwrite=true replaces it, or choose another folder")


def refuse_non_finite(model: torch.nn.Module) -> None:
    """A model whose weights hold NaN (a run that diverged) tags every photo with confidence NaN, which is
    not even JSON: refused before anything is written, naming the first few tensors."""
    broken = [name for name, tensor in model.state_dict().items()
              if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise BundleError(f"the model's weights hold NaN or infinity ({len(broken)} tensor(s): {', '.join(broken[:3])}"
                          f"{', ...' if len(broken) > 3 else ''}): its training diverged, so it cannot tag anything")


def write_bundle(trained: TrainedModel, output: Path, manifest: dict[str, Any] | None, onnx: bool) -> None:
    state = {k: v.contiguous() for k, v in trained.model.state_dict().items()}
    save_file(state, str(output / "model.safetensors"))
    config = {key: trained.run_config.get(key) for key in ("backbone", "head", "extra_features")}
    write_json(output / "config.json", config)
    write_json(output / "vocabularies.json", {a: v.to_dict() for a, v in trained.vocabularies.items()})
    write_json(output / "preprocessing.json", asdict(trained.preprocessing))
    files = list(REQUIRED_FILES)
    if trained.taxonomy:
        write_json(output / "taxonomy.json", trained.taxonomy.to_dict())
        files.append("taxonomy.json")
    write_json(output / "decision.json", trained.decision.to_dict())
    files.append("decision.json")
    if trained.label_mapping:
        write_json(output / "labels.json", {"mappings": trained.label_mapping.mappings, "unmapped": trained.label_mapping.unmapped})
        files.append("labels.json")
    if onnx:
        export_onnx(trained, output / "model.onnx")
        files.append("model.onnx")
    write_json(output / MANIFEST, {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": trained.run_config["backbone"]["name"],
        "attributes": trained.attributes,
        "num_classes": {a: len(v) for a, v in trained.vocabularies.items()},
        "image_size": trained.preprocessing.image_size,
        "files": {name: sha256(output / name) for name in files},
        "onnx_opset": ONNX_OPSET if onnx else None,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        **(manifest or {}),
    })


class BundleFiles:
    """A bundle folder whose files are read only through the sha256 its manifest records."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]

    def read_bytes(self, name: str) -> bytes:
        if not self.has(name):
            raise BundleError(f"{self.path / name}: not listed in {MANIFEST}, so it cannot be verified")
        file = self.path / name
        if not file.is_file():
            raise BundleError(f"{file}: listed in {MANIFEST} but missing")
        data = file.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.manifest["files"][name]:
            raise BundleError(f"{file}: sha256 {digest[:12]}... does not match the manifest's "
                              f"{self.manifest['files'][name][:12]}... ({len(data)} bytes): the file was changed or truncated")
        return data

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read_bytes(name))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(f"{self.path / name}: not valid JSON ({err})") from None


# Each channel has the mean subtracted, then is divided by the spread: a NaN, or a spread of 0 or less, served
# every tag with NaN confidence (numpy's divide warning the only sign).
Finite = Annotated[float, pydantic.Field(allow_inf_nan=False)]
Spread = Annotated[float, pydantic.Field(gt=0, allow_inf_nan=False)]


class SavedPreprocessing(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    image_size: ImageSide
    mean: list[Finite] = pydantic.Field(min_length=3, max_length=3)
    std: list[Spread] = pydantic.Field(min_length=3, max_length=3)
    pad_fill: int = pydantic.Field(255, ge=0, le=255)
    source_max_side: ImageSide | None = None
    source_jpeg_quality: JpegQuality | None = None


def load_bundle(path: str | Path | BundleFiles, build_now: bool = True) -> TrainedModel:
    """Rebuild the model from verified JSON + safetensors; any problem is a BundleError naming the file.
    `build_now=False` leaves the PyTorch network (config.json and the weights) until `.model` is first
    used, with the same checks then: what an onnxruntime predictor, which never uses it, asks for.
    Given a BundleFiles, every file is checked against the manifest it has already read (one snapshot)."""
    files = path if isinstance(path, BundleFiles) else BundleFiles(path)
    prep = _validated(SavedPreprocessing, files.json("preprocessing.json"), files.path / "preprocessing.json")
    try:
        preprocessing = Preprocessing(prep["image_size"], tuple(prep["mean"]), tuple(prep["std"]), prep["pad_fill"],
                                      prep["source_max_side"], prep["source_jpeg_quality"])
    except ValueError as err:
        raise BundleError(f"{files.path / 'preprocessing.json'}: {err}") from None
    raw_vocabularies = files.json("vocabularies.json")
    if not isinstance(raw_vocabularies, Mapping) or not raw_vocabularies:
        raise BundleError(f"{files.path / 'vocabularies.json'}: expected an object of attribute -> vocabulary")
    try:
        vocabularies = {a: LabelVocabulary.from_dict(v) for a, v in raw_vocabularies.items()}
    except ValueError as err:
        raise BundleError(f"{files.path / 'vocabularies.json'}: {err}") from None
    try:
        taxonomy = Taxonomy.from_dict(files.json("taxonomy.json"), str(files.path / "taxonomy.json")) \
            if files.has("taxonomy.json") else None
        decision = Decision.from_dict(files.json("decision.json"), list(vocabularies), str(files.path / "decision.json")) \
            if files.has("decision.json") else None
    except ValueError as err:
        raise BundleError(str(err)) from None
    try:
        mapping = saved_label_mapping(files.json("labels.json"), list(vocabularies)) if files.has("labels.json") else None
    except ValueError as err:
        raise BundleError(f"{files.path / 'labels.json'}: {err}") from None
    config = files.json("config.json")
    try:
        validate_architecture(config, source=str(files.path / "config.json"))   # refused now, even if never built
    except ArchitectureError as err:
        raise BundleError(str(err)) from None
    weights = files.read_bytes("model.safetensors")   # verified now, whether or not the network is ever built
    trained = TrainedModel(partial(build_network, files.path, config, vocabularies, weights), vocabularies, preprocessing, config,
                           taxonomy, decision, files.manifest, partial(saved_temperatures, files.path, weights, list(vocabularies)),
                           mapping)
    if build_now:
        trained.model
    return trained


def build_network(folder: Path, config: Any, vocabularies: Mapping[str, LabelVocabulary], weights: bytes) -> nn.Module:
    try:
        model = build_model(config, {a: len(v) for a, v in vocabularies.items()}, source=str(folder / "config.json"))
    except ArchitectureError as err:
        raise BundleError(str(err)) from None
    try:
        model.load_weights(load_safetensors(weights))
    except (SafetensorError, RuntimeError) as err:
        raise BundleError(f"{folder / 'model.safetensors'}: does not fit the architecture in config.json: {err}") from None
    refuse_bad_temperatures(folder, model.temperature, len(vocabularies))
    return model


def saved_temperatures(folder: Path, weights: bytes, attributes: list[str]) -> dict[str, float]:
    """The temperatures in a bundle's weights, without building the network (weights from before calibration: 1)."""
    try:
        temperature = load_safetensors(weights).get("temperature", torch.ones(len(attributes)))
    except SafetensorError as err:
        raise BundleError(f"{folder / 'model.safetensors'}: not a safetensors file: {err}") from None
    refuse_bad_temperatures(folder, temperature, len(attributes))
    return dict(zip(attributes, temperature.tolist()))


def refuse_bad_temperatures(folder: Path, temperature: torch.Tensor, attributes: int) -> None:
    try:
        check_temperatures(temperature, attributes)
    except ValueError as err:
        raise BundleError(f"{folder / 'model.safetensors'}: {err}") from None


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest, checked for a known format and a sha256 for every required file (not yet the files)."""
    file = Path(path) / MANIFEST
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path} is not a model bundle folder")
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a complete model bundle: missing {MANIFEST}")
    try:
        manifest = json.loads(file.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{file}: expected a JSON object")
    version = manifest.get("format")
    if version != FORMAT:
        hint = " (written before bundles recorded file hashes: export it again with fashion-export)" \
            if version == "fashion-bundle/1" else ""
        raise BundleError(f"{file}: bundle format {version!r} is not supported; this version reads {FORMAT!r}{hint}")
    hashes = manifest.get("files")
    if not isinstance(hashes, dict) or not all(isinstance(h, str) and len(h) == 64 for h in hashes.values()):
        raise BundleError(f"{file}: 'files' must map each bundle file to its sha256")
    unknown = sorted(set(hashes) - set(REQUIRED_FILES) - set(OPTIONAL_FILES))
    missing = [name for name in REQUIRED_FILES if name not in hashes]
    if unknown or missing:
        raise BundleError(f"{file}: 'files' lists unknown files {unknown} / lacks required files {missing}")
    absent = [name for name in hashes if not (Path(path) / name).is_file()]
    if absent:
        raise FileNotFoundError(f"{path} is not a complete model bundle: missing {absent}")
    return manifest


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _validated(schema: type[pydantic.BaseModel], data: Any, where: Path | str) -> dict[str, Any]:
    try:
        return schema.model_validate(data).model_dump()
    except pydantic.ValidationError as err:
        raise BundleError(f"{where}: {describe(err)}") from None


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
