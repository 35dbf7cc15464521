"""A bundle or checkpoint from elsewhere is data: it can neither run code nor touch files, and a changed
file is caught. Each hostile input below is what an attacker controls: they can rewrite the
manifest's hashes too, so the architecture checks must hold on a self-consistent bundle."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from fashion.inference import load_bundle, load_checkpoint
from fashion.inference.bundle import FORMAT, BundleError, read_manifest, sha256
from fashion.inference.runtime import load_predictor
from fashion.models.architecture import ArchitectureError, build_model, validate_architecture

VICTIM_TEXT = "precious data\n"


def copy_bundle(trained, tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(trained.bundle, bundle)
    return bundle


def rehash(bundle: Path) -> None:
    """What an attacker does after editing a file: make the manifest agree with it."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = {name: sha256(bundle / name) for name in manifest["files"]}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def edit_config(bundle: Path, edit) -> None:
    config = json.loads((bundle / "config.json").read_text())
    edit(config)
    (bundle / "config.json").write_text(json.dumps(config))
    rehash(bundle)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


@pytest.fixture
def no_instantiate(monkeypatch):
    """Loading must never reach Hydra's instantiate, whatever the file says."""
    import hydra.utils

    def refuse(*args, **kwargs):
        raise AssertionError("hydra.utils.instantiate called while loading a saved model")
    monkeypatch.setattr(hydra.utils, "instantiate", refuse)


def hostile_edits(victim: Path) -> dict[str, tuple[object, str]]:
    """name -> (edit of config.json, text the error must contain: the field it names)."""
    open_for_write = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    return {
        "open_for_write_as_backbone_name": (lambda c: c["backbone"].update(name=open_for_write), "backbone.name"),
        "subprocess_as_backbone": (lambda c: c.update(backbone={"_target_": "subprocess.call", "args": ["rm", str(victim)]}),
                                   "backbone._target_"),
        "nested_target_in_head": (lambda c: c["head"].update(
            _target_="fashion.models.MLPHeads", hidden_per_attribute={"articleType": open_for_write}),
            "head.hidden_per_attribute.articleType._target_"),
        "exec_as_extra_feature": (lambda c: c["extra_features"].update(colour={"_target_": "builtins.exec", "source": "1"}),
                                  "extra_features.colour._target_"),
        "partial_instantiation_key": (lambda c: c["backbone"].update(_partial_=True), "backbone._partial_"),
        "unknown_key": (lambda c: c["backbone"].update(evil="x"), "backbone.evil"),
        "wrong_type": (lambda c: c["backbone"].update(trainable_stages="3"), "backbone.trainable_stages"),
        "hub_name_that_downloads": (lambda c: c["backbone"].update(name="hf-hub:someone/model"), "backbone.name"),
        "head_not_an_object": (lambda c: c.update(head=["fashion.models.LinearHeads"]), "head"),
        "memory_exhausting_size": (lambda c: c["backbone"].update(image_size=10**6), "backbone.image_size"),
    }


@pytest.mark.parametrize("case", list(hostile_edits(Path("x"))))
def test_a_hostile_bundle_config_is_refused_naming_the_field_and_touches_nothing(trained, tmp_path, victim, no_instantiate, case):
    bundle = copy_bundle(trained, tmp_path)
    edit, field = hostile_edits(victim)[case]
    edit_config(bundle, edit)
    with pytest.raises(BundleError) as raised:
        load_bundle(bundle)
    assert field in str(raised.value) and "config.json" in str(raised.value)
    with pytest.raises(BundleError):   # the CLIs and the API load through here
        load_predictor(bundle=bundle)
    assert victim.read_text() == VICTIM_TEXT


