"""Out-of-time years, other folders scored after training, and photos stored squashed."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate
from PIL import Image

from fashion.config import InputError
from fashion.data import EvalSource, Preprocessing
from fashion.data.dataset import ProductImages, restore_aspect
from fashion.inference.bundle import load_bundle
from tests.conftest import tiny_overrides, write_kaggle_folder

PREP = Preprocessing(32, (0.5,) * 3, (0.5,) * 3)


def with_years(root: Path, every: int = 4, year: int = 2015) -> pd.DataFrame:
    styles = pd.read_csv(root / "styles.csv")
    styles.loc[styles.index % every == 0, "year"] = year
    styles.to_csv(root / "styles.csv", index=False)
    return styles


def datamodule(compose_config, overrides: list[str]):
    cfg = compose_config(overrides)
    dm = instantiate(cfg.data, preprocessing=PREP, _convert_="object")
    dm.prepare_labels()
    return dm


def test_out_of_time_years_leave_every_split_and_become_an_evaluation_set(compose_config, kaggle_folder, tmp_path):
    styles = with_years(kaggle_folder)
    dm = datamodule(compose_config, tiny_overrides(tmp_path, kaggle_folder) + ["data.out_of_time_years=[2015]"])
    held = set(styles.loc[styles["year"] == 2015, "id"])
    assert held and not held & set(dm.table["id"])
    assert set(dm.eval_tables["out_of_time"]["id"]) == held
    assert dm.report["eval_size/out_of_time"] == len(held)
    genders = styles.loc[styles["year"] == 2015, "gender"].value_counts(normalize=True)
    assert dm.report["majority_rate/out_of_time/gender"] == pytest.approx(genders.max())
    encoded = dm.eval_tables["out_of_time"]["y_articleType"]
    assert (encoded >= 0).all()   # labels encoded with the training vocabularies
    with pytest.raises(ValueError, match="no product .* from those years"):
        datamodule(compose_config, tiny_overrides(tmp_path, kaggle_folder) + ["data.out_of_time_years=[1999]"])
    every = sorted(styles["year"].unique())   # nothing left to train on: was pandas' TypeError in the split
    with pytest.raises(InputError, match=re.escape(f"every product of {kaggle_folder / 'styles.csv'} is of a held-out year")):
        datamodule(compose_config, tiny_overrides(tmp_path, kaggle_folder) + [f"data.out_of_time_years=[{','.join(map(str, every))}]"])


def test_an_evaluation_folder_leaves_out_what_the_run_trained_on(compose_config, kaggle_folder, tmp_path):
    other = tmp_path / "other"
    write_kaggle_folder(other, n=48, size=48)   # the same ids at another resolution
    source = f"+data.eval_sets.sharp={{_target_:fashion.data.EvalSource,root:{other},true_aspect:0.75}}"
    dm = datamodule(compose_config, tiny_overrides(tmp_path, kaggle_folder) + [source])
    trained = set(dm.table.loc[dm.table["split"].isin(["train", "val"]), "id"])
    scored = set(dm.eval_tables["sharp"]["id"])
    assert scored == set(dm.table.loc[dm.table["split"] == "test", "id"]) and not scored & trained
    loader = dm.eval_dataloaders()["sharp"]
    assert loader.dataset.true_aspect == 0.75 and len(loader.dataset) == len(scored)
    images, targets = next(iter(loader))
    assert images.shape[1:] == (3, 32, 32) and set(targets) == set(dm.attributes)
    assert isinstance(dm.eval_sources["sharp"], EvalSource)


def test_restore_aspect_unsquashes_and_the_dataset_applies_it(tmp_path):
    square = np.zeros((224, 224, 3), dtype=np.uint8)
    assert restore_aspect(square, 0.75).shape == (224, 168, 3)
    assert restore_aspect(square, None) is square
    path = tmp_path / "p.png"
    square[:, 100:124] = 255   # a white stripe: still centred after the width shrinks
    Image.fromarray(square).save(path)
    seen = {}

    def transform(image):
        seen["shape"] = image.shape
        return {"image": image}
    ProductImages([str(path)], {}, transform, true_aspect=0.75)[0]
    assert seen["shape"] == (224, 168, 3)


def test_the_feature_cache_key_depends_on_the_true_aspect(tmp_path):
    from fashion.features.fingerprint import cache_key
    from fashion.models import LinearHeads, MultiHeadTagger
    from tests.test_feature_cache import tiny_backbone

    backbone = tiny_backbone(freeze="frozen")
    model = MultiHeadTagger(backbone, LinearHeads(backbone.num_features, {"gender": 2}))
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"{i}.jpg"))
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(paths[-1])
    plain = cache_key(model, backbone.preprocessing, [0, 1], paths)
    assert cache_key(model, backbone.preprocessing, [0, 1], paths, true_aspect=None) == plain
    assert cache_key(model, backbone.preprocessing, [0, 1], paths, true_aspect=0.75) != plain


@pytest.mark.slow
def test_a_run_logs_its_evaluation_sets_beside_its_test_split(compose_config, kaggle_folder, tmp_path, capsys):
    from fashion.train import train

    with_years(kaggle_folder)
    other = tmp_path / "other"
    write_kaggle_folder(other, n=48, size=48)
    cfg = compose_config(tiny_overrides(tmp_path, kaggle_folder) + [
        "data.out_of_time_years=[2015]",
        f"+data.eval_sets.sharp={{_target_:fashion.data.EvalSource,root:{other}}}"])
    metrics = train(cfg)
    for name in ("out_of_time", "sharp"):
        assert 0.0 <= metrics[f"eval/{name}/articleType/acc"] <= 1.0 and f"eval/{name}/gender/f1" in metrics
    assert "test/articleType/acc" in metrics
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["fashion"]).iloc[0]
    assert run["metrics.eval/out_of_time/articleType/acc"] == pytest.approx(metrics["eval/out_of_time/articleType/acc"])
    assert run["metrics.test/articleType/acc"] == pytest.approx(metrics["test/articleType/acc"])  # not overwritten
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"], "eval/sharp")}
    assert {"eval/sharp/confusion_articleType.png", "eval/sharp/confusions_articleType.csv"} <= artifacts
    assert "out_of_time acc" in capsys.readouterr().out
    names = {i.dataset.name for i in mlflow.MlflowClient().get_run(run["run_id"]).inputs.dataset_inputs}
    assert {"dataset/out_of_time", "other/sharp", "dataset/train"} <= names   # every set is a dataset input
    assert "| out_of_time acc | sharp acc |" in mlflow.MlflowClient().get_run(run["run_id"]).data.tags["mlflow.note.content"]


def test_fashion_eval_scores_the_same_sets(trained, tmp_path, capsys):
    import json

    from fashion.evaluate import main

    def images_scored(*extra: str) -> int:
        out = tmp_path / f"out{len(extra)}"
        assert main(["--bundle", str(trained.bundle), "--data", str(trained.data), "--output", str(out), "--no-mlflow",
                     *extra]) == 0
        return json.loads((out / "metrics.json").read_text())["images"]

    everything = images_scored()
    styles = pd.read_csv(trained.data / "styles.csv")
    split = tmp_path / "split.csv"
    pd.DataFrame({"id": styles["id"], "split": ["train"] * 50 + ["test"] * (len(styles) - 50)}).to_csv(split, index=False)
    assert images_scored("--exclude-split", str(split), "--true-aspect", "0.75") == everything - 50
    assert images_scored("--years", "2012") == everything
    assert main(["--bundle", str(trained.bundle), "--data", str(trained.data), "--no-mlflow", "--years", "1999",
                 "--output", str(tmp_path / "none")]) == 2
    assert "no product" in capsys.readouterr().err


def test_a_folder_labelling_some_attributes_is_scored_on_those_and_the_others_are_no_zeros(trained, tmp_path, capsys):
    """A shop's hand-checked sample labels articleType and season only. Its other columns missing, fashion-eval refused
    the folder; present but empty, each unlabelled attribute scored an accuracy of 0, and the mean with them."""
    import json

    from fashion.evaluate import main

    folder = tmp_path / "checked"
    folder.mkdir()
    (folder / "images").symlink_to(trained.data / "images")
    styles = pd.read_csv(trained.data / "styles.csv")
    metrics = {}
    for name, table in (("absent", styles[["id", "articleType", "season"]]),
                        ("empty", styles.assign(gender=None, usage=None)[["id", "articleType", "season", "gender", "usage"]])):
        table.to_csv(folder / f"{name}.csv", index=False)
        assert main([f"bundle={trained.bundle}", f"root={folder}", f"styles_file={name}.csv", "mlflow=false",
                     f"output={tmp_path / name}"]) == 0, capsys.readouterr().err
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
        assert "gender          (no product of the folder is labelled with it)" in capsys.readouterr().out
    labelled = [metrics["absent"][f"eval/{a}/acc"] for a in ("articleType", "season")]
    assert metrics["absent"] == metrics["empty"] and "eval/gender/acc" not in metrics["absent"]
    assert metrics["absent"]["eval/mean_acc"] == pytest.approx(sum(labelled) / 2)
    (folder / "none.csv").write_text("id,colour\n1000,Red\n")   # no attribute of the model's at all: refused
    assert main([f"bundle={trained.bundle}", f"root={folder}", "styles_file=none.csv", "mlflow=false",
                 f"output={tmp_path / 'none'}"]) == 2
    assert "lacks column(s)" in capsys.readouterr().err


def test_fashion_eval_scores_in_lanes_as_in_one(trained, tmp_path, caplog):
    """fashion-eval decodes and scores a batch per core at once, as fashion-predict does (it decoded between the
    model's runs: 10% slower on the subset): the same metrics to the last digit, an unreadable photo counted."""
    import shutil

    from fashion.inference.evaluation import evaluate
    from fashion.inference.runtime import load_predictor

    data = tmp_path / "data"
    shutil.copytree(trained.data, data)
    broken = next((data / "images").glob("*.jpg"))
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    source = EvalSource(root=str(data), true_aspect=0.75)
    predictor = load_predictor(bundle=trained.bundle, top_k=5, batch_size=7, threads=1)   # batches split unevenly
    assert predictor.runtime == "onnx"
    alone, counts, _ = evaluate(predictor, source)
    for lanes in (2, 3):
        assert evaluate(predictor, source, lanes=lanes)[:2] == (alone, counts)
    assert counts["unreadable_images"] == 1 and counts["images"] == len(pd.read_csv(data / "styles.csv")) - 1
    assert f"left out 1 unreadable image(s): cannot decode image {broken}: " in caplog.text   # named, not only counted
    assert alone["eval/articleType/acc"] >= 0 and len(alone) > 20
    # the uncalibrated ECE needs the temperatures, read from the weights: the PyTorch network is never built (1.7 s)
    assert "model" not in predictor.trained.__dict__
    assert predictor.trained.temperatures() == load_bundle(trained.bundle).model.temperatures() != {a: 1.0 for a in predictor.attributes}


def test_resolution_normalisation_makes_a_sharp_photo_and_its_thumbnail_alike():
    from fashion.data.images import load_rgb
    from tests.conftest import SAMPLE

    sharp = restore_aspect(load_rgb(sorted((SAMPLE / "images").glob("*.jpg"))[5]), 0.75)     # 224x168
    thumbnail = np.asarray(Image.fromarray(sharp).resize((60, 80), Image.Resampling.BICUBIC))  # the catalogue's size
    plain = Preprocessing(224, (0.5,) * 3, (0.5,) * 3)
    normalised = Preprocessing(224, (0.5,) * 3, (0.5,) * 3, source_max_side=80)

    def gap(prep: Preprocessing) -> float:
        transform = prep.eval_transform()
        return float((transform(image=sharp)["image"] - transform(image=thumbnail)["image"]).abs().mean())
    assert gap(normalised) < 0.5 * gap(plain)
    assert repr(normalised) == repr(plain)   # the feature cache adds it to its key only when set


def _pil_jpeg(image: np.ndarray, quality: int = 75) -> np.ndarray:
    import io

    encoded = io.BytesIO()
    Image.fromarray(image).save(encoded, "JPEG", quality=quality)
    return np.asarray(Image.open(encoded).convert("RGB"))


def test_thumbnail_rendering_encodes_what_it_shrinks_and_leaves_thumbnails_alone():
    import cv2

    from fashion.data.images import load_rgb
    from fashion.data.transforms import ThumbnailRendering
    from tests.conftest import SAMPLE

    render = ThumbnailRendering(80, jpeg_quality=75)
    paths = sorted((SAMPLE / "images").glob("*.jpg"))[5:8]
    for path in paths:
        sharp = restore_aspect(load_rgb(path), 0.75)                                    # 224x168
        shrunk = cv2.resize(sharp, (60, 80), interpolation=cv2.INTER_AREA)
        rendered = render(image=sharp)["image"]
        assert rendered.shape == shrunk.shape and not np.array_equal(rendered, shrunk)  # the round trip happened
        # ... in RGB, as PIL (and the catalogue) encode: not albumentations' ImageCompression, which encodes RGB as BGR
        assert np.abs(rendered.astype(int) - _pil_jpeg(shrunk)).mean() < 0.1
        thumbnail = _pil_jpeg(shrunk)
        assert np.array_equal(render(image=thumbnail)["image"], thumbnail)              # at 80 px: untouched
    tiny = np.full((40, 30, 3), 200, np.uint8)                                          # under 80 px: resized only, as before
    assert np.array_equal(render(image=tiny)["image"], ThumbnailRendering(80)(image=tiny)["image"])


def test_the_jpeg_round_trip_brings_a_sharp_photo_closer_to_its_catalogue_thumbnail():
    from fashion.data.images import load_rgb
    from tests.conftest import SAMPLE

    without = Preprocessing(224, (0.5,) * 3, (0.5,) * 3, source_max_side=80)
    with_jpeg = Preprocessing(224, (0.5,) * 3, (0.5,) * 3, source_max_side=80, source_jpeg_quality=75)

    def gap(prep: Preprocessing, sharp: np.ndarray, thumbnail: np.ndarray) -> float:
        transform = prep.eval_transform()
        return float((transform(image=sharp)["image"] - transform(image=thumbnail)["image"]).abs().mean())
    for path in sorted((SAMPLE / "images").glob("*.jpg"))[5:8]:
        sharp = restore_aspect(load_rgb(path), 0.75)
        # what the catalogue did: an antialiased resize of the photo, JPEG at quality 75 (its quantisation tables)
        thumbnail = _pil_jpeg(np.asarray(Image.fromarray(sharp).resize((60, 80), Image.Resampling.LANCZOS)))
        assert gap(with_jpeg, sharp, thumbnail) < 0.95 * gap(without, sharp, thumbnail)
    assert repr(with_jpeg) == repr(without)   # the feature cache adds it to its key only when set


def test_a_bundle_keeps_its_resolution_normalisation(trained, tmp_path):
    import json
    import shutil

    from fashion.inference import load_bundle
    from tests.test_trust_boundary import rehash

    bundle = tmp_path / "b"
    shutil.copytree(trained.bundle, bundle)
    prep = json.loads((bundle / "preprocessing.json").read_text())
    assert prep["source_max_side"] is None
    assert prep["source_jpeg_quality"] is None   # written by export; a bundle from before it loads with None
    old = {k: v for k, v in prep.items() if k != "source_jpeg_quality"}
    (bundle / "preprocessing.json").write_text(json.dumps({**old, "source_max_side": 80}))
    rehash(bundle)
    assert load_bundle(bundle).preprocessing.source_max_side == 80
    assert load_bundle(bundle).preprocessing.source_jpeg_quality is None
    (bundle / "preprocessing.json").write_text(json.dumps({**prep, "source_max_side": 80, "source_jpeg_quality": 75}))
    rehash(bundle)
    assert load_bundle(bundle).preprocessing.source_jpeg_quality == 75
    from fashion.inference.bundle import BundleError
    for max_side, hostile in ((80, 0), (80, 101), (80, "75"), (None, 75)):   # out of range, not an integer, or
        (bundle / "preprocessing.json").write_text(                        # without a size to shrink to: refused
            json.dumps({**prep, "source_max_side": max_side, "source_jpeg_quality": hostile}))
        rehash(bundle)
        with pytest.raises(BundleError, match="preprocessing.json"):
            load_bundle(bundle)


@pytest.mark.parametrize("aspect", [0, -0.75])
def test_an_evaluation_set_built_from_code_refuses_an_aspect_that_is_not_a_ratio(aspect):
    """0 would squash every photo to a 1-pixel column (restore_aspect keeps at least 1) and score garbage."""
    with pytest.raises(ValueError, match=f"EvalSource.true_aspect: Input should be greater than 0 \\(got {aspect}\\)"):
        EvalSource(root="photos", true_aspect=aspect)
