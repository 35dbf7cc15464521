"""The REST API and upload page around one model bundle.

    GET  /                  upload page (drag and drop, previews, a card per image, Grad-CAM toggle)
    GET  /health            model loaded?, version, bundle provenance
    GET  /v1/labels         the classes of every attribute
    POST /v1/predict        multipart `file`
    POST /v1/predict/batch  multipart `files` (up to `max_files`)
    POST /v1/predict/base64 JSON {"image": "<base64>", "filename": "..."}
    GET  /docs              OpenAPI docs

`?explain=articleType,baseColour` (or `explain=true` for every attribute) adds Grad-CAM heatmaps.
Every error, FastAPI's own included, is `{"error": {"code", "message", "filename"?}}` (serving/errors.py).
The model runs in a worker thread behind a limiter, so `/health` answers while requests queue.
"""

from __future__ import annotations

import base64
import binascii
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, File, Query, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from fashion.inference.bundle import read_manifest
from fashion.inference.explain import grad_cam, heatmap_png
from fashion.inference.runtime import load_predictor
from fashion.serving.errors import error_responses, install_error_handlers
from fashion.serving.uploads import DecodedImage, UploadLimits, UploadRejected, decode_upload

STATIC = Path(__file__).parent / "static"


def package_version() -> str:
    try:
        return version("fashion")
    except PackageNotFoundError:
        return "unknown"


class Base64Request(BaseModel):
    image: str = Field(description="the image file's bytes, base64-encoded")
    filename: str | None = None


def create_app(bundle: str | Path, limits: UploadLimits = UploadLimits(), model_threads: int = 1, top_k: int = 3,
               runtime: str = "auto") -> FastAPI:
    """`model_threads`: predictions that may run at once (1 suits a 2-core machine: one uses both)."""
    predictor = load_predictor(bundle=bundle, runtime=runtime, top_k=top_k, taxonomy=True)
    trained = predictor.trained
    manifest = read_manifest(bundle)
    limiter = anyio.CapacityLimiter(model_threads)
    app = FastAPI(title="fashion tagger", version=package_version(),
                  description="Catalogue attributes of a product photo: " + ", ".join(predictor.attributes))

    install_error_handlers(app)
    upload_errors = error_responses(400, 413, 415, 422, 500)

    def explain_list(explain: str | None) -> list[str]:
        if not explain or explain.lower() in ("false", "0", "no"):
            return []
        if explain.lower() in ("true", "1", "yes", "all"):
            return list(predictor.attributes)
        wanted = [a.strip() for a in explain.split(",") if a.strip()]
        unknown = [a for a in wanted if a not in predictor.attributes]
        if unknown:
            raise UploadRejected(400, "unknown_attribute", f"explain names {unknown}; attributes are {predictor.attributes}")
        return wanted

    def run_model(images: list[DecodedImage], explain: list[str]) -> list[dict[str, Any]]:
        predictions = predictor.predict([i.pixels for i in images])
        results = []
        for image, prediction in zip(images, predictions):
            result: dict[str, Any] = {"predictions": {a: p.to_dict() for a, p in prediction.items()}}
            if explain:
                maps = grad_cam(predictor, image.pixels, explain, size=image.size)
                result["explanations"] = {a: {"heatmap_png": heatmap_png(m), "width": m.shape[1], "height": m.shape[0]}
                                          for a, m in maps.items()}
            results.append(result)
        return results

    async def predict_images(images: list[DecodedImage], names: list[str | None], explain: list[str]) -> list[dict]:
        results = await anyio.to_thread.run_sync(run_model, images, explain, limiter=limiter)
        return [{"filename": name, **result} for name, result in zip(names, results)]

    async def read_upload(upload: UploadFile) -> DecodedImage:
        data = await upload.read(limits.max_bytes + 1)
        try:
            return decode_upload(data, limits, upload.filename)
        except UploadRejected as err:
            err.filename = upload.filename
            raise

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model_loaded": True, "version": package_version(), "backbone": manifest.get("backbone"),
                "attributes": predictor.attributes, "runtime": predictor.runtime,
                "bundle_created": manifest.get("created"),
                "source_run_id": manifest.get("source", {}).get("mlflow_run_id")}

    @app.get("/v1/labels")
    async def labels() -> dict:
        return {"attributes": {a: v.classes for a, v in trained.vocabularies.items()}}

    @app.post("/v1/predict", responses=upload_errors)
    async def predict(file: Annotated[UploadFile, File(description="a product photo")],
                      explain: Annotated[str | None, Query(description="true, or attributes to explain")] = None) -> dict:
        attributes = explain_list(explain)
        image = await read_upload(file)
        return (await predict_images([image], [file.filename], attributes))[0]

    @app.post("/v1/predict/batch", responses=upload_errors)
    async def predict_batch(files: Annotated[list[UploadFile], File(description="product photos")],
                            explain: Annotated[str | None, Query()] = None) -> dict:
        attributes = explain_list(explain)
        if len(files) > limits.max_files:
            raise UploadRejected(413, "too_many_files", f"{len(files)} files in one batch; the limit is {limits.max_files}")
        images = [await read_upload(f) for f in files]
        return {"results": await predict_images(images, [f.filename for f in files], attributes)}

    @app.post("/v1/predict/base64", responses=upload_errors)
    async def predict_base64(body: Base64Request, explain: Annotated[str | None, Query()] = None) -> dict:
        attributes = explain_list(explain)
        if len(body.image) > limits.max_bytes * 4 // 3 + 4:
            raise UploadRejected(413, "file_too_large", f"the encoded image exceeds the {limits.max_bytes}-byte limit")
        try:
            data = base64.b64decode(body.image, validate=True)
        except (binascii.Error, ValueError):
            raise UploadRejected(400, "bad_base64", "the 'image' field is not valid base64") from None
        image = decode_upload(data, limits, body.filename)
        return (await predict_images([image], [body.filename], attributes))[0]

    return app
