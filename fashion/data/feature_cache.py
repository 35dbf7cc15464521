"""Frozen-backbone features, computed once per (backbone, weights, preprocessing, images) and kept on disk.

When the backbone is frozen and training images are not randomly augmented, every epoch would push
the same pixels through the same network. The cache runs the backbone once over all rows of the
table, stores the pooled features as safetensors, and the datamodule then serves feature vectors
instead of images: later epochs, and later runs of the same images (a head sweep, a loss-weighting
ablation, another label grouping), train only the heads.

The same holds for the frozen prefix of a partially fine-tuned backbone (`Backbone.cacheable`):
the cache then stores the feature maps where the trainable stages begin, and training runs only
those stages and the heads.

The key covers everything the features depend on and nothing else: backbone name and a digest of
its weights, the preprocessing (size, mean, std, padding), the backbone's input pipeline, and the
images themselves (ids and file contents). Labels are not in it: regrouping colours
or pruning classes reuses the same features.

Augmentation `views` (the mirror image, say) are cached too, one entry per view, and training
draws one version of each image per step; random augmentation `steps` switch the cache off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fashion.data.dataset import ProductImages
from fashion.data.transforms import Augmentation, Preprocessing
from fashion.models.onnx_graph import export_graph

if TYPE_CHECKING:
    import albumentations as A

    from fashion.models.tagger import MultiHeadTagger

log = logging.getLogger(__name__)

ENABLED_CHOICES = ("auto", "off")


def weights_digest(module: nn.Module) -> str:
    """sha256 over parameter and buffer bytes: a retrained or differently loaded backbone gets a new key."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def images_fingerprint(ids: list[int], paths: list[str]) -> str:
    """sha256 over (id, file bytes) per image, in id order.

    The bytes, not size and mtime: a copied, re-downloaded or re-provisioned data set with the same
    pixels keeps its cache (an mtime key rebuilt it each time, a 4-5 minute fill on the subset),
    while any replaced image still changes the key. Reading the files costs about as much as the
    start-of-run image check already pays, and far less than a fill.
    """
    digest = hashlib.sha256()
    for image_id, path in sorted(zip(ids, paths)):
        with open(path, "rb") as file:
            content = hashlib.sha256(file.read()).hexdigest()
        digest.update(f"{image_id}:{content}\n".encode())
    return digest.hexdigest()


CachedInputs = Mapping[str, torch.Tensor]


class FeatureDataset(Dataset):
    """({input name: cached tensor}, {attribute: class index}) pairs: the cached stand-in for ProductImages.

    With `views` (the cached inputs of augmentation views, same rows), each item is the image's own
    inputs or one of its views', drawn uniformly from torch's global RNG like dropout masks are.
    """

    def __init__(self, inputs: CachedInputs, targets: Mapping[str, np.ndarray], views: Sequence[CachedInputs] = ()) -> None:
        versions = [dict(inputs), *map(dict, views)]
        rows = {len(t) for version in versions for t in version.values()}
        if len(rows) != 1 or any(len(t) not in rows for t in targets.values()):
            raise ValueError(f"cached inputs with {sorted(rows)} rows do not match targets {[len(t) for t in targets.values()]}")
        if any(version.keys() != versions[0].keys() for version in versions):
            raise ValueError(f"cached views hold different inputs: {[sorted(v) for v in versions]}")
        self.versions = versions
        self.targets = {a: torch.as_tensor(t, dtype=torch.long) for a, t in targets.items()}
        self.length = rows.pop()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        version = self.versions[int(torch.randint(len(self.versions), ())) if len(self.versions) > 1 else 0]
        return {n: t[index] for n, t in version.items()}, {a: t[index] for a, t in self.targets.items()}


