"""Rebuild a trained MultiHeadTagger from a Lightning checkpoint without unpickling arbitrary objects.

TaggerModule keeps only plain containers in its hparams (`vocabularies`, `run_config`), so the
checkpoint loads with `torch.load(weights_only=True)`. A checkpoint may come from elsewhere, so the
architecture is rebuilt from the run's backbone/head/extra_features config by
`fashion.models.architecture` (this project's classes only, typed fields, no Hydra `instantiate`),
and the weights come from the checkpoint, never from a hub.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fashion.calibration import Decision
from fashion.data.taxonomy import Taxonomy
from fashion.data.transforms import Preprocessing
from fashion.data.vocab import LabelSpec, LabelVocabulary, saved_label_mapping

if TYPE_CHECKING:
    from fashion.models.tagger import MultiHeadTagger


@dataclass
class TrainedModel:
    """What inference needs: the network (its temperatures included), its label vocabularies, its input
    preprocessing, the taxonomy of its training data and its decision rule (acceptance thresholds).

    `build` makes the PyTorch network on first use of `model`: onnxruntime answers from the bundle's
    model.onnx, so a scoring job or a Spark worker on ONNX never builds it (nor imports timm)."""

    build: Callable[[], MultiHeadTagger]
    vocabularies: dict[str, LabelVocabulary]
    preprocessing: Preprocessing
    run_config: dict[str, Any]
    taxonomy: Taxonomy | None = None
    decision: Decision | None = None
    manifest: dict[str, Any] = field(default_factory=dict)   # a bundle's: the one its files were verified against
    saved_temperatures: Callable[[], dict[str, float]] | None = None   # a bundle's, read from its weights file
    label_mapping: LabelSpec | None = None   # how the training data's labels were mapped (labels.mappings), if at all

    def __post_init__(self) -> None:
        if self.decision is None:
            self.decision = Decision.review_everything(self.attributes, "the model was not calibrated")

    @property
    def attributes(self) -> list[str]:
        return list(self.vocabularies)

    @cached_property
    def model(self) -> MultiHeadTagger:
        return self.build().eval()

    def temperatures(self) -> dict[str, float]:
        """What divides each head's logits. A bundle reads them from its weights: fashion-eval and the promotion
        gate score the uncalibrated model too, and on onnxruntime they need these seven numbers, not the network."""
        if self.saved_temperatures is None or "model" in self.__dict__:
            return self.model.temperatures()
        return self.saved_temperatures()


def check_temperatures(temperature: torch.Tensor, attributes: int) -> None:
    """A temperature divides logits: a zero, negative or NaN one serves NaN confidences with no error."""
    if temperature.shape != (attributes,) or not torch.isfinite(temperature).all() or (temperature <= 0).any():
        raise ValueError(f"'temperature' must hold a positive number for each of the {attributes} attributes, "
                         f"not {temperature.tolist()}")


def read_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """torch.load with weights only: a pickle that would build other objects (run code) is refused, never
    run. Its refusals are one line naming the file, as the tools report bad input, not torch's page that
    suggests `weights_only=False`, the one thing not to do with a file from elsewhere. `mmap` leaves the
    tensors on disk until read, for a caller that only checks the file (shapes, not values)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} is not a checkpoint fashion-train wrote: it is not a PyTorch file, or it holds "
                         "objects other than tensors and plain values, which are not loaded (they could run code)") from None
    except (RuntimeError, EOFError) as err:   # a cut or damaged zip archive
        raise ValueError(f"{path} is not a readable PyTorch file (cut short or damaged?): {str(err).split('. ')[0][:160]}") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} is not a fashion-train checkpoint (it holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def load_checkpoint(path: str | Path) -> TrainedModel:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hparams, dict) or "vocabularies" not in hparams or "run_config" not in hparams:
        raise ValueError(f"{path} is not a fashion-train checkpoint (no vocabularies/run_config in its hyper_parameters)")
    vocabularies = {a: LabelVocabulary.from_dict(v) for a, v in hparams["vocabularies"].items()}
    from fashion.models.architecture import build_model

    model = build_model(hparams["run_config"], {a: len(v) for a, v in vocabularies.items()}, source=f"{path}: run_config")
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model.load_weights(state)
    try:
        check_temperatures(model.temperature, len(vocabularies))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    attributes = list(vocabularies)
    decision = Decision.from_dict(checkpoint["decision"], attributes, f"{path}: decision") if checkpoint.get("decision") else None
    labels = hparams["run_config"].get("labels") or {}
    try:
        mapping = saved_label_mapping({key: labels.get(key) or {} for key in ("mappings", "unmapped")}, attributes)
    except ValueError as err:
        raise ValueError(f"{path}: run_config.labels: {err}") from None
    return TrainedModel(lambda: model, vocabularies, model.backbone.preprocessing, dict(hparams["run_config"]),
                        Taxonomy.from_dict(hparams.get("taxonomy"), f"{path}: taxonomy"), decision, label_mapping=mapping)
