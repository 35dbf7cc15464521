"""The frozen-feature cache: right key, right invalidation, same numbers as the uncached path."""

import logging
import os
from dataclasses import replace

import albumentations as A
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from fashion.data import Preprocessing
from fashion.data.cached import FeatureDataset
from fashion.data.transforms import Augmentation
from fashion.features import FeatureCache
from fashion.features.fingerprint import cache_key
from fashion.features.runners import RUNNERS, compute_cacheable_inputs
from fashion.models import Backbone, ColourHistogram, LinearHeads, MultiHeadTagger
from fashion.train import train
from fashion.training.assembly import build_model, use_feature_cache
from tests.conftest import tiny_overrides


def tiny_backbone(**kwargs) -> Backbone:
    torch.manual_seed(0)
    return Backbone("test_efficientnet", image_size=32, **kwargs)


def tiny_model(colour: bool = False, **kwargs) -> MultiHeadTagger:
    backbone = tiny_backbone(**kwargs)
    extras = {"colour": ColourHistogram(backbone.preprocessing, bins=4, size=16)} if colour else {}
    heads = LinearHeads(MultiHeadTagger.feature_size(backbone, extras), {"gender": 2})
    return MultiHeadTagger(backbone, heads, extras)


@pytest.fixture
def table(kaggle_folder):
    frame = pd.read_csv(kaggle_folder / "styles.csv")[["id"]]
    frame["path"] = [str(kaggle_folder / "images" / f"{i}.jpg") for i in frame["id"]]
    return frame


def test_cache_applies_only_when_the_prefix_output_is_fixed():
    cache = FeatureCache("unused")
    flip = Augmentation([A.HorizontalFlip(p=0.5)])
    assert cache.applies(tiny_model(freeze="frozen"), Augmentation([]))
    assert not cache.applies(tiny_model(freeze="frozen"), flip)
    assert not cache.applies(tiny_model(freeze="full"), Augmentation([]))
    assert cache.applies(tiny_model(freeze="partial", trainable_stages=1), Augmentation([]))
    with pytest.raises(ValueError, match="runtime: Input should be 'onnx' or 'torch'"):
        FeatureCache("unused", runtime="tensorrt")


def test_cached_inputs_equal_a_fresh_pass_and_are_reused(tmp_path, table):
    model = tiny_model(colour=True, freeze="frozen").eval()
    preprocessing = model.backbone.preprocessing
    cache = FeatureCache(str(tmp_path / "cache"))
    first = cache.load_or_compute(model, preprocessing, table)
    assert cache.last_status == "built"
    assert first["backbone"].shape == (len(table), model.backbone.num_features) and first["colour"].shape == (len(table), 64)
    second = cache.load_or_compute(model, preprocessing, table.iloc[::-1].reset_index(drop=True))
    assert cache.last_status == "hit"
    for name in ("backbone", "colour"):  # rows follow the table asked for, not the stored order
        assert torch.equal(second[name], first[name].flip(0))
    fresh = compute_cacheable_inputs(model, preprocessing, table["path"].tolist())
    assert torch.allclose(first["backbone"], fresh["backbone"], atol=1e-5)  # the cache fills in onnxruntime


def test_an_entry_filled_on_another_machine_is_named_and_warned_of(tmp_path, table, monkeypatch, caplog):
    """A cache shared by a cluster's nodes or copied with a project is used as it is (features differ ~1e-5 between
    processors); the run must be able to say so, as its metrics can differ in their last digits from a cold run."""
    import fashion.features.store as store
    from fashion.machine import cpu_instruction_set, processor, processor_name

    model = tiny_model(freeze="frozen").eval()
    here = store.filler("onnx")
    assert here.startswith("onnxruntime ") and here.endswith(f" on {processor_name()}, {cpu_instruction_set()}")
    assert store.filler("torch") == f"torch {torch.__version__} on {processor()}"
    # torch's kernels capped (ATEN_CPU_CAPABILITY=avx2) leave onnxruntime's alone: its fills are the same, no warning
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "CAPPED")
    processor.cache_clear()
    try:
        assert store.filler("onnx") == here and store.filler("torch").endswith(", CAPPED")
    finally:
        monkeypatch.undo()
        processor.cache_clear()
    cache = FeatureCache(str(tmp_path / "cache"))
    cache.load_or_compute(model, model.backbone.preprocessing, table)
    assert cache.last_status == "built" and cache.filled_on == {here}
    with caplog.at_level(logging.WARNING, logger="fashion.features.store"):
        cache.load_or_compute(model, model.backbone.preprocessing, table)
    assert cache.last_status == "hit" and cache.filled_on == {here} and "were filled with" not in caplog.text

    monkeypatch.setattr(store, "filler", lambda runtime: "onnxruntime 1.0 on Other CPU, AVX2")   # another node fills
    other = FeatureCache(str(tmp_path / "shared"))
    other.load_or_compute(model, model.backbone.preprocessing, table)
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="fashion.features.store"):
        other.load_or_compute(model, model.backbone.preprocessing, table)
    assert other.last_status == "hit" and other.filled_on == {"onnxruntime 1.0 on Other CPU, AVX2"}
    assert f"were filled with onnxruntime 1.0 on Other CPU, AVX2, where this run would fill them with {here}" in caplog.text

    # an entry written before the record: named as such, not warned of on every run
    from safetensors.torch import load_file, save_file
    [entry] = (tmp_path / "cache").glob("*.safetensors")
    save_file(load_file(entry), entry, metadata={"backbone": "old"})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fashion.features.store"):
        cache.load_or_compute(model, model.backbone.preprocessing, table)
    assert cache.last_status == "hit" and cache.filled_on == {store.UNRECORDED} and "were filled with" not in caplog.text



