"""Scoring a catalogue on one machine: images are decoded and preprocessed while the model runs, so
the model never waits for JPEG decoding and every core stays busy.

`lanes` batches go through the model at once, each on its own thread; a lane decodes its batch and then
runs the model on it. Pillow's decoder, OpenCV and onnxruntime release the GIL, so while one lane
decodes, the others keep the cores busy with the model. With onnxruntime at one intra-op thread per
lane this beats one session spread over every core even on bare, pre-decoded tensors: single-threaded
runs never wait for each other at a parallel region's barrier (docs/batch_scoring.md).
`workers>=1` adds DataLoader processes that decode instead of the lanes, for machines with cores to spare.
The queue is bounded: at most `lanes x prefetch` batches are in flight, so memory holds a few batches
whatever the catalogue's size (plus the list of paths, ~100 bytes each). An image that cannot be read
becomes an error row with the reason; the job goes on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fashion.data.images import ImageReadError
from fashion.inference.outputs import ScoredBatch
from fashion.inference.predictor import Predictor
from fashion.machine import usable_cores


class ImageFiles(Dataset):
    """(index, padded uint8 pixels, None) or (index, None, why it could not be read) per path."""

    def __init__(self, paths: Sequence[str], load: Callable[[str], np.ndarray], preprocess: Callable[[np.ndarray], np.ndarray]) -> None:
        self.paths, self.load, self.preprocess = paths, load, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return index, self.preprocess(self.load(self.paths[index])), None
        except (ImageReadError, OSError) as err:
            return index, None, str(err) or type(err).__name__


Batch = tuple[list[int], torch.Tensor | None, dict[int, str]]


def collate(items: list[tuple[int, np.ndarray | None, str | None]], normalise: Callable[[list[np.ndarray]], torch.Tensor]) -> Batch:
    """The readable images normalised as one batch (numpy and OpenCV, no torch op: torch would start an
    OpenMP team on every lane thread, whose spinning threads take the cores onnxruntime runs on)."""
    arrays = [pixels for _, pixels, _ in items if pixels is not None]
    errors = {index: error for index, _, error in items if error is not None}
    return [index for index, _, _ in items], normalise(arrays) if arrays else None, errors


def score_paths(predictor: Predictor, paths: Sequence[str], workers: int = 0, lanes: int = 1,
                prefetch: int = 2) -> Iterator[ScoredBatch]:
    """Batches of consecutive paths, in order, each with its tags and its unreadable files' reasons."""
    files = ImageFiles(paths, predictor.load, predictor.preprocess)
    for indices, probabilities, errors in probabilities_in_order(predictor, files, workers, lanes, prefetch):
        yield ScoredBatch([str(paths[i]) for i in indices], [errors.get(i) for i in indices],
                          predictor.tags(probabilities) if probabilities is not None else None)


def probabilities_in_order(predictor: Predictor, files: ImageFiles, workers: int = 0, lanes: int = 1,
                           prefetch: int = 2) -> Iterator[tuple[list[int], dict[str, torch.Tensor] | None, dict[int, str]]]:
    """(indices into `files`, their calibrated probabilities, {index: why it could not be read}) per batch of
    consecutive files, in order: what catalogue scoring turns into tags and fashion-eval into metrics."""
    if workers:
        loader = DataLoader(files, batch_size=predictor.batch_size, num_workers=workers, prefetch_factor=prefetch,
                            collate_fn=partial(collate, normalise=predictor.normalise), persistent_workers=False)
        batches: Iterator[Callable[[], Batch]] = ((lambda batch=batch: batch) for batch in loader)   # already prepared
    else:
        batches = (partial(prepare, files, start, predictor) for start in range(0, len(files), predictor.batch_size))
    yield from scored_in_order(predictor, batches, lanes, lanes * prefetch)


def lanes_for(predictor: Predictor) -> int:
    """As many lanes as onnxruntime's threads per batch fit in the usable cores (a lane per core when it was
    loaded with `threads=1`, one when it spreads a batch over every core); PyTorch already spreads one batch
    over every core."""
    if predictor.runtime != "onnx":
        return 1
    cores = usable_cores()
    return max(1, cores // (getattr(predictor, "threads", None) or cores))


def prepare(files: ImageFiles, start: int, predictor: Predictor) -> Batch:
    return collate([files[i] for i in range(start, min(start + predictor.batch_size, len(files)))], predictor.normalise)


def scored_in_order(predictor: Predictor, batches: Iterator[Callable[[], Batch]], lanes: int,
                    ahead: int) -> Iterator[tuple[list[int], dict[str, torch.Tensor] | None, dict[int, str]]]:
    """Each batch prepared and then run through the model on one of `lanes` threads; results in input order,
    at most `ahead` batches in flight."""
    def score(prepared: Callable[[], Batch]) -> tuple[list[int], dict[str, torch.Tensor] | None, dict[int, str]]:
        indices, batch, errors = prepared()
        return indices, predictor.probabilities(batch) if batch is not None else None, errors

    pool = ThreadPoolExecutor(lanes, thread_name_prefix="fashion-lane")
    pending: deque[Future] = deque()
    try:
        for prepared in batches:
            pending.append(pool.submit(score, prepared))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:   # a consumer that stops early (or an error) must not leave batches decoding behind it
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def helpers_on_one_thread(enabled: bool) -> Iterator[None]:
    """With onnxruntime on every core, the little torch and OpenCV work left (decoding the taxonomy, top-k;
    resizing and normalising each photo) runs on one thread: their thread pools spin on the cores the
    lanes' onnxruntime needs. torch's tripled that work's CPU time (0.12 -> 0.39 ms a photo beside a 160px
    model's 8.5 ms); OpenCV's, about a point of throughput in a paired trial (docs/batch_scoring.md)."""
    before = torch.get_num_threads(), cv2.getNumThreads()
    if enabled:
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
