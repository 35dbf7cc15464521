"""The REST API and upload page around one model: a bundle folder or a registry alias.

    GET  /                  upload page (drag and drop, previews, a card per image, Grad-CAM toggle)
    GET  /review            review page: the next queued photo, the model's tags to confirm or correct
    GET  /health            model loaded?, version, bundle provenance
    GET  /metrics           Prometheus: traffic, latency, errors, confidence, review share, label drift
    GET  /v1/labels         the classes of every attribute
    POST /v1/predict        multipart `file`
    POST /v1/predict/batch  multipart `files` (up to `max_files`)
    POST /v1/predict/base64 JSON {"image": "<base64>", "filename": "..."}
    GET  /v1/review/next            the oldest queued item                    (API key)
    GET  /v1/review/images/{sha256} its photo                                  (API key)
    POST /v1/feedback               a person's labels for a queued photo       (API key)
    POST /v1/admin/reload           load what the model source names now      (API key)
    GET  /docs              OpenAPI docs

A prediction with a tag that needs review is queued with its photo (`review`, fashion/feedback); `review_for`
names the attributes whose review flag queues it (default: every one; a catalogue whose season tags always
go to a person may leave season out). A full queue (`ReviewStore.max_queued`) queues nothing new, and
/metrics counts what it turned away.
The feedback, review and admin endpoints need the `X-API-Key` header to match `api_key` and are
refused (403) when no key is configured; predictions stay open.

`?explain=articleType,baseColour` (or `explain=true` for every attribute) adds Grad-CAM heatmaps.
Every error, FastAPI's own included, is `{"error": {"code", "message", "filename"?}}` (serving/errors.py).
The model runs in a worker thread behind a limiter, so `/health` answers while requests queue.
"""

from __future__ import annotations

import binascii
import difflib
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, File, Header, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, Field

from fashion.config import ConfigError
from fashion.data.images import base64_bytes
from fashion.data.vocab import LabelVocabulary
from fashion.feedback.store import NAME_LENGTH, ReviewStore, UnknownImage, unprintable
from fashion.inference.checkpoint import TrainedModel
from fashion.inference.explain import explained_attributes, grad_cam, heatmap_png
from fashion.inference.predictor import Predictor
from fashion.inference.runtime import load_predictor
from fashion.serving.errors import error_responses, install_error_handlers
from fashion.serving.model_slot import Loaded, ModelSlot
from fashion.serving.monitoring import Monitor
from fashion.serving.uploads import DecodedImage, UploadLimits, UploadRejected, decode_upload

STATIC = Path(__file__).parent / "static"
log = logging.getLogger(__name__)


def package_version() -> str:
    try:
        return version("fashion")
    except PackageNotFoundError:
        return "unknown"


class Base64Request(BaseModel):
    image: str = Field(description="the image file's bytes, base64-encoded (standard alphabet; line breaks and a "
                                   "data URL's `data:image/...;base64,` prefix are accepted)")
    filename: str | None = None


def new_label_message(labels: Mapping[str, str], vocabularies: Mapping[str, LabelVocabulary]) -> str | None:
    """What a person typed that the model has no class for, with the closest classes it has; None if all are known.
    A misspelt correction would otherwise become a class of its own at the next retraining."""
    new = {a: label for a, label in labels.items() if label not in vocabularies[a].classes}
    if not new:
        return None
    named = "; ".join(f"{a}={label!r} (closest: {', '.join(difflib.get_close_matches(label, vocabularies[a].classes, 3, 0.5)) or 'none'})"
                      for a, label in new.items())
    return f"the model has no class {named}: correct it, or send new_labels: true to add it as a new class"


class SettingRefused(ConfigError):
    """A setting that does not fit the model the server loaded (review_for naming an attribute it does not tag):
    fashion-serve names the key, where a model it cannot load is "cannot load the model"."""


def unplaced_in_taxonomy(labels: Mapping[str, str], trained: TrainedModel) -> str | None:
    """A new class of a taxonomy level (a new articleType) sent without the other levels: the retrained model's
    answers are decoded among the level combinations its training saw, and a correction lacking one is in none, so
    the new class would never be served. None when there is no such class or its levels are all given."""
    levels = trained.taxonomy.attributes
    new = [a for a in levels if a in labels and labels[a] not in trained.vocabularies[a].classes]
    missing = [a for a in levels if a not in labels]
    if not new or not missing:
        return None
    return (f"a new class {', '.join(f'{a}={labels[a]!r}' for a in new)} needs the labels of {missing} too: the model's "
            "answers are decoded among the combinations of " + ", ".join(levels) + " its training saw, and without them "
            "the new class would be in none, so never served")


