"""One error shape for every failure the API can return: `{"error": {"code", "message", "filename"?}}`.

Clients branch on `code`, which is stable; `message` is for people. FastAPI's own failures (a
malformed request body, an unknown path, a wrong method) are translated into the same shape, and
the OpenAPI schema documents it for every status an endpoint can return.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from fashion.serving.uploads import UploadRejected

log = logging.getLogger(__name__)

# code -> (HTTP status, when). Add codes; never rename one: clients match on them.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "empty_file": (400, "the upload has no bytes"),
    "corrupt_image": (400, "the upload is an image format we read, but it cannot be decoded"),
    "bad_base64": (400, "the base64 request's `image` is not valid base64"),
    "unknown_attribute": (400, "`explain` names an attribute the model does not predict"),
    "bad_request": (400, "the request body cannot be parsed (e.g. malformed multipart)"),
    "bad_labels": (400, "feedback names an attribute the model does not tag, or a blank label"),
    "new_label": (400, "feedback gives a label the model has no class for, without `new_labels: true` (a likely typo)"),
    "unauthorized": (401, "a review, feedback or admin call without the right `X-API-Key`"),
    "admin_disabled": (403, "a review, feedback or admin call to a server with no `api_key` configured"),
    "not_found": (404, "no such path"),
    "review_disabled": (404, "a review or feedback call to a server that keeps no review queue"),
    "unknown_image": (404, "a review or feedback call naming a photo the queue never held"),
    "method_not_allowed": (405, "the path exists, the HTTP method does not"),
    "file_too_large": (413, "the upload is over `max_bytes`"),
    "too_many_pixels": (413, "width x height over `max_pixels` (read from the header), or a decompression bomb"),
    "too_many_files": (413, "a batch request with more than `max_files` files"),
    "not_an_image": (415, "the bytes are not an image"),
    "unsupported_format": (415, "an image format the API does not decode"),
    "invalid_request": (422, "the request does not match the endpoint's schema (missing field, wrong type)"),
    "internal_error": (500, "a bug: the server logged it; the request may be retried"),
    "reload_failed": (502, "an admin reload could not load what the model source names now (a broken or tampered "
                           "bundle, an unreachable registry); the served model is unchanged"),
}


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable reason: " + ", ".join(ERROR_CODES))
    message: str = Field(description="what was wrong, for people")
    filename: str | None = Field(None, description="the upload it concerns, when there is one")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses=` for these statuses, each listing its codes."""
    return {status: {"model": ErrorResponse, "description": "; ".join(
        f"`{code}`: {when}" for code, (s, when) in ERROR_CODES.items() if s == status)} for status in statuses}


def error_json(status: int, code: str, message: str, filename: str | None = None) -> JSONResponse:
    detail = {"code": code, "message": message, **({"filename": filename} if filename else {})}
    # The header lets the metrics middleware count errors by code without parsing bodies.
    return JSONResponse(status_code=status, content={"error": detail}, headers={"X-Error-Code": code})


def routing_message(request: Request, exc: HTTPException) -> str:
    """Starlette's bare "Not Found" / "Method Not Allowed" for a request no route takes, said with the way out:
    the versioned path (`POST /predict` -> /v1/predict), the list at /docs, or the methods the path allows."""
    path, allowed = request.url.path[:200], (exc.headers or {}).get("Allow")   # a path echoed back, not a whole request
    if exc.status_code == 404 and exc.detail == "Not Found":
        versioned = f"/v1{path}"
        known = versioned in {getattr(route, "path", None) for route in request.app.routes}
        return f"no such path: {path}" + (f"; did you mean {versioned}?" if known else "; the routes are listed at /docs")
    if exc.status_code == 405 and allowed:
        return f"{request.method} is not allowed on {path}; it takes {allowed}"
    return str(exc.detail)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadRejected)
    async def rejected(request: Request, exc: UploadRejected) -> JSONResponse:
        return error_json(exc.status, exc.code, exc.message, getattr(exc, "filename", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return error_json(422, "invalid_request", problems or "the request does not match the schema")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return error_json(exc.status_code, code, routing_message(request, exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_json(500, "internal_error", f"{type(exc).__name__} on {request.url.path}; the server logged it")
