"""Every endpoint of the REST API, every bad-input case, and a slow request not stalling /health."""

import base64
import io
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fashion.serving.app import create_app
from fashion.serving.uploads import UploadLimits
from tests.conftest import SAMPLE

JPEG = sorted((SAMPLE / "images").glob("*.jpg"))[0]


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 120, dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(trained):
    limits = UploadLimits(max_bytes=200_000, max_pixels=1_000_000, max_files=3)
    with TestClient(create_app(trained.bundle, limits)) as test_client:
        yield test_client


def test_health_labels_docs_and_page(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model_loaded"] and health["version"]
    assert health["backbone"] == "test_efficientnet"
    labels = client.get("/v1/labels").json()["attributes"]
    assert "Tshirts" in labels["articleType"] and set(labels) == set(health["attributes"])
    assert client.get("/docs").status_code == 200
    assert "/v1/predict/batch" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "drop" in page.text.lower()


def test_onnx_and_torch_runtimes_serve_the_same_answer(trained, client):
    assert client.get("/health").json()["runtime"] == "onnx"   # auto: the bundle has a model.onnx
    with TestClient(create_app(trained.bundle, runtime="torch")) as torch_client:
        assert torch_client.get("/health").json()["runtime"] == "torch"
        eager = torch_client.post("/v1/predict", files={"file": ("a.jpg", JPEG.read_bytes(), "image/jpeg")}).json()
    onnx = client.post("/v1/predict", files={"file": ("a.jpg", JPEG.read_bytes(), "image/jpeg")}).json()
    for attribute, prediction in eager["predictions"].items():
        assert onnx["predictions"][attribute]["label"] == prediction["label"]
        assert onnx["predictions"][attribute]["confidence"] == pytest.approx(prediction["confidence"], abs=1e-4)
    with pytest.raises(ValueError, match="runtime"):
        create_app(trained.bundle, runtime="tensorrt")


def test_predict_multipart_returns_label_confidence_and_top_k(client):
    response = client.post("/v1/predict", files={"file": (JPEG.name, JPEG.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["filename"] == JPEG.name
    article = body["predictions"]["articleType"]
    assert article["label"] in client.get("/v1/labels").json()["attributes"]["articleType"]
    assert 0.0 < article["confidence"] <= 1.0 and len(article["top_k"]) == 3
    assert "explanations" not in body


def test_batch_and_base64_agree_with_single_predict(client):
    single = client.post("/v1/predict", files={"file": ("a.jpg", JPEG.read_bytes(), "image/jpeg")}).json()
    batch = client.post("/v1/predict/batch", files=[("files", ("a.jpg", JPEG.read_bytes(), "image/jpeg")),
                                                    ("files", ("b.png", image_bytes(), "image/png"))]).json()
    assert [r["filename"] for r in batch["results"]] == ["a.jpg", "b.png"]
    assert batch["results"][0]["predictions"] == single["predictions"]
    encoded = base64.b64encode(JPEG.read_bytes()).decode()
    from_b64 = client.post("/v1/predict/base64", json={"image": encoded, "filename": "a.jpg"}).json()
    assert from_b64["predictions"] == single["predictions"]
    # as clients send it: a browser's data URL, the `base64` tool's 76-character lines (were 400 bad_base64)
    lines = [encoded[i:i + 76] for i in range(0, len(encoded), 76)]
    for sent in (f"data:image/jpeg;base64,{encoded}", "\n".join(lines) + "\n", "\r\n".join(lines)):
        answer = client.post("/v1/predict/base64", json={"image": sent})
        assert answer.status_code == 200 and answer.json()["predictions"] == single["predictions"], answer.text
    for sent in (base64.urlsafe_b64encode(JPEG.read_bytes()).decode(), f"data:image/jpeg,{encoded}", f"{encoded[:8]}!{encoded[8:]}"):
        assert client.post("/v1/predict/base64", json={"image": sent}).json()["error"]["code"] == "bad_base64"
    from fashion.data.images import base64_bytes   # the pyfunc's decoder too, whose DataFrame may hold bytes
    assert base64_bytes(encoded.encode()) == base64_bytes(f"data:image/jpeg;base64,{encoded}") == JPEG.read_bytes()


def test_explain_returns_a_heatmap_per_requested_attribute(client):
    response = client.post("/v1/predict?explain=articleType,baseColour",
                           files={"file": ("a.jpg", JPEG.read_bytes(), "image/jpeg")})
    explanations = response.json()["explanations"]
    width, height = Image.open(JPEG).size
    assert set(explanations) == {"articleType", "baseColour"}
    heatmap = Image.open(io.BytesIO(base64.b64decode(explanations["articleType"]["heatmap_png"])))
    assert heatmap.size == (width, height)
    every = client.post("/v1/predict?explain=true", files={"file": ("a.jpg", JPEG.read_bytes(), "image/jpeg")}).json()
    assert set(every["explanations"]) == set(every["predictions"])
    bad = client.post("/v1/predict?explain=sleeve", files={"file": ("a.jpg", JPEG.read_bytes(), "image/jpeg")})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_attribute"


@pytest.mark.parametrize("payload,status,code", [
    (b"", 400, "empty_file"),
    (b"name,colour\nshirt,red\n", 415, "not_an_image"),
    (image_bytes("PPM"), 415, "unsupported_format"),
    (b"\x00" * 200_001, 413, "file_too_large"),
    (image_bytes("PNG", (1200, 1000)), 413, "too_many_pixels"),
    (JPEG.read_bytes()[: len(JPEG.read_bytes()) // 2], 400, "corrupt_image"),
])
def test_bad_uploads_get_a_json_error_with_the_right_status(client, payload, status, code):
    response = client.post("/v1/predict", files={"file": ("upload.bin", payload, "application/octet-stream")})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["filename"] == "upload.bin"


def test_batch_and_base64_limits(client):
    files = [("files", (f"{i}.png", image_bytes(), "image/png")) for i in range(4)]
    response = client.post("/v1/predict/batch", files=files)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_many_files"
    bad_one = client.post("/v1/predict/batch", files=[("files", ("ok.png", image_bytes(), "image/png")),
                                                      ("files", ("bad.txt", b"hello", "text/plain"))])
    assert bad_one.status_code == 415 and bad_one.json()["error"]["filename"] == "bad.txt"
    assert client.post("/v1/predict/base64", json={"image": "***"}).json()["error"]["code"] == "bad_base64"
    assert client.post("/v1/predict/base64", json={"image": ""}).status_code == 400
    assert client.post("/v1/predict/base64", json={"nothing": 1}).status_code == 422
    huge = base64.b64encode(b"\x00" * 300_000).decode()
    assert client.post("/v1/predict/base64", json={"image": huge}).status_code == 413


def test_a_slow_prediction_does_not_stall_health(trained, monkeypatch):
    import uvicorn

    from fashion.inference.predictor import Predictor

    original = Predictor.predict

    def slow_predict(self, images):
        time.sleep(2.0)
        return original(self, images)
    monkeypatch.setattr(Predictor, "predict", slow_predict)
    server = uvicorn.Server(uvicorn.Config(create_app(trained.bundle), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    import httpx

    base = f"http://127.0.0.1:{port}"
    slow = threading.Thread(target=lambda: httpx.post(f"{base}/v1/predict", files={"file": ("a.jpg", JPEG.read_bytes())}, timeout=30))
    slow.start()
    time.sleep(0.3)  # the prediction is now sleeping in the worker thread
    started = time.perf_counter()
    assert httpx.get(f"{base}/health", timeout=5).status_code == 200
    assert time.perf_counter() - started < 1.0
    slow.join()
    server.should_exit = True
    thread.join(timeout=5)


def test_every_error_has_the_documented_shape_and_a_stable_code(client):
    from fashion.serving.errors import ERROR_CODES

    cases = [
        (client.post("/v1/predict/base64", json={"nothing": 1}), 422, "invalid_request", "image"),
        (client.post("/v1/predict/base64", content=b"{not json", headers={"content-type": "application/json"}), 422,
         "invalid_request", "JSON"),
        (client.post("/v1/predict"), 422, "invalid_request", "file"),
        (client.post("/v1/predict", files={"wrong_field": ("a.jpg", JPEG.read_bytes(), "image/jpeg")}), 422,
         "invalid_request", "file"),
        (client.get("/v1/nothing-here"), 404, "not_found", "no such path: /v1/nothing-here; the routes are listed at /docs"),
        (client.post("/predict"), 404, "not_found", "did you mean /v1/predict?"),   # the unversioned path
        (client.get("/v1/predict"), 405, "method_not_allowed", "GET is not allowed on /v1/predict; it takes POST"),
    ]
    for response, status, code, mentions in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code and ERROR_CODES[code][0] == status
        assert mentions in error["message"], error


def test_the_openapi_schema_documents_the_errors(client):
    schema = client.get("/openapi.json").json()
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert error["properties"]["error"]["$ref"].endswith("/ErrorDetail")
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/predict/base64"):
        responses = schema["paths"][path]["post"]["responses"]
        for status in ("400", "413", "415", "422"):
            assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse"), (path, status)
        assert "corrupt_image" in responses["400"]["description"] and "too_many_pixels" in responses["413"]["description"]


def test_reloading_an_unchanged_folder_loads_nothing_and_a_new_export_swaps_in(trained, tmp_path):
    import json
    import shutil

    from fashion.inference.runtime import load_predictor
    from fashion.serving.model_slot import ModelSlot

    bundle = tmp_path / "bundle"
    shutil.copytree(trained.bundle, bundle)
    loads = []

    def load(path):
        loads.append(path)
        return load_predictor(bundle=path)
    slot = ModelSlot(bundle, load)
    first = slot.current
    assert slot.reload() == (first, False) and len(loads) == 1      # same manifest: the served model stays
    manifest = json.loads((bundle / "manifest.json").read_text())   # what a fresh export of the same run changes
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "created": "2030-01-01T00:00:00+00:00"}))
    loaded, changed = slot.reload()
    assert changed and loaded is not first and slot.current is loaded and len(loads) == 2


def test_a_reload_that_cannot_load_says_why_and_the_served_model_stays(trained, tmp_path):
    import json
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(trained.bundle, bundle)
    photo = {"file": ("a.jpg", (SAMPLE / "images").glob("*.jpg").__next__().read_bytes(), "image/jpeg")}
    with TestClient(create_app(bundle, api_key="k", review=None)) as client:
        before = client.post("/v1/predict", files=photo).json()["predictions"]
        manifest = json.loads((bundle / "manifest.json").read_text())   # a re-export whose weights were cut short
        (bundle / "manifest.json").write_text(json.dumps({**manifest, "created": "2030-01-01T00:00:00+00:00"}))
        with (bundle / "model.safetensors").open("r+b") as weights:
            weights.truncate(1000)
        response = client.post("/v1/admin/reload", headers={"X-API-Key": "k"})
        assert response.status_code == 502 and response.json()["error"]["code"] == "reload_failed"
        assert "model.safetensors: sha256" in response.json()["error"]["message"]
        assert client.post("/v1/predict", files=photo).json()["predictions"] == before   # still the first model


def test_a_reload_to_a_model_that_does_not_tag_a_review_for_attribute_is_refused_and_the_served_model_stays(
        trained, tmp_path, monkeypatch):
    """`review_for` was checked against the model the server started with only: a reload to one that no longer tags
    season went through, and from then on no photo was queued for season, without a word."""
    import json
    import shutil

    import fashion.serving.app as serving

    bundle = tmp_path / "bundle"
    shutil.copytree(trained.bundle, bundle)
    loads = []

    def load_predictor(**kwargs):   # the re-export's model tags every attribute but season
        predictor = real(**kwargs)
        loads.append(predictor)
        if len(loads) > 1:
            predictor.model   # built whole, then its season head unnamed: a model that does not tag season
            del predictor.trained.vocabularies["season"]
        return predictor

    real = serving.load_predictor
    monkeypatch.setattr(serving, "load_predictor", load_predictor)
    with TestClient(create_app(bundle, api_key="k", review=None, review_for=["articleType", "season"])) as client:
        manifest = json.loads((bundle / "manifest.json").read_text())
        (bundle / "manifest.json").write_text(json.dumps({**manifest, "created": "2030-01-01T00:00:00+00:00"}))
        response = client.post("/v1/admin/reload", headers={"X-API-Key": "k"})
        assert response.status_code == 502 and len(loads) == 2, response.text
        assert "review_for names ['season']" in response.json()["error"]["message"]
        assert "season" in client.app.state.model_slot.current.predictor.attributes   # still the first model


@pytest.mark.parametrize("route", ["/v1/predict", "/v1/predict/batch", "/v1/predict/base64"])
def test_a_request_is_answered_by_the_model_it_was_decoded_for_when_a_reload_lands_midway(trained, monkeypatch, route):
    """model_slot.py promises that a request reads the slot once: a reload landing between decoding an
    upload (at the model's decode_side) and running the model must not hand the pixels to another model."""
    import dataclasses

    import fashion.serving.app as serving

    app = create_app(trained.bundle)
    slot = app.state.model_slot
    before = slot.current = dataclasses.replace(slot.current, version="fashion/1")
    decoded_for = []

    def decode_then_reload(data, limits, filename, decode_side):
        decoded_for.append(decode_side)
        image = decode_upload(data, limits, filename, decode_side)
        slot.current = dataclasses.replace(before, version="fashion/2")   # the reload swaps the model in
        return image

    decode_upload = serving.decode_upload
    monkeypatch.setattr(serving, "decode_upload", decode_then_reload)
    payload = JPEG.read_bytes()
    with TestClient(app) as client:
        if route == "/v1/predict/base64":
            response = client.post(route, json={"image": base64.b64encode(payload).decode(), "filename": JPEG.name})
        else:
            field = "files" if route.endswith("batch") else "file"
            response = client.post(route, files={field: (JPEG.name, payload, "image/jpeg")})
        assert response.status_code == 200, response.text
        body = response.json()
        answer = body["results"][0] if route.endswith("batch") else body
        assert decoded_for == [before.predictor.trained.preprocessing.decode_side]
        assert answer["model_version"] == "fashion/1"                       # the model the upload was decoded for
        assert client.get("/health").json()["model_version"] == "fashion/2"  # the next request gets the new one


def test_a_registry_slot_keeps_the_served_version_and_the_one_before_it_in_its_cache(tmp_path, monkeypatch):
    """Every reload after a retraining downloads a version; the slot removes what it can no longer need."""
    from types import SimpleNamespace

    import fashion.serving.model_slot as model_slot
    from fashion.tracking.registry import RegisteredBundle

    cache, live = tmp_path / "cache", {"version": "1"}

    def fetch(reference, tracking_uri, into):   # what fetch_bundle does: one folder per downloaded version
        folder = into / "tagger" / live["version"] / "bundle"
        folder.mkdir(parents=True, exist_ok=True)
        return RegisteredBundle("tagger", live["version"], folder, None)

    monkeypatch.setattr(model_slot, "fetch_bundle", fetch)
    scratch = cache / "tagger" / "tmp-download"   # another process's download in progress: never touched
    scratch.mkdir(parents=True)
    slot = model_slot.ModelSlot("models:/tagger@champion", lambda path: SimpleNamespace(trained=SimpleNamespace(
        manifest={"path": str(path)})), tracking_uri="sqlite:///unused.db", cache=cache)
    versions = lambda: sorted(p.name for p in (cache / "tagger").iterdir())   # noqa: E731
    for served, kept in [("2", ["1", "2"]), ("3", ["2", "3"]), ("2", ["2", "3"]), ("4", ["2", "4"])]:
        live["version"] = served
        loaded, changed = slot.reload()
        assert changed and loaded.version == f"tagger/{served}"
        assert versions() == [*kept, "tmp-download"], served
