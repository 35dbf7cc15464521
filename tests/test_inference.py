"""Bundle round trip, ONNX parity, pyfunc, fashion-predict, fashion-eval and Grad-CAM."""

import base64
import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from fashion.data.images import load_rgb
from fashion.inference import Predictor, load_bundle, load_checkpoint
from fashion.inference.bundle import BUNDLE_FILES, read_manifest
from fashion.inference.explain import grad_cam
from fashion.inference.onnx_runtime import OnnxPredictor
from fashion.inference.runtime import load_predictor
from tests.conftest import SAMPLE, mlflow_store, server_process

REAL_IMAGES = sorted((SAMPLE / "images").glob("*.jpg"))[:8]


def probabilities(predictor: Predictor, images: list[np.ndarray]) -> dict[str, torch.Tensor]:
    return predictor.probabilities(predictor.to_tensor(images))


def test_bundle_round_trip_reproduces_the_checkpoint_without_pickle(trained, monkeypatch):
    for name in (*BUNDLE_FILES, "model.onnx", "taxonomy.json", "decision.json"):
        assert (trained.bundle / name).is_file(), name
    manifest = read_manifest(trained.bundle)
    assert manifest["source"]["mlflow_run_id"] == trained.run_id
    assert len(manifest["dataset_fingerprint"]) == 64
    assert manifest["trained_on"]["version.torch"] == torch.__version__ and manifest["trained_on"]["hardware"]
    assert "test/mean_acc" in manifest["metrics"] and manifest["attributes"][0] == "gender"

    images = [load_rgb(p) for p in REAL_IMAGES]
    from_checkpoint = load_checkpoint(trained.checkpoint)
    expected = probabilities(Predictor(from_checkpoint), images)

    def no_pickle(*args, **kwargs):
        raise AssertionError("a bundle must load without torch.load")
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load_bundle(trained.bundle)
    got = probabilities(Predictor(loaded), images)
    for attribute in expected:
        assert torch.allclose(got[attribute], expected[attribute], atol=1e-6)
    assert loaded.taxonomy.attributes == ["articleType", "subCategory", "masterCategory"]
    assert ("Tshirts", "Topwear", "Apparel") in loaded.taxonomy.combinations
    assert loaded.model.temperatures() == from_checkpoint.model.temperatures() != {a: 1.0 for a in expected}
    assert loaded.decision == from_checkpoint.decision


def test_incomplete_bundle_names_the_missing_file(trained, tmp_path):
    import shutil

    broken = tmp_path / "bundle"
    shutil.copytree(trained.bundle, broken)
    (broken / "vocabularies.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocabularies.json"):
        load_bundle(broken)


