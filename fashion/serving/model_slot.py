"""The model a server answers with, swappable while it serves.

The slot holds one immutable `Loaded` (predictor, manifest, version). A request reads `slot.current`
once and uses that object to the end, so a reload, which builds the new model beside the old one and
then replaces the reference in one assignment, never fails or mixes a request: requests already running
finish on the model they started with, the next ones get the new one.

A registry model's versions are downloaded into `cache`; after a swap the slot keeps the served version
and the one before it (the rollback) and removes the others, so a server reloaded after every retraining
does not fill its disk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion.inference.bundle import read_manifest
from fashion.inference.predictor import Predictor
from fashion.tracking.registry import fetch_bundle, is_registry_uri, parse, prune_cache


@dataclass(frozen=True)
class Loaded:
    predictor: Predictor
    manifest: dict[str, Any]
    bundle: Path
    version: str | None       # `name/3` for a registry model, None for a folder
    run_id: str | None


class ModelSlot:
    """`source`: a bundle folder or `models:/<name>@<alias>` (or `models:/<name>/<version>`)."""

    def __init__(self, source: str | Path, load: Callable[[Path], Predictor], tracking_uri: str | None = None,
                 cache: str | Path = "model_cache") -> None:
        self.source, self.load, self.tracking_uri, self.cache = str(source), load, tracking_uri, Path(cache)
        self.lock = threading.Lock()
        self.current = self.build()

    def locate(self) -> tuple[Path, str | None, str | None]:
        if is_registry_uri(self.source):
            if not self.tracking_uri:
                raise ValueError(f"{self.source} is a registry model: give tracking_uri")
            registered = fetch_bundle(self.source, self.tracking_uri, self.cache)
            return registered.bundle, registered.label, registered.run_id
        return Path(self.source), None, None

    def build(self) -> Loaded:
        bundle, version, run_id = self.locate()
        predictor = self.load(bundle)
        manifest = predictor.trained.manifest   # the one the load verified every file against, not a second read
        return Loaded(predictor, manifest, bundle, version, run_id or manifest.get("source", {}).get("mlflow_run_id"))

    def unchanged(self) -> bool:
        """Whether the source still names the served model: the same registry version, or a folder whose
        manifest (every file's sha256, verified at load) is the one served."""
        if is_registry_uri(self.source):
            return self.locate()[1] == self.current.version
        return read_manifest(Path(self.source)) == self.current.manifest

    def reload(self) -> tuple[Loaded, bool]:
        """Loads what the source names now and swaps it in; (the model now served, whether it changed).
        A source that still names the served model loads nothing."""
        with self.lock:   # two admins reloading at once load once each, in turn
            if self.unchanged():
                return self.current, False
            loaded, previous = self.build(), self.current
            self.current = loaded
            if is_registry_uri(self.source):
                keep = {v.rsplit("/", 1)[-1] for v in (loaded.version, previous.version) if v}
                prune_cache(self.cache, parse(self.source)[0], keep)
            return loaded, True