def test_processes_that_ask_for_a_new_entry_together_fill_it_once(tmp_path, kaggle_folder):
    """torchrun's ranks (or a parallel sweep's jobs) each filled the whole cache at once, every one decoding
    every image on the same cores: three processes here all answered `built`. One fills it now; the others
    wait for it and read the same inputs."""
    import multiprocessing

    from tests.started_together import fill_the_feature_cache_at_the_signal

    spawn, processes = multiprocessing.get_context("spawn"), 3
    start, answers = spawn.Barrier(processes), spawn.Queue()
    workers = [spawn.Process(target=fill_the_feature_cache_at_the_signal,
                             args=(str(tmp_path / "cache"), str(kaggle_folder), start, answers)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    results = [answers.get(timeout=180) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert sorted(status for status, _ in results) == ["built", "hit", "hit"]
    first = results[0][1]
    assert all(np.array_equal(inputs[name], first[name]) for _, inputs in results for name in first)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1

def test_an_unreadable_cache_entry_is_filled_again_not_a_crash(tmp_path, table, caplog):
    """A cache file cut short (a copy, a full disk) stopped every later run with safetensors' "Error while
    deserializing header"; it is now filled again, with one warning that names it (it was read, and warned
    of, twice)."""
    model = tiny_model(freeze="frozen").eval()
    cache = FeatureCache(str(tmp_path / "cache"))
    first = cache.load_or_compute(model, model.backbone.preprocessing, table)
    (entry,) = (tmp_path / "cache").glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:100])
    again = cache.load_or_compute(model, model.backbone.preprocessing, table)
    assert cache.last_status == "built" and caplog.text.count(f"feature cache entry {entry} is unreadable") == 1
    assert torch.equal(again["backbone"], first["backbone"])
    cache.load_or_compute(model, model.backbone.preprocessing, table)
    left = sorted(p.name for p in entry.parent.iterdir())   # no partial file left: the entry and its fill lock
    assert cache.last_status == "hit" and left == [entry.name, f"{entry.name}.lock"]


@pytest.mark.parametrize("freeze", ["frozen", "partial"])
def test_onnxruntime_fill_matches_eager_pytorch(freeze, table, monkeypatch):
    model = tiny_model(colour=True, freeze=freeze, trainable_stages=1).train()
    preprocessing, paths = model.backbone.preprocessing, table["path"].tolist()
    used = []
    for name, runner in list(RUNNERS.items()):  # so the test fails if `runtime` were ignored
        monkeypatch.setitem(RUNNERS, name, lambda *args, _name=name, _runner=runner: used.append(_name) or _runner(*args))
    eager = compute_cacheable_inputs(model, preprocessing, paths, batch_size=16, runtime="torch")
    onnx = compute_cacheable_inputs(model, preprocessing, paths, batch_size=16, runtime="onnx")
    assert used == ["torch", "onnx"]
    assert onnx.keys() == eager.keys() == {"backbone", "colour"}
    for name in eager:
        assert onnx[name].shape == eager[name].shape
        assert torch.allclose(onnx[name], eager[name], atol=1e-5, rtol=1e-4), name
    assert model.training and not model.backbone.model.bn1.training  # modes restored; frozen norms stay in eval


def test_key_changes_with_weights_preprocessing_prefix_extras_and_image_files(tmp_path, table):
    model = tiny_model(freeze="frozen")
    pre = model.backbone.preprocessing
    ids, paths = table["id"].tolist(), table["path"].tolist()
    key = cache_key(model, pre, ids, paths)
    assert cache_key(model, pre, ids, paths) == key
    assert cache_key(model, Preprocessing(48, pre.mean, pre.std), ids, paths) != key
    normalised = Preprocessing(pre.image_size, pre.mean, pre.std, source_max_side=80)
    assert len({key, cache_key(model, normalised, ids, paths),
                cache_key(model, replace(normalised, source_jpeg_quality=75), ids, paths)}) == 3
    assert cache_key(tiny_model(freeze="partial", trainable_stages=1), pre, ids, paths) != key
    assert cache_key(tiny_model(colour=True, freeze="frozen"), pre, ids, paths) != key
    with torch.no_grad():
        next(model.backbone.parameters()).add_(1.0)
    assert cache_key(model, pre, ids, paths) != key
    key = cache_key(model, pre, ids, paths)
    os.utime(paths[0], ns=(0, 0))  # the same pixels copied or re-provisioned: still a hit
    assert cache_key(model, pre, ids, paths) == key
    with open(paths[0], "ab") as image:  # an image replaced on disk
        image.write(b"\0")
    assert cache_key(model, pre, ids, paths) != key


@pytest.mark.parametrize("freeze", ["frozen", "partial"])
def test_cached_forward_is_the_whole_network(freeze):
    model = tiny_model(colour=True, freeze=freeze, trainable_stages=1).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        whole = model(images)
        split = model(model.cacheable_inputs(images))
    assert model.backbone.prefix_description == ("all" if freeze == "frozen" else "stem+blocks[:4]")
    assert torch.allclose(whole["gender"], split["gender"], atol=1e-6)


@pytest.mark.parametrize("freeze", ["frozen", "partial"])
def test_a_cached_run_matches_the_uncached_run(freeze, tmp_path, kaggle_folder, compose_config):
    base = tiny_overrides(tmp_path, kaggle_folder) + [
        "augmentation=none", f"backbone.freeze={freeze}", "backbone.trainable_stages=1", "head=linear", "test=false",
        "+extra_features.colour={_target_:fashion.models.ColourHistogram,bins:4,size:16}"]
    uncached = train(compose_config(base + ["feature_cache=null"]))
    cached = train(compose_config(base))
    again = train(compose_config(base))
    assert cached["val/loss"] == pytest.approx(uncached["val/loss"], abs=1e-4)
    assert again["val/loss"] == pytest.approx(cached["val/loss"], abs=1e-6)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["fashion"], order_by=["start_time ASC"])
    assert runs["tags.feature_cache"].tolist() == ["off", "built", "hit"]
    from fashion.features.store import filler
    assert runs["tags.feature_cache.filled_on"].fillna("").tolist() == ["", filler("onnx"), filler("onnx")]


