"""Calibrated confidence, abstention and a consistent taxonomy: the fits, their edge cases, what a
training run records, and that every runtime returns the same calibrated answer."""

import base64
import json
import shutil

import httpx
import mlflow
import pandas as pd
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from fashion.calibration import Decision, calibrate, choose_threshold, fit_temperature, reliability
from fashion.data.images import load_rgb
from fashion.data.taxonomy import Taxonomy, decode_levels
from fashion.data.vocab import IGNORE_INDEX
from fashion.inference import Predictor, load_bundle, load_checkpoint
from fashion.inference.bundle import BundleError, sha256
from fashion.inference.onnx_runtime import OnnxPredictor
from tests.conftest import SAMPLE, mlflow_store, tiny_overrides

REAL_IMAGES = sorted((SAMPLE / "images").glob("*.jpg"))[:6]


def sampled(temperature: float, n: int = 20_000, classes: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(logits / temperature): the NLL-optimal T is `temperature`."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, classes, generator=generator)
    targets = torch.multinomial(torch.softmax(logits / temperature, dim=1), 1, generator=generator).squeeze(1)
    return logits, targets


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_temperature_scaling_recovers_the_temperature_and_lowers_ece(true_t):
    logits, targets = sampled(true_t)
    fit = fit_temperature(logits, targets)
    assert fit.temperature == pytest.approx(true_t, rel=0.05) and fit.nll_after < fit.nll_before
    conf_before, predicted = torch.softmax(logits, 1).max(1)
    conf_after = torch.softmax(logits / fit.temperature, 1).max(1).values
    correct = predicted == targets
    assert reliability(conf_after, correct)["ece"] < 0.02 < reliability(conf_before, correct)["ece"]


def test_our_ece_is_torchmetrics_top_label_ece():
    logits, targets = sampled(2.0, n=3000)
    confidence, predicted = torch.softmax(logits, 1).max(1)
    reference = MulticlassCalibrationError(num_classes=6, n_bins=15, norm="l1")(torch.softmax(logits, 1), targets)
    assert reliability(confidence, predicted == targets)["ece"] == pytest.approx(float(reference), abs=1e-6)


def test_threshold_is_the_largest_coverage_at_the_target_precision():
    confidence = torch.tensor([0.99, 0.95, 0.90, 0.80, 0.70])
    correct = torch.tensor([True, True, True, False, True])
    assert choose_threshold(confidence, correct, 0.98) == pytest.approx(0.90)   # top 3: precision 1.0; top 4: 0.75
    assert choose_threshold(confidence, correct, 0.80) == pytest.approx(0.70)   # all 5: 0.8
    assert choose_threshold(confidence, torch.zeros(5, dtype=torch.bool), 0.5) is None   # nothing is ever right
    # equal confidences share one decision: no cut between the two 0.9s
    assert choose_threshold(torch.tensor([0.9, 0.9, 0.8]), torch.tensor([True, False, True]), 0.6) == pytest.approx(0.8)
    assert choose_threshold(torch.tensor([0.9, 0.9, 0.8]), torch.tensor([True, False, False]), 0.6) is None


def test_edge_cases_fall_back_to_temperature_one_and_no_threshold():
    n = 40
    logits = {"gender": torch.randn(n, 3), "masterCategory": torch.randn(n, 1), "season": torch.randn(n, 4),
              "usage": torch.randn(n, 5)}
    targets = {"gender": torch.randint(0, 3, (n,)), "masterCategory": torch.zeros(n, dtype=torch.long),
               "season": torch.full((n,), IGNORE_INDEX), "usage": torch.randint(0, 2, (n,))}   # classes 2-4 absent
    decision, report = calibrate(logits, targets, {a: 0.98 for a in logits})
    assert decision.temperatures["masterCategory"] == 1.0 and decision.thresholds["masterCategory"] is None
    assert "single class" in decision.notes["masterCategory"]
    assert decision.temperatures["season"] == 1.0 and decision.thresholds["season"] is None
    assert "no labelled" in decision.notes["season"]
    assert 0.05 <= decision.temperatures["usage"] <= 20.0          # a class absent from validation is no problem
    assert all(value == value and abs(value) != float("inf") for value in report.values())   # no NaN, no inf
    assert not decision.accepts("season", torch.tensor([1.0, 0.5])).any()


def test_a_confidence_just_under_the_threshold_is_not_accepted():
    """Thresholds are doubles and confidences float32: float32(0.9) is 0.89999998, under a 0.9 threshold,
    though a float32 comparison would round the threshold to the same float and accept it."""
    decision = Decision({"gender": 0.9})
    assert decision.accepts("gender", torch.tensor([0.9, 0.9000001, 0.5])).tolist() == [False, True, False]


def test_a_temperature_that_raises_the_validation_ece_is_not_kept(monkeypatch):
    """NLL and ECE can disagree: a fit that sharpens an already calibrated head is refused, with its reason,
    and the attribute keeps T = 1 and its threshold."""
    import importlib

    from fashion.calibration.temperature import TemperatureFit

    module = importlib.import_module("fashion.calibration.calibrate")   # the package re-exports the function

    logits, targets = sampled(1.0, n=5000)   # calibrated as they are
    monkeypatch.setattr(module, "fit_temperature", lambda scores, target: TemperatureFit(0.3, 1.0, 0.9, len(target)))
    decision, report = calibrate({"usage": logits}, {"usage": targets}, {"usage": 0.9})
    assert decision.temperatures["usage"] == 1.0 and "raised its ECE" in decision.notes["usage"]
    assert decision.thresholds["usage"] is not None and report["calibration/usage/temperature"] == 1.0
    sharper, _ = sampled(2.0, n=5000)       # over-confident: a fit that flattens it is kept
    monkeypatch.setattr(module, "fit_temperature", lambda scores, target: TemperatureFit(2.0, 1.0, 0.9, len(target)))
    targets2 = sampled(2.0, n=5000)[1]
    assert calibrate({"usage": sharper}, {"usage": targets2}, {"usage": 0.9})[0].temperatures["usage"] == 2.0


def test_taxonomy_decodes_the_most_probable_seen_combination():
    taxonomy = Taxonomy(["articleType", "subCategory", "masterCategory"],
                        [("Tshirts", "Topwear", "Apparel"), ("Watches", "Watches", "Accessories")])
    classes = {"articleType": ["Tshirts", "Watches"], "subCategory": ["Topwear", "Watches"],
               "masterCategory": ["Accessories", "Apparel"]}
    probs = {"articleType": torch.tensor([[0.55, 0.45], [0.9, 0.1]]),      # row 0: heads disagree
             "subCategory": torch.tensor([[0.1, 0.9], [0.8, 0.2]]),
             "masterCategory": torch.tensor([[0.8, 0.2], [0.3, 0.7]])}
    chosen, served = taxonomy.decode(probs, classes)
    assert chosen["articleType"].tolist() == [1, 0]          # row 0: Watches/Watches/Accessories wins jointly
    assert chosen["subCategory"].tolist() == [1, 0] and chosen["masterCategory"].tolist() == [0, 1]
    # each level's served probabilities: its marginal over the seen combinations, p(a) p(s) p(m) normalised
    watches = 0.45 * 0.9 * 0.8 / (0.45 * 0.9 * 0.8 + 0.55 * 0.1 * 0.2)
    for level in classes:
        assert torch.allclose(served[level].sum(dim=1), torch.ones(2))
    assert served["articleType"][0].tolist() == pytest.approx([1 - watches, watches])
    assert served["masterCategory"][0].tolist() == pytest.approx([watches, 1 - watches])   # Accessories goes with Watches
    old = Taxonomy.from_dict({"Tshirts": {"subCategory": "Topwear", "masterCategory": "Apparel"}}, "old")
    assert old.is_consistent({"articleType": "Tshirts", "subCategory": "Topwear", "masterCategory": "Apparel"})


def test_thresholds_of_the_taxonomy_levels_are_chosen_on_what_is_served():
    """An unsure articleType head beside a sure subCategory head: decoded together, more of its tags are
    right with high confidence, so more pass at the same target precision; with the taxonomy off the
    head's own threshold applies."""
    generator = torch.Generator().manual_seed(0)
    n = 4000
    truth = torch.randint(0, 4, (n,), generator=generator)   # articleTypes 0, 1 are Topwear; 2, 3 Shoes
    article = torch.randn(n, 4, generator=generator)
    article[torch.arange(n), truth] += 1.2
    article[torch.arange(n), truth ^ 2] += 1.0               # the usual confusion crosses subCategories
    sub = torch.randn(n, 2, generator=generator)
    sub[torch.arange(n), truth // 2] += 4.0
    logits, targets = {"articleType": article, "subCategory": sub}, {"articleType": truth, "subCategory": truth // 2}
    taxonomy = Taxonomy(["articleType", "subCategory"], [("a0", "Topwear"), ("a1", "Topwear"), ("a2", "Shoes"), ("a3", "Shoes")])
    classes = {"articleType": ["a0", "a1", "a2", "a3"], "subCategory": ["Topwear", "Shoes"]}
    heads, head_report = calibrate(logits, targets, {"articleType": 0.95, "subCategory": 0.95})
    joint, joint_report = calibrate(logits, targets, {"articleType": 0.95, "subCategory": 0.95}, taxonomy, classes)
    assert not heads.taxonomy_confidence and joint.taxonomy_confidence
    coverage = "calibration/articleType/val_coverage"
    assert joint_report[coverage] > head_report[coverage] + 0.1
    assert joint_report["calibration/articleType/val_accepted_precision"] >= 0.95
    assert joint.head_thresholds["articleType"] == pytest.approx(heads.thresholds["articleType"])
    assert joint.threshold("articleType", joint=False) == pytest.approx(heads.thresholds["articleType"])
    assert joint.threshold("articleType") == joint.thresholds["articleType"] != joint.head_thresholds["articleType"]
    saved = Decision.from_dict(json.loads(json.dumps(joint.to_dict())), ["articleType", "subCategory"], "test")
    assert saved == joint


def test_a_decision_from_before_keeps_serving_the_heads_own_confidences(trained):
    bundle = load_bundle(trained.bundle)
    images = [load_rgb(p) for p in REAL_IMAGES]
    bundle.decision = Decision.from_dict({k: v for k, v in bundle.decision.to_dict().items()
                                          if k not in ("joint_scaling", "head_thresholds")}, bundle.attributes, "old")
    predictor = Predictor(bundle)
    probs = predictor.probabilities(predictor.to_tensor(images))
    for row, answer in enumerate(predictor.predict(images)):
        for attribute, prediction in answer.items():
            index = bundle.vocabularies[attribute].classes.index(prediction.label)
            assert prediction.confidence == pytest.approx(float(probs[attribute][row, index]), abs=1e-5)


@pytest.mark.parametrize("name, content, message", [
    ("decision.json", {"thresholds": {"gender": 1.5}}, "must lie in"),
    ("decision.json", {"thresholds": {"sleeve": 0.9}}, "does not predict"),
    ("decision.json", {"thresholds": {}, "_target_": "os.system"}, "Extra inputs"),
    ("decision.json", {"thresholds": {}, "joint_scaling": {"articleType": [-1.0, 0.0]}}, "a > 0"),
    ("decision.json", {"thresholds": {}, "joint_scaling": {"articleType": [1.0]}}, "at least 2"),
    ("decision.json", {"thresholds": {}, "joint_scaling": {"sleeve": [1.0, 0.0]}}, "does not predict"),
    ("taxonomy.json", {"attributes": ["articleType", "colour"], "combinations": []}, "must come from"),
    ("taxonomy.json", {"attributes": ["articleType", "subCategory"], "combinations": [["a"]]}, "needs 2 labels"),
])
def test_a_hostile_decision_or_taxonomy_file_is_refused_by_name(trained, tmp_path, name, content, message):
    bundle = tmp_path / "bundle"
    shutil.copytree(trained.bundle, bundle)
    (bundle / name).write_text(json.dumps(content))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][name] = sha256(bundle / name)   # a consistent forgery: only validation can stop it
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message) as err:
        load_bundle(bundle)
    assert name in str(err.value)


def test_a_bundle_without_calibration_loads_with_temperature_one_and_reviews_everything(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    bundle = tmp_path / "bundle"
    shutil.copytree(trained.bundle, bundle)
    state = load_file(bundle / "model.safetensors")
    del state["temperature"]
    save_file(state, bundle / "model.safetensors")
    (bundle / "decision.json").unlink()
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = sha256(bundle / "model.safetensors")
    del manifest["files"]["decision.json"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_bundle(bundle)
    assert set(loaded.model.temperatures().values()) == {1.0}
    assert set(load_bundle(bundle, build_now=False).temperatures().values()) == {1.0}   # read without building
    prediction = Predictor(loaded).predict([load_rgb(REAL_IMAGES[0])])[0]
    assert {p.status for p in prediction.values()} == {"needs_review"}


@pytest.mark.parametrize("bad", ["zero", "negative", "nan", "one_short"])
def test_a_bundle_whose_temperatures_would_serve_garbage_is_refused_by_name(trained, tmp_path, bad):
    """Temperatures divide the logits: a consistent forgery with a zero, negative or NaN one, or one too few, is
    refused whether the network is built (PyTorch) or only its temperatures are read (fashion-eval on onnxruntime)."""
    from safetensors.torch import load_file, save_file

    bundle = tmp_path / "bundle"
    shutil.copytree(trained.bundle, bundle)
    state = load_file(bundle / "model.safetensors")
    temperature = state["temperature"].clone()
    if bad == "one_short":
        temperature = temperature[:-1]
    else:
        temperature[1] = {"zero": 0.0, "negative": -1.5, "nan": float("nan")}[bad]
    state["temperature"] = temperature
    save_file(state, bundle / "model.safetensors")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = sha256(bundle / "model.safetensors")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    message = "must hold a positive number" if bad != "one_short" else "does not fit the architecture"
    with pytest.raises(BundleError, match=message) as built:
        load_bundle(bundle)
    with pytest.raises(BundleError, match="must hold a positive number") as read:
        load_bundle(bundle, build_now=False).temperatures()
    assert all(str(bundle / "model.safetensors") in str(err.value) for err in (built, read))
    if bad != "one_short":   # the same temperatures in a checkpoint from elsewhere
        checkpoint = torch.load(trained.checkpoint, map_location="cpu", weights_only=True)
        checkpoint["state_dict"]["model.temperature"] = temperature
        torch.save(checkpoint, tmp_path / "forged.ckpt")
        with pytest.raises(ValueError, match=f"{tmp_path / 'forged.ckpt'}: 'temperature' must hold a positive number"):
            load_checkpoint(tmp_path / "forged.ckpt")


def test_a_training_run_calibrates_logs_and_saves_its_decision(trained):
    checkpoint = torch.load(trained.checkpoint, map_location="cpu", weights_only=True)
    attributes = list(checkpoint["hyper_parameters"]["vocabularies"])
    decision = Decision.from_dict(checkpoint["decision"], attributes, "checkpoint")
    temperatures = checkpoint["state_dict"]["model.temperature"].tolist()
    assert temperatures == pytest.approx([decision.temperatures[a] for a in attributes]) and set(temperatures) != {1.0}
    assert set(decision.target_precision.values()) == {0.98}
    client = mlflow.MlflowClient(trained.tracking_uri)
    metrics = client.get_run(trained.run_id).data.metrics
    for attribute in attributes:
        assert metrics[f"calibration/{attribute}/temperature"] == pytest.approx(decision.temperatures[attribute])
        assert 0.0 <= metrics[f"test/{attribute}/ece"] <= 1.0 and 0.0 <= metrics[f"test/{attribute}/ece_uncalibrated"] <= 1.0
        assert 0.0 <= metrics[f"test/{attribute}/coverage"] <= 1.0
    logged = {a.path for a in client.list_artifacts(trained.run_id, "test")}
    assert {"test/reliability_articleType.png", "test/coverage_articleType.png"} <= logged
    assert "calibration/decision.json" in {a.path for a in client.list_artifacts(trained.run_id, "calibration")}


def test_every_runtime_returns_the_same_calibrated_probabilities(trained, tmp_path):
    """PyTorch (checkpoint and bundle), ONNX, the MLflow pyfunc and the API (which the web page shows)."""
    from fastapi.testclient import TestClient

    from fashion.inference.pyfunc import log_pyfunc
    from fashion.serving.app import create_app

    bundle = load_bundle(trained.bundle)
    images = [Predictor(bundle).load(p) for p in REAL_IMAGES]   # decoded as every runtime decodes a file
    reference = Predictor(load_checkpoint(trained.checkpoint)).predict(images)
    # the temperatures are applied: softmax(raw logits / T), not softmax(raw logits)
    with torch.inference_mode():
        batch = Predictor(bundle).to_tensor(images)
        raw = bundle.model.heads(torch.cat([bundle.model.backbone(batch), *bundle.model.extra_features(batch).values()], 1))
    calibrated = {a: torch.softmax(raw[a] / t, 1) for a, t in bundle.model.temperatures().items()}
    assert bundle.decision.taxonomy_confidence and bundle.taxonomy is not None
    # the taxonomy levels serve their decoded combination's confidence, of the calibrated heads, scaled
    chosen, decoded = decode_levels(calibrated, bundle.taxonomy, {a: v.classes for a, v in bundle.vocabularies.items()})
    for attribute, probs in calibrated.items():
        assert [bundle.vocabularies[attribute].classes[i] for i in chosen[attribute]] == [r[attribute].label for r in reference]
        head = probs.gather(1, chosen[attribute].view(-1, 1)).squeeze(1)
        expected = bundle.decision.confidence(attribute, head, decoded[attribute])
        assert (attribute in bundle.taxonomy.attributes) == (attribute in bundle.decision.joint_scaling)
        assert torch.allclose(expected, torch.tensor([r[attribute].confidence for r in reference]), atol=1e-5)

    answers = {"bundle": Predictor(bundle).predict(images),
               "onnx": OnnxPredictor(bundle, trained.bundle).predict(images)}
    mlflow_store(tmp_path, "parity")
    pyfunc = mlflow.pyfunc.load_model(log_pyfunc(trained.bundle)).predict(
        pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in REAL_IMAGES]}))
    client = TestClient(create_app(trained.bundle))
    api = [client.post("/v1/predict", files={"file": (p.name, p.read_bytes())}).json()["predictions"] for p in REAL_IMAGES]
    for row, expected in enumerate(reference):
        for attribute, p in expected.items():
            for runtime, answer in answers.items():
                assert answer[row][attribute].label == p.label, runtime
                assert abs(answer[row][attribute].confidence - p.confidence) <= 1e-4, runtime
                assert answer[row][attribute].status == p.status, runtime
            assert pyfunc[attribute].iloc[row] == p.label
            assert abs(pyfunc[f"{attribute}_confidence"].iloc[row] - p.confidence) <= 1e-4
            assert pyfunc[f"{attribute}_status"].iloc[row] == p.status
            assert api[row][attribute]["label"] == p.label and api[row][attribute]["status"] == p.status
            assert abs(api[row][attribute]["confidence"] - p.confidence) <= 1e-4
    mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("override", ["+callbacks.calibration.target_precision_per_attribute.sleeve=0.9",
                                      "callbacks.calibration.review_always=[season,sleeve]"])
