"""The on-disk feature cache: one safetensors file per (backbone, weights, preprocessing, images, view).

When the backbone is frozen and training images are not randomly augmented, every epoch would push
the same pixels through the same network. The cache runs the frozen part once over all rows of the
table, and the datamodule then serves the stored inputs instead of images: later epochs, and later
runs of the same images (a head sweep, a loss-weighting ablation, another label grouping), train
only what is trainable. For a partially fine-tuned EfficientNet (`Backbone.cacheable`) it stores
the feature maps where the trainable stages begin.

Augmentation `views` (the mirror image, say) are cached too, one entry per view, and training
draws one version of each image per step; random augmentation `steps` rule the cache out.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from filelock import FileLock
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fashion.data.transforms import Augmentation, Preprocessing
from fashion.features.fingerprint import cache_keys
from fashion.features.runners import Runtime, compute_cacheable_inputs
from fashion.machine import cpu_instruction_set, installed, processor, processor_name
from fashion.models.tagger import MultiHeadTagger
from fashion.validation import typed

if TYPE_CHECKING:
    import albumentations as A

log = logging.getLogger(__name__)
UNRECORDED = "unrecorded (an entry older than the record)"


@typed
class FeatureCache:
    """On-disk cache of the frozen part's outputs (the `feature_cache` config key; `null` turns it off).

    It applies whenever it cannot change the result: a frozen backbone or prefix, and no random
    augmentation `steps`. `runtime`, `batch_size` and `num_workers` only affect how fast it is
    filled: `onnx` (default) runs the frozen part 2.8-4x faster than eager PyTorch on 2 CPU cores
    (docs/feature_cache.md) and agrees with it to ~1e-5; the runtime is not part of the key.

    Neither is the machine: a cache shared by a cluster's nodes, or copied with a project, is filled once. Each
    entry records what filled it (`filled_on`: the runtime, its version, the processor); a run says so in its tag
    `feature_cache.filled_on`, and warns when this run would have filled it otherwise, as features (and so the last
    digits of its metrics) can differ from a cold-cache run here.
    """

    def __init__(self, directory: str, batch_size: int = 64, num_workers: int = 0, runtime: Runtime = "onnx") -> None:
        self.directory = Path(directory)
        self.runtime = runtime
        self.batch_size, self.num_workers = batch_size, num_workers
        self.last_status: str = "off"  # off | hit | built: logged with the run
        self.filled_on: set[str] = set()   # what filled the entries this cache last served

    @staticmethod
    def applies(model: MultiHeadTagger, augmentation: Augmentation) -> bool:
        """Valid only when each image has a fixed set of versions whose frozen-part outputs never change."""
        return model.backbone.cacheable and augmentation.cacheable

    def load_or_compute(self, model: MultiHeadTagger, preprocessing: Preprocessing,
                        table: pd.DataFrame) -> dict[str, torch.Tensor]:
        """`model.cacheable_inputs` for every row of `table` (columns id, path), in table order."""
        return self.load_with_views(model, preprocessing, table, ())[0]

    def load_with_views(self, model: MultiHeadTagger, preprocessing: Preprocessing, table: pd.DataFrame,
                        views: Sequence[A.BasicTransform], true_aspect: float | None = None,
                        ) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
        """The images' cached inputs and each view's; `last_status` is `hit` only if all were on disk."""
        ids, paths = table["id"].astype(int).tolist(), table["path"].tolist()
        versions = [None, *views]
        loaded, statuses = [], []
        self.filled_on = set()
        for view, key in zip(versions, cache_keys(model, preprocessing, ids, paths, versions, true_aspect)):
            loaded.append(self._load_or_fill(key, model, preprocessing, ids, paths, view, true_aspect))
            statuses.append(self.last_status)
        self.last_status = "hit" if set(statuses) == {"hit"} else "built"
        here = filler(self.runtime)
        if elsewhere := sorted(self.filled_on - {here, UNRECORDED}):
            log.warning("feature cache entries in %s were filled with %s, where this run would fill them with %s: "
                        "features then differ by about 1e-5, so this run's metrics can differ in their last digits from "
                        "one that fills the cache here (delete those entries to fill them here)", self.directory,
                        " and ".join(elsewhere), here)
        return loaded[0], loaded[1:]

    def _load_or_fill(self, key: str, model: MultiHeadTagger, preprocessing: Preprocessing, ids: list[int],
                      paths: list[str], view: A.BasicTransform | None, true_aspect: float | None = None,
                      ) -> dict[str, torch.Tensor]:
        path = self.directory / f"{key}.safetensors"
        seen = file_version(path)
        stored = self._hit(path, ids)
        if stored is not None:
            return stored
        self.directory.mkdir(parents=True, exist_ok=True)
        # One process fills an entry while the others wait, then read it: torchrun's ranks (and the jobs of a
        # parallel sweep) each filled the whole cache at once, decoding every image on the same CPU cores.
        # Read again only what another process wrote meanwhile: an unreadable entry was read and warned of twice.
        with FileLock(f"{path}.lock"):
            stored = self._hit(path, ids) if file_version(path) != seen else None
            return stored if stored is not None else self._fill(path, model, preprocessing, ids, paths, view, true_aspect)

    def _hit(self, path: Path, ids: list[int]) -> dict[str, torch.Tensor] | None:
        """The entry's rows for `ids` in that order, or None when it is absent, unreadable or lacks one."""
        read = self._read(path)
        if read is None:
            return None
        stored, filled_on = read
        by_id = {int(i): n for n, i in enumerate(stored.pop("ids").tolist())}
        if not all(i in by_id for i in ids):
            return None
        self.last_status = "hit"
        self.filled_on.add(filled_on)
        log.info("feature cache hit: %s", path)
        rows = torch.tensor([by_id[i] for i in ids])
        return {name: tensor[rows] for name, tensor in stored.items()}

    def _fill(self, path: Path, model: MultiHeadTagger, preprocessing: Preprocessing, ids: list[int], paths: list[str],
              view: A.BasicTransform | None, true_aspect: float | None) -> dict[str, torch.Tensor]:
        started = time.perf_counter()
        inputs = compute_cacheable_inputs(model, preprocessing, paths, self.batch_size, self.num_workers, self.runtime,
                                          view, true_aspect)
        partial, here = path.with_suffix(f".{os.getpid()}.tmp"), filler(self.runtime)
        save_file({"ids": torch.tensor(ids, dtype=torch.long), **inputs}, partial,
                  metadata={"backbone": model.backbone.name, "preprocessing": repr(preprocessing), "filled_on": here})
        partial.replace(path)  # atomic: an interrupted run never leaves a half-written cache behind
        self.last_status = "built"
        self.filled_on.add(here)
        log.info("feature cache built: %d images%s in %.1fs (%s) -> %s", len(ids), f" ({view!r})" if view else "",
                 time.perf_counter() - started, self.runtime, path)
        return inputs

    @staticmethod
    def _read(path: Path) -> tuple[dict[str, torch.Tensor], str] | None:
        """The stored entry and what filled it, or None to fill it: absent, or unreadable (a copy cut short, a
        disk that filled)."""
        if not path.is_file():
            return None
        try:
            with safe_open(path, "pt") as entry:
                tensors = {name: entry.get_tensor(name) for name in entry.keys()}
                return tensors, (entry.metadata() or {}).get("filled_on", UNRECORDED)
        except SafetensorError as err:
            log.warning("feature cache entry %s is unreadable (%s): filling it again", path, err)
            return None


def filler(runtime: str) -> str:
    """What fills an entry here, as recorded in it: the runtime and what its arithmetic depends on (for
    onnxruntime the CPU's own instruction set, which torch's `ATEN_CPU_CAPABILITY` does not cap)."""
    if runtime != "onnx":
        return f"torch {torch.__version__} on {processor()}"
    vectors = cpu_instruction_set()
    return f"onnxruntime {installed('onnxruntime', 'onnxruntime-gpu')} on {processor_name()}" + (f", {vectors}" if vectors else "")


def file_version(path: Path) -> tuple[int, int, int] | None:
    """Which file is at `path` (inode, size, modification time), or None: a replaced entry has a new one."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_ino, found.st_size, found.st_mtime_ns