class FeedbackRequest(BaseModel):
    image_sha256: str = Field(min_length=64, max_length=64, description="the queued photo, as /v1/review/next names it")
    labels: dict[str, str] = Field(min_length=1, description="attribute -> the label a person confirmed or corrected "
                                                             "(spaces around it are dropped)")
    reviewer: str | None = Field(None, max_length=NAME_LENGTH, description="who reviewed it, as the team names people")
    new_labels: bool = Field(False, description="allow labels the model has no class for (a new class, on purpose); "
                                                "without it such a label is refused as a likely typo (`new_label`)")


def create_app(bundle: str | Path, limits: UploadLimits = UploadLimits(), model_threads: int = 1, top_k: int = 3,
               runtime: str = "auto", tracking_uri: str | None = None, model_cache: str | Path = "model_cache",
               api_key: str | None = None, review: ReviewStore | None = None, drift_window: int = 500,
               open_predictions: bool = True, review_for: Sequence[str] | None = None) -> FastAPI:
    """`model_threads`: predictions that may run at once (1 suits a 2-core machine: one uses both).
    `bundle`: a folder, or `models:/<name>@<alias>` in the registry at `tracking_uri`. `open_predictions=False`:
    the predict endpoints need the API key too. `review_for`: the attributes whose review flag queues a photo."""
    def load(folder: Path) -> Predictor:
        predictor = load_predictor(bundle=folder, runtime=runtime, top_k=top_k, taxonomy=True)
        # At start and at each reload, before the swap: a model without one of them would queue nothing for it, silently
        if unknown := sorted(set(review_for or []) - set(predictor.attributes)):
            raise SettingRefused(f"review_for names {unknown}; the model tags {predictor.attributes}")
        predictor.model   # Grad-CAM's network, built now (and on a reload, before the swap), not on the first ?explain
        return predictor

    slot = ModelSlot(bundle, load, tracking_uri, model_cache)
    monitor = Monitor(slot.current.predictor.trained.vocabularies, drift_window)
    limiter = anyio.CapacityLimiter(model_threads)
    app = FastAPI(title="fashion tagger", version=package_version(),
                  description="Catalogue attributes of a product photo: " + ", ".join(slot.current.predictor.attributes))
    app.state.model_slot = slot   # what /v1/admin/reload swaps; an embedding application may swap it too
    app.state.review = review     # read per request: fashion-serve opens the queue once the model has loaded

    install_error_handlers(app)
    upload_errors = error_responses(400, 413, 415, 422, 500)
    key_errors = error_responses(401, 403, 422)

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable) -> Response:
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:   # answered as 500 internal_error by the outermost handler: counted here first
            count(request, 500, "internal_error", started)
            raise
        count(request, response.status_code, response.headers.get("x-error-code"), started)
        return response

    def count(request: Request, status: int, code: str | None, started: float) -> None:
        route = getattr(request.scope.get("route"), "path", "unmatched")
        monitor.requests.labels(route, str(status)).inc()
        monitor.latency.labels(route).observe(time.perf_counter() - started)
        if code:
            monitor.errors.labels(code).inc()

    def require_key(x_api_key: Annotated[str | None, Header(description="the server's api_key")] = None) -> None:
        if not api_key:
            raise UploadRejected(403, "admin_disabled", "this server has no api_key configured, so its review, "
                                 "feedback and admin endpoints are off (set FASHION_API_KEY or api_key=)")
        if not x_api_key or not secrets.compare_digest(x_api_key.encode(), api_key.encode()):
            raise UploadRejected(401, "unauthorized", "missing or wrong X-API-Key header")

    predict_guard = [] if open_predictions else [Depends(require_key)]

    def queue_store() -> ReviewStore:
        if app.state.review is None:
            raise UploadRejected(404, "review_disabled", "this server keeps no review queue (review_queue=false)")
        return app.state.review

    def explain_list(explain: str | None, loaded: Loaded) -> list[str]:
        try:
            return explained_attributes(explain, loaded.predictor.attributes)
        except ValueError as err:
            raise UploadRejected(400, "unknown_attribute", str(err)) from None

    def run_model(loaded: Loaded, images: list[DecodedImage], names: list[str | None],
                  explain: list[str]) -> tuple[list[dict[str, Any]], list[Callable[[], Any]]]:
        """The answers, and the review-queue writes they call for (run after the model's thread is released)."""
        predictor, review = loaded.predictor, app.state.review
        results, to_queue = [], []
        for image, name, prediction in zip(images, names, predictor.predict([i.pixels for i in images])):
            result: dict[str, Any] = {"filename": name, "predictions": {a: p.to_dict() for a, p in prediction.items()},
                                      "model_version": loaded.version}
            monitor.observe(result["predictions"])
            doubted = any(p.status != "accepted" for a, p in prediction.items() if review_for is None or a in review_for)
            if review is not None and doubted and image.data:
                to_queue.append(partial(review.enqueue, image.data, image.format or "bin", result["predictions"],
                                        loaded.version or str(loaded.bundle), name))
            if explain:
                maps = grad_cam(predictor, image.pixels, explain, size=image.size)
                result["explanations"] = {a: {"heatmap_png": heatmap_png(m), "width": m.shape[1], "height": m.shape[0]}
                                          for a, m in maps.items()}
            results.append(result)
        return results, to_queue

    async def predict_images(loaded: Loaded, images: list[DecodedImage], names: list[str | None],
                             explain: list[str]) -> list[dict]:
        results, to_queue = await anyio.to_thread.run_sync(run_model, loaded, images, names, explain, limiter=limiter)
        if to_queue:   # a database and a file write: on a thread of their own, not holding one of the model's
            for outcome in await anyio.to_thread.run_sync(lambda: [queue_for_review(enqueue) for enqueue in to_queue]):
                if outcome != "queued":
                    monitor.not_queued.labels(outcome).inc()
        return results

    def queue_for_review(enqueue: Callable[[], int | None]) -> str:
        """queued, queue_full, or error: a queue that fails (a full disk, a database gone) costs the review of
        that photo, logged and counted, never the answer the model already gave."""
        try:
            return "queued" if enqueue() is not None else "queue_full"
        except Exception:   # the side channel, whatever broke in it; the traceback goes to the log
            log.exception("could not queue a photo for review; its prediction is answered")
            return "error"

    def decode(data: bytes, filename: str | None, loaded: Loaded) -> DecodedImage:
        """An upload's pixels, decoded as the training of the model that will answer decoded its photos."""
        return decode_upload(data, limits, filename, loaded.predictor.trained.preprocessing.decode_side)

    async def read_upload(upload: UploadFile, loaded: Loaded) -> DecodedImage:
        data = await upload.read(limits.max_bytes + 1)
        try:
            return decode(data, upload.filename, loaded)
        except UploadRejected as err:
            err.filename = upload.filename
            raise

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/review", include_in_schema=False)
    async def review_page() -> FileResponse:
        return FileResponse(STATIC / "review.html", media_type="text/html")

    @app.get("/health")
    async def health() -> dict:
        loaded = slot.current
        return {"status": "ok", "model_loaded": True, "version": package_version(), "backbone": loaded.manifest.get("backbone"),
                "attributes": loaded.predictor.attributes, "runtime": loaded.predictor.runtime,
                "bundle_created": loaded.manifest.get("created"), "model_source": slot.source,
                "model_version": loaded.version, "source_run_id": loaded.run_id,
                "review_queue": app.state.review is not None}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(monitor.exposition(), media_type=monitor.content_type)

    @app.get("/v1/labels")
    async def labels() -> dict:
        return {"attributes": {a: v.classes for a, v in slot.current.predictor.trained.vocabularies.items()}}

    @app.get("/v1/review/next", responses=key_errors, dependencies=[Depends(require_key)])
    async def review_next() -> dict:
        """The oldest photo waiting for a person, with the model's tags; `item` is null when the queue is empty."""
        store = queue_store()
        item, waiting = await anyio.to_thread.run_sync(lambda: (store.next_item(), store.queued()))
        return {"item": item, "queued": waiting}

    @app.get("/v1/review/images/{sha256}", responses=key_errors, dependencies=[Depends(require_key)])
    async def review_image(sha256: str) -> FileResponse:
        try:
            return FileResponse(queue_store().image_path(sha256))
        except UnknownImage:
            raise UploadRejected(404, "unknown_image", f"no queued photo has sha256 {sha256}") from None

    @app.post("/v1/feedback", responses=key_errors, dependencies=[Depends(require_key)])
    async def feedback(body: FeedbackRequest) -> dict:
        """A person's labels for a queued photo; it leaves the queue, and fashion-data export-feedback exports it."""
        attributes = slot.current.predictor.attributes
        # Spaces around a label (" Jeans" typed or pasted) made a class of their own: "not a class, did you mean
        # Jeans?", then a new class once confirmed.
        labels = {attribute: label.strip() for attribute, label in body.labels.items()}
        unknown = sorted(set(labels) - set(attributes))
        blank = sorted(a for a, label in labels.items() if not label)
        if unknown or blank:
            raise UploadRejected(400, "bad_labels", f"labels name attributes the model does not tag {unknown} or are blank "
                                 f"{blank}; attributes are {attributes}")
        if odd := unprintable(labels):
            raise UploadRejected(400, "bad_labels", odd)
        trained = slot.current.predictor.trained
        if not body.new_labels:
            new = new_label_message(labels, trained.vocabularies)
            if new:
                raise UploadRejected(400, "new_label", new)
        elif trained.taxonomy and (unplaced := unplaced_in_taxonomy(labels, trained)):
            raise UploadRejected(400, "bad_labels", unplaced)
        store = queue_store()
        try:
            correction = await anyio.to_thread.run_sync(store.record, body.image_sha256, labels, body.reviewer)
        except UnknownImage:
            raise UploadRejected(404, "unknown_image", f"no queued photo has sha256 {body.image_sha256}") from None
        return {"correction_id": correction, "queued": await anyio.to_thread.run_sync(store.queued)}

    @app.post("/v1/admin/reload", responses={**key_errors, **error_responses(502)}, dependencies=[Depends(require_key)])
    async def reload() -> dict:
        """Loads what the model source names now (a registry alias moved by fashion-promote, a re-exported
        folder) beside the served model, then swaps it in; no request fails or waits for the load."""
        before = slot.current.version
        try:
            loaded, changed = await anyio.to_thread.run_sync(slot.reload)
        except (ValueError, OSError, MlflowException) as err:   # BundleError is a ValueError; the old model stays
            log.error("reload failed, still serving %s: %s", before or slot.source, err)
            raise UploadRejected(502, "reload_failed", f"{err}; still serving {before or slot.source}") from None
        monitor.reference(loaded.predictor.trained.vocabularies)
        return {"changed": changed, "previous_version": before, "model_version": loaded.version,
                "source_run_id": loaded.run_id}

    @app.post("/v1/predict", responses=upload_errors, dependencies=predict_guard)
    async def predict(file: Annotated[UploadFile, File(description="a product photo")],
                      explain: Annotated[str | None, Query(description="true, or attributes to explain")] = None) -> dict:
        loaded = slot.current   # the one model this request sees, from decoding to answer, whatever a reload does meanwhile
        attributes = explain_list(explain, loaded)
        image = await read_upload(file, loaded)
        return (await predict_images(loaded, [image], [file.filename], attributes))[0]

    @app.post("/v1/predict/batch", responses=upload_errors, dependencies=predict_guard)
    async def predict_batch(files: Annotated[list[UploadFile], File(description="product photos")],
                            explain: Annotated[str | None, Query()] = None) -> dict:
        loaded = slot.current
        attributes = explain_list(explain, loaded)
        if len(files) > limits.max_files:
            raise UploadRejected(413, "too_many_files", f"{len(files)} files in one batch; the limit is {limits.max_files}")
        images = [await read_upload(f, loaded) for f in files]
        return {"results": await predict_images(loaded, images, [f.filename for f in files], attributes)}

    @app.post("/v1/predict/base64", responses=upload_errors, dependencies=predict_guard)
    async def predict_base64(body: Base64Request, explain: Annotated[str | None, Query()] = None) -> dict:
        loaded = slot.current
        attributes = explain_list(explain, loaded)
        if len(body.image) > limits.max_bytes * 3 // 2 + 256:   # 4/3 for base64, its line breaks, a data URL's prefix
            raise UploadRejected(413, "file_too_large", f"the encoded image exceeds the {limits.max_bytes}-byte limit")
        try:
            data = base64_bytes(body.image)
        except (binascii.Error, ValueError):
            raise UploadRejected(400, "bad_base64", "the 'image' field is not valid base64 (the standard alphabet, A-Z a-z "
                                 "0-9 + /; line breaks and a data:image/...;base64, prefix are fine)") from None
        image = decode(data, body.filename, loaded)
        return (await predict_images(loaded, [image], [body.filename], attributes))[0]

    return app