def test_an_unknown_attribute_in_the_per_attribute_targets_is_named(tmp_path, kaggle_folder, compose_config, override):
    from fashion.train import train

    cfg = compose_config(tiny_overrides(tmp_path, kaggle_folder) + [override])
    with pytest.raises(ValueError, match=r"callbacks\.calibration\.\w+ names \['sleeve'\]"):   # before training, not after it
        train(cfg)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_an_attribute_to_review_always_gets_no_threshold_whatever_validation_says():
    """best_cpu never auto-accepts season: its validation precision does not carry to a new catalogue year."""
    logits, targets = sampled(1.0, n=5000)   # calibrated, confident enough to accept many on validation
    taxonomy = Taxonomy(["articleType", "subCategory"], [("a0", "s0"), ("a1", "s0"), ("a2", "s1"), ("a3", "s1"),
                                                         ("a4", "s1"), ("a5", "s1")])
    classes = {"articleType": [f"a{i}" for i in range(6)], "subCategory": ["s0", "s1"], "season": [str(i) for i in range(6)]}
    sub = torch.stack([logits[:, :2].sum(1), logits[:, 2:].sum(1)], dim=1)
    scores = {"season": logits, "articleType": logits, "subCategory": sub}
    labels = {"season": targets, "articleType": targets, "subCategory": (targets >= 2).long()}
    free, _ = calibrate(scores, labels, {a: 0.9 for a in scores}, taxonomy, classes)
    assert all(free.thresholds[a] is not None for a in scores)          # validation alone would accept some
    decision, report = calibrate(scores, labels, {a: 0.9 for a in scores}, taxonomy, classes, review_always=["season", "articleType"])
    for attribute in ("season", "articleType"):
        assert decision.thresholds[attribute] is None and "review_always" in decision.notes[attribute]
        assert report[f"calibration/{attribute}/val_coverage"] == 0.0
        assert not decision.accepts(attribute, torch.tensor([1.0]), joint=False).any()   # with the taxonomy off too
        assert not decision.accepts(attribute, torch.tensor([1.0]), joint=True).any()
    assert decision.thresholds["subCategory"] == free.thresholds["subCategory"]
    assert decision.temperatures == free.temperatures                   # calibration itself is unchanged