def test_colour_histogram_sees_the_product_not_the_background():
    pre = Preprocessing(32, (0.5,) * 3, (0.5,) * 3)
    histogram = ColourHistogram(pre, bins=4, size=16, scale=1.0)
    image = torch.ones(1, 3, 32, 32)                 # white, in 0..1
    image[:, :, 8:24, 8:24] = torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1)  # a red square
    features = histogram((image - 0.5) / 0.5)
    red_bin = 3 * 16 + 0 * 4 + 0
    assert features.shape == (1, 64)
    assert features[0, red_bin] == pytest.approx(1.0)  # all foreground mass in one bin, background ignored
    assert features.sum() == pytest.approx(1.0)
    blank = histogram(torch.ones(1, 3, 32, 32))       # no foreground: the whole image counts
    assert blank[0, 63] == pytest.approx(1.0)
    unit_rms = ColourHistogram(pre, bins=4, size=16)(torch.rand(5, 3, 32, 32) * 2 - 1)
    assert unit_rms.pow(2).mean(dim=1).sqrt() == pytest.approx(torch.ones(5))  # default scale: the backbone's order


def test_colour_histogram_is_the_same_under_mixed_precision():
    """best_gpu trains in bf16-mixed: autocast once ran the pooling in bf16, and bf16 turned bin 511 into 512."""
    histogram = ColourHistogram(Preprocessing(224, (0.5,) * 3, (0.5,) * 3), bins=8, size=64)
    images = torch.rand(4, 3, 224, 224) * 2 - 1
    images[0] = 1.0                                    # all white: every pixel in the last bin
    expected = histogram(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = histogram(images)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, expected)


@pytest.mark.parametrize("freeze", ["frozen", "partial"])
def test_frozen_batch_norms_start_in_eval_mode(freeze):
    """Lightning keeps module modes as it finds them, so frozen norms must be in eval mode from the start
    (or their running statistics drift during training, and cached and uncached runs differ)."""
    backbone = tiny_backbone(freeze=freeze, trainable_stages=1)
    frozen_norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d) and not any(p.requires_grad for p in m.parameters())]
    assert frozen_norms and not any(m.training for m in frozen_norms)


def test_colour_histogram_pooling_matches_adaptive_avg_pool():
    from fashion.models.colour import adaptive_pool_matrix

    images = torch.rand(2, 3, 224, 224)
    pool = adaptive_pool_matrix(224, 64)
    expected = torch.nn.functional.adaptive_avg_pool2d(images, 64)
    assert torch.allclose(pool @ images @ pool.T, expected, atol=1e-6)