def test_an_onnx_scoring_job_neither_builds_the_pytorch_network_nor_imports_its_libraries(trained):
    """Start-up is paid by every fashion-predict job and every Spark worker: Lightning and timm took ~10 s of it."""
    # what fashion-predict imports before and once it has read its command line
    script = ("import sys; import fashion.predict, fashion.inference.batch, fashion.inference.explain; "
              "from fashion.inference.runtime import load_predictor; "
              f"p = load_predictor(bundle={str(trained.bundle)!r}); "
              "assert p.runtime == 'onnx' and 'model' not in vars(p.trained), 'the PyTorch network was built'; "
              "print(sorted({'lightning', 'timm', 'torchmetrics', 'mlflow'} & {m.split('.')[0] for m in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    with_torch = load_predictor(bundle=trained.bundle, runtime="torch")   # the PyTorch runtime still builds it at load
    assert "model" in vars(with_torch.trained)


def test_a_bundle_load_reads_its_manifest_once(trained, monkeypatch):
    """Every file of one load is checked against one manifest: a folder swapped between two reads
    cannot pair one version's ONNX graph with another's vocabularies."""
    from fashion.inference import bundle as bundle_module

    reads = []
    real = bundle_module.read_manifest
    monkeypatch.setattr(bundle_module, "read_manifest", lambda path: reads.append(path) or real(path))
    for runtime in ("onnx", "torch", "auto"):
        reads.clear()
        load_predictor(bundle=trained.bundle, runtime=runtime)
        assert len(reads) == 1, (runtime, reads)


def test_onnx_matches_eager_pytorch_on_real_images(trained):
    images = [load_rgb(p) for p in REAL_IMAGES]
    trained_model = load_bundle(trained.bundle)
    eager = probabilities(Predictor(trained_model), images)
    onnx = probabilities(OnnxPredictor(trained_model, trained.bundle), images)
    worst = max(float((eager[a] - onnx[a]).abs().max()) for a in eager)
    assert worst <= 1e-4, worst


def test_eval_refuses_a_bad_split_file_or_output_folder_before_scoring(trained, tmp_path, capsys, monkeypatch):
    from fashion import evaluate as evaluate_module
    from fashion.inference import evaluation

    monkeypatch.setattr(evaluation, "evaluate", lambda *a: pytest.fail("scored despite bad input"))
    files = {"columns.csv": "foo,bar\n1,2\n", "names.csv": "id,split\n1,holdout\n", "ids.csv": "id,split\n1.5,train\n"}
    expected = {"columns.csv": "a split file needs columns id,split", "names.csv": "unknown split name(s) ['holdout']",
                "ids.csv": "ids must be whole numbers (the styles.csv ids), got [1.5]"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        assert evaluate_module.main([f"bundle={trained.bundle}", f"root={trained.data}", f"exclude_split={tmp_path / name}",
                                     f"output={tmp_path / 'out'}", "mlflow=false"]) == 2
        assert f"fashion-eval: cannot read exclude_split: {tmp_path / name}: {expected[name]}" in capsys.readouterr().err
    (tmp_path / "taken").write_text("a file where the reports' folder should go")
    assert evaluate_module.main([f"bundle={trained.bundle}", f"root={trained.data}", f"output={tmp_path / 'taken'}",
                                 "mlflow=false"]) == 2
    assert f"fashion-eval: cannot write to {tmp_path / 'taken'}" in capsys.readouterr().err


def test_a_predictor_built_from_code_refuses_counts_the_clis_refuse(trained):
    loaded = load_bundle(trained.bundle)
    for bad in ({"top_k": 0}, {"batch_size": 0}, {"top_k": -1}):
        with pytest.raises(ValueError, match="top_k and batch_size must be at least 1"):
            Predictor(loaded, **bad)


@contextlib.contextmanager
def listening():
    """A web server on a free local port that records the paths asked of it: (its URL, those paths)."""
    import http.server
    import threading

    asked: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(REAL_IMAGES[0].read_bytes())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()


def test_pyfunc_model_loads_and_predicts_like_the_predictor(trained, tmp_path):
    from fashion.inference.pyfunc import log_pyfunc

    mlflow_store(tmp_path, "pyfunc-test")
    uri = log_pyfunc(trained.bundle)
    model = mlflow.pyfunc.load_model(uri)
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in REAL_IMAGES[:3]] + ["bm90IGFuIGltYWdl"]
    encoded[1] = f"data:image/jpeg;base64,{encoded[1]}"   # a browser's data URL, as the API takes it
    out = model.predict(pd.DataFrame({"image": encoded}))
    expected = Predictor(load_bundle(trained.bundle)).predict([load_rgb(p) for p in REAL_IMAGES[:3]])
    assert out["articleType"].tolist()[:3] == [e["articleType"].label for e in expected]
    assert out["error"].isna().tolist()[:3] == [True] * 3 and "not a decodable" in out["error"].iloc[3]
    by_path = model.predict(pd.DataFrame({"path": [str(REAL_IMAGES[0]), None, ""]}))   # the other input column
    assert by_path["articleType"].iloc[0] == expected[0]["articleType"].label
    assert by_path["error"].tolist()[1:] == ["the row has no image: neither an 'image' (base64) nor a 'path'"] * 2
    # a served pyfunc takes paths from its clients: it reads storage URIs, and requests no web address a client names
    with listening() as (url, requests):
        hostile = model.predict(pd.DataFrame({"path": [f"{url}/photo.jpg", f"{REAL_IMAGES[0].as_uri()}::{url}/photo.jpg"]}))
    assert requests == [] and hostile["error"].str.contains("only storage is read").all()
    # What the MLflow UI and `mlflow models serve` show: a signature with both inputs, and an example.
    info = mlflow.models.get_model_info(uri)
    assert {c.name for c in info.signature.inputs.inputs} == {"image", "path"}
    assert {"articleType", "articleType_confidence", "articleType_status", "error"} <= {c.name for c in info.signature.outputs.inputs}
    assert out["articleType_status"].tolist()[:3] == [e["articleType"].status for e in expected]
    local = mlflow.artifacts.download_artifacts(uri)
    # the environment MLflow builds for it (mlflow models serve, build-docker) installs the project's dependencies at
    # the exporting versions: inferred, it asked for fashion==0.1.0 (on no index) and pyspark, and lacked onnxruntime
    from importlib import metadata
    requirements = (Path(local) / "requirements.txt").read_text().split()
    assert {f"onnxruntime=={metadata.version('onnxruntime')}", f"pillow=={metadata.version('pillow')}",
            f"torch=={metadata.version('torch').split('+')[0]}", "albumentations==2.0.8"} <= set(requirements), requirements
    assert not [r for r in requirements if r.startswith(("fashion==", "pyspark", "pytest"))], requirements
    example = mlflow.models.Model.load(uri).load_input_example(local)
    assert model.predict(example)["articleType"].iloc[0] in load_bundle(trained.bundle).vocabularies["articleType"].classes
    # built from code (MLflow's recommended form), not unpickled: no pickle in what a registry holds
    assert info.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert not list(Path(local).rglob("*.pkl"))


def test_the_pyfunc_decodes_a_model_batch_at_a_time(trained):
    """Spark hands each worker 10,000 rows (Arrow's batch): the pyfunc decoded them all before the first prediction,
    holding every decoded photo in memory in each of an executor's workers."""
    from fashion.inference.pyfunc import FashionTaggerPyfunc
    from fashion.inference.runtime import load_predictor

    paths = [str(p) for p in REAL_IMAGES[:5]] + ["missing.jpg"] + [str(p) for p in REAL_IMAGES[5:8]]
    whole = FashionTaggerPyfunc()
    whole.predictor = load_predictor(bundle=trained.bundle)
    expected = whole.predict(None, pd.DataFrame({"path": paths}))
    model = FashionTaggerPyfunc()
    model.predictor = load_predictor(bundle=trained.bundle, batch_size=2)
    decoded, held = [0], []
    load, predict = model.predictor.load, model.predictor.predict

    def counted_load(path):
        image = load(path)
        decoded[0] += 1
        held.append(decoded[0])
        return image

    def counted_predict(images):
        decoded[0] -= len(images)
        return predict(images)

    model.predictor.load, model.predictor.predict = counted_load, counted_predict
    got = model.predict(None, pd.DataFrame({"path": paths}))
    assert max(held) <= 2, held   # was 8: every photo of the frame that decodes
    pd.testing.assert_frame_equal(got, expected)
    assert got["error"].notna().tolist() == [False] * 5 + [True] + [False] * 3


def test_predict_cli_skips_unreadable_files_and_reports_them(trained, tmp_path, capsys, monkeypatch):
    import fashion.predict
    from fashion.predict import main

    monkeypatch.setattr(fashion.predict, "PROGRESS_FROM", 1)   # the bar of a catalogue-sized job, on these 5 photos

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in REAL_IMAGES[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "predictions.jsonl"
    code = main([str(folder), str(REAL_IMAGES[4].parent / REAL_IMAGES[4].name), "--bundle", str(trained.bundle),
                 "--output", str(out), "--top-k", "2", "--taxonomy"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 1 and len(rows) == 5
    broken = [r for r in rows if r["path"].endswith("broken.jpg")]
    assert len(broken) == 1 and "cannot decode" in broken[0]["error"]
    good = [r for r in rows if "error" not in r]
    assert len(good) == 4 and len(good[0]["predictions"]["articleType"]["top_k"]) == 2
    lines = re.split(r"[\r\n]", capsys.readouterr().err)   # a skipped file on a line of its own, not after the bar's
    assert any(line.startswith(f"fashion-predict: skipped {folder / 'broken.jpg'}: cannot decode") for line in lines), lines

    csv_out = tmp_path / "p.csv"
    assert main([str(p) for p in REAL_IMAGES[:2]] + ["--checkpoint", str(trained.checkpoint), "--format", "csv",
                                                     "--output", str(csv_out)]) == 0
    table = pd.read_csv(csv_out)
    assert len(table) == 2 and {"articleType", "articleType_confidence", "articleType_status", "articleType_top_k"} <= set(table.columns)
    assert set(table["articleType_status"]) <= {"accepted", "needs_review"}
    assert main(["no/such/*.jpg", "--bundle", str(trained.bundle)]) == 2

    explained = tmp_path / "explained.jsonl"
    assert main([str(REAL_IMAGES[0]), "--bundle", str(trained.bundle), "--explain", "articleType,baseColour",
                 "--explain-dir", str(tmp_path / "cam"), "--output", str(explained)]) == 0
    row = json.loads(explained.read_text())
    from PIL import Image

    for attribute in ("articleType", "baseColour"):
        assert Image.open(row["explanations"][attribute]).size == Image.open(REAL_IMAGES[0]).size
    for every, explained in (("true", 7), ("all", 7), ("false", 0)):   # as the API's ?explain=true (Hydra: a boolean)
        assert main([str(REAL_IMAGES[0]), f"bundle={trained.bundle}", f"explain={every}", f"explain_dir={tmp_path / 'cam'}",
                     f"output={tmp_path / every}.jsonl"]) == 0
        assert len(json.loads((tmp_path / f"{every}.jsonl").read_text()).get("explanations", {})) == explained, every
    twins = [tmp_path / folder / "front.jpg" for folder in ("a", "b")]   # two products' photos with one file name
    for twin, image in zip(twins, REAL_IMAGES[:2]):
        twin.parent.mkdir()
        twin.write_bytes(image.read_bytes())
    assert main([*map(str, twins), f"bundle={trained.bundle}", "explain='articleType, '", f"explain_dir={tmp_path / 'cam2'}",
                 f"output={tmp_path / 'twins.jsonl'}"]) == 0
    overlays = [json.loads(line)["explanations"]["articleType"] for line in (tmp_path / "twins.jsonl").read_text().splitlines()]
    assert len(set(overlays)) == 2 and all(Path(o).name.startswith("front-") for o in overlays)   # neither written over
    assert [Image.open(o).size for o in overlays] == [Image.open(i).size for i in REAL_IMAGES[:2]]
    # a table names each row's overlays too (they were only in JSON lines); an unreadable file's row names none
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    for format, output in (("csv", tmp_path / "twins.csv"), ("parquet", tmp_path / "twins_parquet")):
        assert main([*map(str, twins), str(broken), f"bundle={trained.bundle}", "explain=articleType",
                     f"explain_dir={tmp_path / 'cam2'}", f"format={format}", f"output={output}"]) == 1
        table = pd.read_csv(output) if format == "csv" else pd.read_parquet(output)
        assert table["articleType_explanation"].tolist()[:2] == overlays and pd.isna(table["articleType_explanation"][2])
        assert "baseColour_explanation" not in table and table["error"].notna().tolist() == [False, False, True]
    # its columns are part of the job: resuming it with other overlays (or none) would mix two tables' columns
    for explain in (["explain=baseColour"], []):
        assert main([str(broken), f"bundle={trained.bundle}", *explain, f"explain_dir={tmp_path / 'cam2'}",
                     "format=csv", f"output={tmp_path / 'twins.csv'}", "resume=true"]) == 2


def test_served_taxonomy_is_always_a_combination_the_training_data_has(trained):
    loaded = load_bundle(trained.bundle)
    images = [load_rgb(p) for p in REAL_IMAGES]
    for prediction in Predictor(loaded).predict(images):   # on by default
        assert loaded.taxonomy.is_consistent({a: prediction[a].label for a in loaded.taxonomy.attributes})
    independent = Predictor(loaded, taxonomy=False).predict(images)
    assert all(p.source == "model" for row in independent for p in row.values())


def test_eval_cli_counts_unseen_labels_and_logs_a_linked_run(trained, tmp_path, capsys):
    from fashion.evaluate import main

    data = tmp_path / "eval_data"
    (data / "images").mkdir(parents=True)
    styles = pd.read_csv(trained.data / "styles.csv").head(12)
    styles.loc[0, "articleType"] = "Kimono"  # never seen in training
    styles.to_csv(data / "styles.csv", index=False)
    for pid in styles["id"]:
        (data / "images" / f"{pid}.jpg").write_bytes((trained.data / "images" / f"{pid}.jpg").read_bytes())
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["--bundle", str(trained.bundle), "--data", str(data), "--output", str(tmp_path / "out"),
                 "--tracking-uri", uri]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["unseen/articleType"] == 1 and metrics["images"] == 12
    assert 0.0 <= metrics["eval/articleType/acc"] <= 1.0
    assert (tmp_path / "out" / "confusion_articleType.png").stat().st_size > 1000
    pairs = pd.read_csv(tmp_path / "out" / "confusions_articleType.csv")
    report = pd.read_csv(tmp_path / "out" / "report_articleType.csv", index_col="class")
    assert pairs["count"].sum() == round(report.loc["accuracy", "support"] * (1 - report.loc["accuracy", "f1"]))
    printed = capsys.readouterr().out
    assert "articleType" in printed and "macro-F1" in printed and "coverage" in printed
    assert len(pairs)   # a tiny model on 12 photos: mix-ups to show; the summary names the most frequent one
    assert f"  articleType: {pairs['true'][0]} -> {pairs['predicted'][0]}: {pairs['count'][0]}" in printed
    assert metrics["taxonomy/inconsistent"] == 0 and "taxonomy/inconsistent_independent" in metrics
    assert 0.0 <= metrics["eval/articleType/acc_taxonomy"] <= 1.0 and 0.0 <= metrics["eval/articleType/ece"] <= 1.0
    assert 0.0 <= metrics["eval/articleType/coverage"] <= 1.0
    assert (tmp_path / "out" / "reliability_articleType.png").stat().st_size > 1000
    assert (tmp_path / "out" / "coverage_articleType.png").stat().st_size > 1000
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["fashion"]).iloc[0]
    assert run["tags.run_type"] == "evaluation" and run["tags.source_run_id"] == trained.run_id
    assert run["tags.version.onnxruntime"] and run["tags.version.torch"]   # what its numbers depend on, as a training run says
    assert run["params.runtime"] == "onnx"   # auto: the bundle has a model.onnx

    assert main(["--bundle", str(trained.bundle), "--data", str(data), "--output", str(tmp_path / "torch_out"),
                 "--runtime", "torch", "--no-mlflow"]) == 0
    eager = json.loads((tmp_path / "torch_out" / "metrics.json").read_text())
    for attribute in ("gender", "articleType", "baseColour"):
        assert eager[f"eval/{attribute}/acc"] == pytest.approx(metrics[f"eval/{attribute}/acc"], abs=1e-6)


def test_runtime_choice_follows_what_the_model_file_can_do(trained):
    from fashion.inference.runtime import load_predictor

    assert load_predictor(bundle=trained.bundle).runtime == "onnx"
    assert load_predictor(bundle=trained.bundle, runtime="torch").runtime == "torch"
    assert load_predictor(checkpoint=trained.checkpoint).runtime == "torch"   # a checkpoint has no ONNX graph
    with pytest.raises(ValueError, match="fashion-export"):
        load_predictor(checkpoint=trained.checkpoint, runtime="onnx")
    with pytest.raises(ValueError, match="runtime"):
        load_predictor(bundle=trained.bundle, runtime="tensorrt")
    with pytest.raises(ValueError, match="exactly one"):
        load_predictor(bundle=trained.bundle, checkpoint=trained.checkpoint)


def test_grad_cam_heatmap_has_the_image_shape_and_varies(trained):
    # The bundle's 32px input leaves test_tiny a 1x1 feature map; the same weights at 160px give 5x5.
    from dataclasses import replace

    from fashion.models.architecture import build_model

    loaded = load_bundle(trained.bundle)
    config = {**loaded.run_config, "backbone": {**loaded.run_config["backbone"], "image_size": 160}}
    model = build_model(config, {a: len(v) for a, v in loaded.vocabularies.items()})
    model.load_state_dict(loaded.model.state_dict())
    predictor = Predictor(replace(loaded, build=lambda: model, preprocessing=model.backbone.preprocessing))
    image = load_rgb(REAL_IMAGES[0])
    wide = np.full((60, 100, 3), 255, dtype=np.uint8)
    wide[10:50, 20:60] = (200, 20, 20)
    for picture in (image, wide):
        maps = grad_cam(predictor, picture, ["articleType", "baseColour"])
        for heatmap in maps.values():
            assert heatmap.shape == picture.shape[:2]
            assert heatmap.max() <= 1.0 and heatmap.min() >= 0.0 and heatmap.std() > 0.01
    with pytest.raises(ValueError, match="cannot explain"):
        grad_cam(predictor, image, ["sleeveLength"])


def test_export_cli_from_a_checkpoint_logs_a_pyfunc_model(trained, tmp_path):
    from fashion.export import export

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    bundle, model_uri = export(None, str(trained.checkpoint), tmp_path / "b", uri, onnx=False)
    assert (bundle / "model.safetensors").is_file() and not (bundle / "model.onnx").exists()
    assert model_uri and model_uri.startswith(("runs:/", "models:/"))
    with pytest.raises(ValueError, match="exactly one"):
        export(None, None, tmp_path / "c", uri)
    assert Path(read_manifest(bundle)["source"]["checkpoint"]) == trained.checkpoint


def test_export_prints_no_progress_bar_into_a_log(trained, tmp_path, capfd, monkeypatch):
    """Logging the pyfunc downloads the model again (MLflow checks the input example): its bar wrote ~100 updates
    into a CI job's log. Kept for a terminal only; stderr here is a pipe."""
    from fashion.export import export_cli

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")   # set, then removed: restored unset afterwards
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    export_cli(str(tmp_path / "b"), checkpoint=str(trained.checkpoint), onnx=False, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    printed = capfd.readouterr()
    assert "pyfunc model: " in printed.out and "Downloading artifacts" not in printed.err


def test_export_writes_over_nothing_unasked_and_replaces_a_bundle_whole(trained, tmp_path, capsys):
    """fashion-export wrote file by file into any folder: over a served bundle (a reload could read half of
    it), or over a user's own config.json. Now a folder with a bundle needs overwrite=true, which swaps in
    a complete new folder (a file the new bundle lacks does not linger), and any other folder is refused."""
    from fashion.export import export_cli

    bundle = tmp_path / "bundle"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"   # not opened, so not created (the listing below): mlflow=false
    export_cli(str(bundle), checkpoint=str(trained.checkpoint), onnx=True, mlflow=False, tracking_uri=store)
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(SystemExit) as exit_:
        export_cli(str(bundle), checkpoint=str(trained.checkpoint), onnx=False, mlflow=False)
    assert exit_.value.code == 2
    assert f"fashion-export: {bundle} already holds a bundle: overwrite=true replaces it" in capsys.readouterr().err
    assert (bundle / "manifest.json").read_bytes() == before and (bundle / "model.onnx").is_file()
    export_cli(str(bundle), checkpoint=str(trained.checkpoint), onnx=False, mlflow=False, overwrite=True)
    assert not (bundle / "model.onnx").exists() and read_manifest(bundle)["onnx_opset"] is None
    assert load_bundle(bundle).attributes == load_bundle(trained.bundle).attributes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]            # no staging folder left behind
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("my own")
    with pytest.raises(SystemExit):
        export_cli(str(mine), checkpoint=str(trained.checkpoint), onnx=False, mlflow=False, overwrite=True)
    assert "exists and is not a bundle" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["config.json"] and (mine / "config.json").read_text() == "my own"


def test_a_checkpoint_whose_weights_are_nan_is_not_exported(trained, tmp_path, capsys):
    """A diverged run's checkpoint made a bundle that tagged every photo with confidence NaN (written as
    `NaN`, which no JSON reader takes). Refused before anything is written, naming the tensors."""
    from fashion.export import export_cli

    checkpoint = torch.load(trained.checkpoint, map_location="cpu", weights_only=True)
    name = next(k for k in checkpoint["state_dict"] if k.endswith("weight") and "heads" in k)
    checkpoint["state_dict"][name][0] = float("nan")
    diverged = tmp_path / "diverged.ckpt"
    torch.save(checkpoint, diverged)
    with pytest.raises(SystemExit) as exit_:
        export_cli(str(tmp_path / "bundle"), checkpoint=str(diverged), onnx=False, mlflow=False)
    assert exit_.value.code == 2
    assert (f"the model's weights hold NaN or infinity (1 tensor(s): {name.removeprefix('model.')}): its training diverged"
            in capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diverged.ckpt"]


@pytest.mark.slow
def test_mlflow_models_serve_answers_the_logged_input_example(trained, tmp_path):
    """`mlflow models serve` on the exported pyfunc, asked with the serving example MLflow saved beside it."""
    import os
    import sys

    import httpx

    from fashion.inference.pyfunc import log_pyfunc

    mlflow_store(tmp_path, "serve-test")
    uri = log_pyfunc(trained.bundle)
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model")))
    request = (local / "serving_input_example.json").read_text()
    # MLflow starts `uvicorn` by name: the environment's bin folder must be on PATH, as in an activated venv.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with server_process(["mlflow", "models", "serve", "-m", str(local), "--env-manager", "local"], "/ping", env=env) as host:
        answer = httpx.post(f"{host}/invocations", content=request, headers={"Content-Type": "application/json"},
                            timeout=60).json()
    (row,) = answer["predictions"]
    assert row["articleType"] in load_bundle(trained.bundle).vocabularies["articleType"].classes
    assert 0.0 <= row["articleType_confidence"] <= 1.0


@pytest.mark.parametrize("mean, std", [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_batch_normalisation_is_bit_for_bit_the_training_eval_transform(mean, std):
    """Inference normalises a whole batch through lookup tables (fashion/data/transforms.py); it must give
    exactly what albumentations' eval transform gives image by image: thumbnails that get padded, squares,
    wide and tall photos, ImageNet and [-1, 1] statistics."""
    from fashion.data.transforms import Preprocessing

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((80, 60), (224, 224), (300, 225), (90, 400), (1, 1))]
    prep = Preprocessing(224, mean, std)
    geometry, full = prep.geometry(), prep.eval_transform()
    expected = torch.stack([full(image=image)["image"] for image in images])
    got = prep.normalise([geometry(image=image)["image"] for image in images])
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="padded 224x224x3 uint8"):
        prep.normalise([images[0]])


def test_a_folder_is_scored_with_the_label_mapping_its_training_used(trained, tmp_path):
    """colour_families trains on families of the raw colours (Navy Blue is Blue): fashion-eval and the promotion gate
    counted each raw colour that is no family's own name as unseen (186 of the sample's 1,000) and scored the rest. The
    mapping now travels in the bundle (labels.json) and the checkpoint, and a scored folder is mapped with it."""
    import dataclasses
    from types import SimpleNamespace

    from fashion.data.vocab import IGNORE_INDEX, LabelSpec
    from fashion.inference.bundle import export_bundle
    from fashion.inference.evaluation import encode_targets

    plain = load_bundle(trained.bundle)
    assert plain.label_mapping is None and not (trained.bundle / "labels.json").exists()   # nothing mapped, nothing written
    classes = plain.vocabularies["baseColour"].classes
    mapping = LabelSpec(attributes=plain.attributes, mappings={"baseColour": {"Shade": classes[0], classes[1]: classes[1]}})
    bundle = export_bundle(dataclasses.replace(plain, label_mapping=mapping), tmp_path / "mapped", onnx=False)
    mapped = load_bundle(bundle)
    assert mapped.label_mapping.mappings == mapping.mappings
    frame = pd.DataFrame({"baseColour": ["Shade", classes[1], "Unknown", None]})
    targets, unseen = encode_targets(SimpleNamespace(trained=mapped), frame)
    assert targets["baseColour"].tolist() == [0, 1, IGNORE_INDEX, IGNORE_INDEX] and unseen["baseColour"] == 1
    assert encode_targets(SimpleNamespace(trained=plain), frame)[1]["baseColour"] == 2   # without it: Shade unseen too
    checkpoint = torch.load(trained.checkpoint, weights_only=True)   # a checkpoint carries it in its run config
    checkpoint["hyper_parameters"]["run_config"]["labels"]["mappings"] = mapping.mappings
    torch.save(checkpoint, tmp_path / "mapped.ckpt")
    assert load_checkpoint(tmp_path / "mapped.ckpt").label_mapping.mappings == mapping.mappings