class FeatureCache:
    """On-disk cache of backbone features (the `feature_cache` config key).

    `enabled`: `auto` uses it whenever it is valid (a frozen backbone or prefix, and no random
    augmentation `steps`; augmentation `views` are cached too), `off` never does. `runtime`,
    `batch_size` and `num_workers` only affect how fast it is filled: `onnxruntime` (default) runs
    the frozen part 2.8-4x faster than eager PyTorch on 2 CPU cores (docs/feature_cache.md) and
    agrees with it to ~1e-5; the runtime is not part of the key.
    """

    def __init__(self, directory: str, enabled: str = "auto", batch_size: int = 64, num_workers: int = 0,
                 runtime: str = "onnxruntime") -> None:
        if enabled not in ENABLED_CHOICES:
            raise ValueError(f"feature_cache.enabled={enabled!r}; choose one of {ENABLED_CHOICES}")
        if runtime not in RUNTIMES:
            raise ValueError(f"feature_cache.runtime={runtime!r}; choose one of {RUNTIMES}")
        self.directory = Path(directory)
        self.enabled, self.runtime = enabled, runtime
        self.batch_size, self.num_workers = batch_size, num_workers
        self.last_status: str = "off"  # off | hit | built: logged with the run

    def applies(self, model: MultiHeadTagger, augmentation: Augmentation) -> bool:
        """Valid only when each image has a fixed set of versions whose frozen-part outputs never change."""
        return self.enabled == "auto" and model.backbone.cacheable and augmentation.cacheable

    def key(self, model: MultiHeadTagger, preprocessing: Preprocessing, ids: list[int], paths: list[str],
            view: A.BasicTransform | None = None, true_aspect: float | None = None) -> str:
        return self.keys(model, preprocessing, ids, paths, [view], true_aspect)[0]

    def keys(self, model: MultiHeadTagger, preprocessing: Preprocessing, ids: list[int], paths: list[str],
             versions: Sequence[A.BasicTransform | None], true_aspect: float | None = None) -> list[str]:
        """One key per version of the images (None: the images themselves, whose key predates views).

        The weights and the image files, the costly parts, are hashed once for all versions.
        `true_aspect` enters the key only when set, so caches of images stored at their true aspect keep theirs.
        """
        backbone = model.backbone
        parts = {
            "backbone": backbone.name,
            "pool": backbone.pool,
            "prefix": backbone.prefix_description,
            "weights": weights_digest(backbone),
            "extras": {name: repr(extra) for name, extra in model.extras.items()},
            "preprocessing": repr(preprocessing),
            "images": images_fingerprint(ids, paths),
            **({"true_aspect": true_aspect} if true_aspect is not None else {}),
            **({"source_max_side": preprocessing.source_max_side} if preprocessing.source_max_side else {}),
        }
        return [hashlib.sha256(json.dumps(parts if view is None else {**parts, "view": repr(view)},
                                          sort_keys=True).encode()).hexdigest()[:24] for view in versions]

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
        for view, key in zip(versions, self.keys(model, preprocessing, ids, paths, versions, true_aspect)):
            loaded.append(self._load_or_fill(key, model, preprocessing, ids, paths, view, true_aspect))
            statuses.append(self.last_status)
        self.last_status = "hit" if set(statuses) == {"hit"} else "built"
        return loaded[0], loaded[1:]

    def _load_or_fill(self, key: str, model: MultiHeadTagger, preprocessing: Preprocessing, ids: list[int],
                      paths: list[str], view: A.BasicTransform | None, true_aspect: float | None = None,
                      ) -> dict[str, torch.Tensor]:
        path = self.directory / f"{key}.safetensors"
        if path.is_file():
            stored = load_file(path)
            by_id = {int(i): n for n, i in enumerate(stored.pop("ids").tolist())}
            if all(i in by_id for i in ids):
                self.last_status = "hit"
                log.info("feature cache hit: %s", path)
                rows = torch.tensor([by_id[i] for i in ids])
                return {name: tensor[rows] for name, tensor in stored.items()}
        started = time.perf_counter()
        inputs = compute_cacheable_inputs(model, preprocessing, paths, self.batch_size, self.num_workers, self.runtime, view,
                                          true_aspect)
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        save_file({"ids": torch.tensor(ids, dtype=torch.long), **inputs}, partial,
                  metadata={"backbone": model.backbone.name, "preprocessing": repr(preprocessing)})
        partial.replace(path)  # atomic: an interrupted run never leaves a half-written cache behind
        self.last_status = "built"
        log.info("feature cache built: %d images%s in %.1fs (%s) -> %s", len(ids), f" ({view!r})" if view else "",
                 time.perf_counter() - started, self.runtime, path)
        return inputs


InputsRunner = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def compute_cacheable_inputs(model: MultiHeadTagger, preprocessing: Preprocessing, paths: list[str],
                             batch_size: int = 64, num_workers: int = 0, runtime: str = "torch",
                             view: A.BasicTransform | None = None, true_aspect: float | None = None,
                             ) -> dict[str, torch.Tensor]:
    """One eval-mode pass over `paths` (or their `view`), with the same preprocessing as training."""
    if runtime not in RUNNERS:
        raise ValueError(f"runtime={runtime!r}; choose one of {RUNTIMES}")
    fixed = [view] if view is not None else []
    dataset = ProductImages(paths, {}, preprocessing.eval_transform(*fixed), preprocessing.image_size, true_aspect)
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


def onnxruntime_runner(model: MultiHeadTagger, image_size: int) -> InputsRunner:
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


RUNNERS: dict[str, Callable[[MultiHeadTagger, int], InputsRunner]] = {"onnxruntime": onnxruntime_runner, "torch": torch_runner}
RUNTIMES = tuple(RUNNERS)