def test_the_clis_refuse_a_hostile_bundle_with_a_message_not_a_traceback(trained, tmp_path, victim, capsys):
    from fashion.evaluate import main as evaluate_main
    from fashion.predict import main as predict_main

    bundle = copy_bundle(trained, tmp_path)
    edit, _ = hostile_edits(victim)["open_for_write_as_backbone_name"]
    edit_config(bundle, edit)
    image = next((trained.data / "images").glob("*.jpg"))
    assert predict_main([str(image), "--bundle", str(bundle)]) == 2
    assert evaluate_main(["--bundle", str(bundle), "--data", str(trained.data), "--output", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert err.count("cannot load the model") == 2 and "backbone.name._target_" in err
    assert victim.read_text() == VICTIM_TEXT


def test_a_hostile_checkpoint_is_refused_and_touches_nothing(trained, tmp_path, victim, no_instantiate):
    checkpoint = torch.load(trained.checkpoint, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["run_config"]["backbone"]["name"] = {
        "_target_": "builtins.open", "file": str(victim), "mode": "w"}
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    with pytest.raises(ArchitectureError, match="backbone.name"):
        load_checkpoint(evil)
    assert victim.read_text() == VICTIM_TEXT
    assert load_checkpoint(trained.checkpoint).model is not None   # the real one still loads, without instantiate


class WritesTheVictim:
    """A pickle that runs code when loaded: `open(victim, "w")` empties the victim file."""

    def __init__(self, victim: Path) -> None:
        self.victim = victim

    def __reduce__(self):
        return open, (str(self.victim), "w")


def test_a_pickle_a_cut_file_or_not_a_checkpoint_is_one_line_from_every_tool(trained, tmp_path, victim, capsys):
    """torch.load's own refusals were a traceback (UnpicklingError, RuntimeError), and its page of advice
    ended with re-running it with `weights_only=False`: what not to do with a file from elsewhere."""
    from fashion.evaluate import main as evaluate_main
    from fashion.export import main as export_main
    from fashion.predict import main as predict_main

    files = {"code.ckpt": lambda f: torch.save({"state_dict": WritesTheVictim(victim)}, f),
             "text.ckpt": lambda f: f.write_text("not a checkpoint"),
             "cut.ckpt": lambda f: f.write_bytes(trained.checkpoint.read_bytes()[:100_000]),
             "tensor.ckpt": lambda f: torch.save(torch.zeros(2), f)}
    messages = {"code.ckpt": "it is not a PyTorch file, or it holds objects other than tensors and plain values, "
                             "which are not loaded (they could run code)",
                "text.ckpt": "it is not a PyTorch file", "cut.ckpt": "is not a readable PyTorch file (cut short or damaged?)",
                "tensor.ckpt": "is not a fashion-train checkpoint (it holds a Tensor, not a dict)"}
    image = next((trained.data / "images").glob("*.jpg"))
    for name, write in files.items():
        checkpoint = tmp_path / name
        write(checkpoint)
        with pytest.raises(ValueError, match=re.escape(messages[name])):
            load_checkpoint(checkpoint)
        assert predict_main([f"checkpoint={checkpoint}", str(image)]) == 2
        assert evaluate_main([f"checkpoint={checkpoint}", f"root={trained.data}", f"output={tmp_path / 'e'}", "mlflow=false"]) == 2
        with pytest.raises(SystemExit) as exit_:
            export_main([f"checkpoint={checkpoint}", f"output={tmp_path / 'b'}", "mlflow=false"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.count(f"{checkpoint} ") == 3 and err.count(messages[name]) == 3 and "Traceback" not in err, err
        assert "weights_only" not in err
    assert victim.read_text() == VICTIM_TEXT and not (tmp_path / "b").exists() and not (tmp_path / "e").exists()


def test_a_checkpoint_to_start_training_from_is_read_weights_only_and_refused_in_one_line(trained, tmp_path, victim, compose_config):
    """fashion-train ckpt_path=: Lightning's torch.load refused the pickle at fit, after the slow setup, with a
    traceback ending in the advice to load it with `weights_only=False`."""
    from fashion.config import ConfigError
    from fashion.training.fit import train
    from tests.conftest import tiny_overrides

    code, tensor = tmp_path / "code.ckpt", tmp_path / "tensor.ckpt"
    torch.save({"state_dict": WritesTheVictim(victim), "epoch": 0}, code)
    torch.save(torch.zeros(2), tensor)
    for checkpoint, message in [(code, "holds objects other than tensors and plain values, which are not loaded"),
                                (tensor, "is not a fashion-train checkpoint (it holds a Tensor, not a dict)")]:
        cfg = compose_config(tiny_overrides(tmp_path / "run", trained.data) + [f"ckpt_path={checkpoint}"])
        with pytest.raises(ConfigError, match=re.escape(f"ckpt_path: {checkpoint} ") + ".*" + re.escape(message)):
            train(cfg)
    assert victim.read_text() == VICTIM_TEXT
    assert not (tmp_path / "run" / "mlruns").exists()   # refused before the run opened


def test_a_run_to_resume_whose_last_checkpoint_was_cut_short_is_named_before_the_setup(trained, tmp_path, compose_config, monkeypatch):
    """A job killed while Lightning wrote last.ckpt leaves it cut short: resuming it was Lightning's traceback at fit."""
    import fashion.training.fit
    from fashion.config import ConfigError
    from fashion.tracking.run import ResumePoint
    from tests.conftest import tiny_overrides

    cut = tmp_path / "last.ckpt"
    cut.write_bytes(trained.checkpoint.read_bytes()[:100_000])
    monkeypatch.setattr(fashion.training.fit, "find_resume_point", lambda cfg: ResumePoint("0123abcd", str(cut)))
    with pytest.raises(ConfigError, match=re.escape(f"resume=0123abcd: {cut} is not a readable PyTorch file (cut short or damaged?)")):
        fashion.training.fit.train(compose_config(tiny_overrides(tmp_path / "run", trained.data)))


@pytest.mark.parametrize("file", ["model.safetensors", "config.json", "vocabularies.json", "preprocessing.json",
                                  "taxonomy.json", "model.onnx"])
@pytest.mark.parametrize("damage", ["flip_a_byte", "truncate"])
def test_a_changed_or_truncated_file_is_named(trained, tmp_path, file, damage):
    bundle = copy_bundle(trained, tmp_path)
    data = bytearray((bundle / file).read_bytes())
    if damage == "flip_a_byte":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 3]
    (bundle / file).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{file}: sha256 .* does not match"):
        load_predictor(bundle=bundle)   # auto: the ONNX file is read (and so verified) too


def test_format_version_is_checked(trained, tmp_path):
    bundle = copy_bundle(trained, tmp_path)
    manifest = read_manifest(bundle)
    assert manifest["format"] == FORMAT and set(manifest["files"]) >= {"model.safetensors", "model.onnx", "config.json"}
    for version, hint in (("fashion-bundle/99", "not supported"), ("fashion-bundle/1", "export it again"), (None, "not supported")):
        (bundle / "manifest.json").write_text(json.dumps({**manifest, "format": version}))
        with pytest.raises(BundleError, match=hint):
            load_bundle(bundle)


def test_only_listed_files_are_used(trained, tmp_path):
    """A model.onnx dropped into a bundle exported without one is not verified, so it is not run."""
    bundle = copy_bundle(trained, tmp_path)
    manifest = read_manifest(bundle)
    del manifest["files"]["model.onnx"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert load_predictor(bundle=bundle).runtime == "torch"
    with pytest.raises(FileNotFoundError, match="no ONNX model"):
        load_predictor(bundle=bundle, runtime="onnx")
    manifest["files"]["extra.py"] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="extra.py"):
        load_bundle(bundle)


@pytest.mark.parametrize("edit,field", [
    (lambda v: v["articleType"].update(classes="Tshirts"), "classes"),
    (lambda v: v["articleType"].update(other_index=99), "other_index"),
    (lambda v: v["articleType"].update(evil=1), "evil"),
    (lambda v: v["gender"].update(classes=[v["gender"]["classes"][0]] * len(v["gender"]["classes"])), "more than once"),
    (lambda v: v["articleType"].update(counts=v["articleType"]["counts"][:-1]), "counts"),   # drift's expected mix
    (lambda v: v["articleType"].update(counts=[-1] * len(v["articleType"]["counts"])), "counts"),
])
def test_malformed_vocabularies_are_refused(trained, tmp_path, edit, field):
    bundle = copy_bundle(trained, tmp_path)
    vocabularies = json.loads((bundle / "vocabularies.json").read_text())
    edit(vocabularies)
    (bundle / "vocabularies.json").write_text(json.dumps(vocabularies))
    rehash(bundle)
    with pytest.raises(BundleError, match=rf"vocabularies.json.*{field}"):
        load_bundle(bundle)


@pytest.mark.parametrize("labels,field", [({"mappings": {"baseColour": {"Navy Blue": 1}}}, "mappings.baseColour.Navy Blue"),
                                          ({"mappings": {"colour": {"Navy Blue": "Blue"}}}, "colour"),
                                          ({"mappings": {}, "evil": {"_target_": "os.system"}}, "evil")])
def test_a_malformed_label_mapping_is_refused(trained, tmp_path, labels, field):
    bundle = copy_bundle(trained, tmp_path)
    (bundle / "labels.json").write_text(json.dumps(labels))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["labels.json"] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    rehash(bundle)
    with pytest.raises(BundleError, match=rf"labels.json: .*{re.escape(field)}"):
        load_bundle(bundle, build_now=False)


@pytest.mark.parametrize("field,values", [("std", [0.5, 0.0, 0.5]), ("std", [-0.5, 0.5, 0.5]),
                                          ("std", [0.5, float("nan"), 0.5]), ("mean", [float("inf"), 0.5, 0.5])])
def test_a_normalisation_that_would_serve_nan_is_refused(trained, tmp_path, field, values):
    """Pixels are divided by `std`: a zero, negative or NaN spread (or a NaN or infinite mean) served every tag with NaN
    confidence, on both runtimes, with numpy's divide warning the only sign."""
    bundle = copy_bundle(trained, tmp_path)
    preprocessing = json.loads((bundle / "preprocessing.json").read_text())
    (bundle / "preprocessing.json").write_text(json.dumps({**preprocessing, field: values}))
    rehash(bundle)
    with pytest.raises(BundleError, match=rf"preprocessing.json.*{field}\.[0-2]"):
        load_bundle(bundle, build_now=False)


def test_weights_that_do_not_fit_the_architecture_are_a_clear_error(trained, tmp_path):
    bundle = copy_bundle(trained, tmp_path)

    def linear_head(config: dict) -> None:
        config["head"] = {"_target_": "fashion.models.LinearHeads", "dropout": 0.0}
    edit_config(bundle, linear_head)
    with pytest.raises(BundleError, match="model.safetensors: does not fit"):
        load_bundle(bundle)


def architectures(compose_config) -> dict[str, dict]:
    """The architecture section of every backbone x head option and every experiment recipe."""
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf"
    overrides = [[f"backbone={b.stem}", f"head={h.stem}"] for b in sorted((conf / "backbone").glob("*.yaml"))
                 for h in sorted((conf / "head").glob("*.yaml"))]
    overrides += [[f"experiment={e.stem}"] for e in sorted((conf / "experiment").glob("*.yaml"))]
    overrides += [["+extra_features.colour={_target_:fashion.models.ColourHistogram,bins:8}"]]
    result = {}
    for override in overrides:
        cfg = OmegaConf.to_container(compose_config(override), resolve=False)
        result[" ".join(override)] = {k: cfg.get(k) for k in ("backbone", "head", "extra_features")}
    return result


def test_every_architecture_the_project_configures_passes_validation(compose_config):
    configs = architectures(compose_config)
    assert len(configs) > 25
    for name, config in configs.items():
        arch = validate_architecture(config, name)
        assert arch.backbone.kwargs["name"] == config["backbone"]["name"]
    model = build_model(configs["backbone=efficientnet_lite0 head=mlp"], {"gender": 2, "articleType": 5})
    assert model(torch.zeros(1, 3, 64, 64))["articleType"].shape == (1, 5)