@pytest.fixture
def asymmetric_table(tmp_path):
    """Images whose mirror image differs (the shared fixture's are solid colours)."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    paths = []
    for i in range(6):
        pixels = np.full((32, 32, 3), 255, dtype=np.uint8)
        pixels[:, : 4 + 3 * i] = rng.integers(0, 120, size=3, dtype=np.uint8)  # a dark band on the left
        Image.fromarray(pixels).save(tmp_path / "images" / f"{i}.jpg", quality=95)
        paths.append(str(tmp_path / "images" / f"{i}.jpg"))
    return pd.DataFrame({"id": range(6), "path": paths})


def test_augmentation_views_are_cacheable_and_must_be_deterministic():
    views = Augmentation(views=[A.HorizontalFlip(p=1.0)])
    assert views.cacheable and Augmentation().cacheable
    assert not Augmentation([A.HorizontalFlip(p=0.5)]).cacheable
    assert FeatureCache("unused").applies(tiny_model(freeze="partial", trainable_stages=1), views)
    with pytest.raises(ValueError, match="HorizontalFlip has p=0.5"):
        Augmentation(views=[A.HorizontalFlip(p=0.5)])


def test_uncached_training_draws_the_image_or_its_view():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[:, :8] = 200
    transform = Augmentation(views=[A.HorizontalFlip(p=1.0)]).train_transform(Preprocessing(32, (0.0,) * 3, (1.0,) * 3))
    transform.set_random_seed(0)
    left_bright = [bool(transform(image=image)["image"][0, 0, 0] > 0.5) for _ in range(40)]
    assert 8 <= sum(left_bright) <= 32  # both versions drawn, about evenly


def test_each_view_is_cached_under_its_own_key(tmp_path, asymmetric_table):
    model = tiny_model(freeze="partial", trainable_stages=1).eval()
    preprocessing, flip = model.backbone.preprocessing, A.HorizontalFlip(p=1.0)
    cache = FeatureCache(str(tmp_path / "cache"))
    inputs, (flipped,) = cache.load_with_views(model, preprocessing, asymmetric_table, [flip])
    assert cache.last_status == "built" and len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    paths = asymmetric_table["path"].tolist()
    assert torch.allclose(inputs["backbone"], compute_cacheable_inputs(model, preprocessing, paths)["backbone"], atol=1e-5)
    expected = compute_cacheable_inputs(model, preprocessing, paths, view=flip)["backbone"]
    assert torch.allclose(flipped["backbone"], expected, atol=1e-5)
    assert not torch.allclose(flipped["backbone"], inputs["backbone"], atol=1e-3)
    again, _ = cache.load_with_views(model, preprocessing, asymmetric_table, [flip])
    assert cache.last_status == "hit" and torch.equal(again["backbone"], inputs["backbone"])
    cache.load_with_views(model, preprocessing, asymmetric_table, [A.VerticalFlip(p=1.0)])
    assert cache.last_status == "built"  # a new view, a new entry; the image's own entry is reused


def test_feature_dataset_draws_among_views():
    image, mirror = {"backbone": torch.zeros(4, 3)}, {"backbone": torch.ones(4, 3)}
    dataset = FeatureDataset(image, {"gender": [0, 1, 0, 1]}, [mirror])
    torch.manual_seed(0)
    drawn = [float(dataset[i % 4][0]["backbone"][0]) for i in range(40)]
    assert 8 <= sum(drawn) <= 32
    assert float(FeatureDataset(image, {"gender": [0, 1, 0, 1]})[2][0]["backbone"].sum()) == 0.0
    with pytest.raises(ValueError, match="different inputs"):
        FeatureDataset(image, {"gender": [0, 1, 0, 1]}, [{"colour": torch.ones(4, 3)}])


def test_a_run_with_flip_views_trains_on_the_cache_and_evaluates_on_the_images_alone(tmp_path, kaggle_folder, compose_config):
    cfg = compose_config(tiny_overrides(tmp_path, kaggle_folder) + [
        "augmentation=flip", "backbone.freeze=partial", "backbone.trainable_stages=1", "head=linear"])
    backbone = instantiate(cfg.backbone)
    datamodule = instantiate(cfg.data, preprocessing=backbone.preprocessing, _convert_="object")
    datamodule.prepare_labels()
    cache = use_feature_cache(cfg, build_model(cfg, datamodule, backbone), datamodule)
    assert cache.last_status == "built"
    assert all(isinstance(d, FeatureDataset) for d in datamodule.datasets.values())
    assert len(datamodule.datasets["train"].versions) == 2
    assert len(datamodule.datasets["val"].versions) == len(datamodule.datasets["test"].versions) == 1
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
