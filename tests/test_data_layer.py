"""The data layer against missing images, corrupt JPEGs, NA labels, rare classes and the split."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fashion.config import ConfigError, InputError
from fashion.data import Augmentation, FashionDataModule, LabelSpec, Preprocessing, SplitSpec
from fashion.data.images import ImageReadError, find_unreadable, load_rgb
from fashion.data.split import assign_splits, near_duplicate_groups
from fashion.data.taxonomy import Taxonomy
from fashion.data.vocab import IGNORE_INDEX, LabelVocabulary
from tests.conftest import SAMPLE, write_kaggle_folder

PRE = Preprocessing(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def datamodule(root: Path, **label_kwargs) -> FashionDataModule:
    labels = LabelSpec(**{"min_count": 1, **label_kwargs})
    return FashionDataModule(str(root), labels, SplitSpec(), Augmentation(), PRE, batch_size=4, num_workers=0)


def test_rows_without_image_are_dropped_and_counted(kaggle_folder):
    for pid in (1000, 1003, 1006):
        (kaggle_folder / "images" / f"{pid}.jpg").unlink()
    dm = datamodule(kaggle_folder)
    dm.prepare_labels()
    assert dm.report["missing_images"] == 3
    assert dm.report["missing_image_examples"] == [1000, 1003, 1006]
    assert len(dm.table) == 48 - 3


def test_train_only_folders_add_training_rows_and_refuse_an_id_taken_by_the_data_or_each_other(kaggle_folder, tmp_path,
                                                                                                caplog):
    """Two exports of the review queue (last week's and this week's, which holds last week's too) used to
    be added side by side: the corrections in both trained twice, under one id."""
    feedback = [tmp_path / "week1", tmp_path / "week2", tmp_path / "clash"]
    for folder, first in zip(feedback, [1_000_000_001, 1_000_000_001, 1000]):
        write_kaggle_folder(folder, n=4)
        styles = pd.read_csv(folder / "styles.csv")
        for old, new in zip(styles["id"], range(first, first + 4)):
            (folder / "images" / f"{old}.jpg").rename(folder / "images" / f"{new}.jpg")
        styles.assign(id=range(first, first + 4)).to_csv(folder / "styles.csv", index=False)

    def labelled(train_only):
        dm = datamodule(kaggle_folder)
        dm.train_only = train_only
        dm.prepare_labels()
        return dm.table

    styles = pd.read_csv(feedback[0] / "styles.csv")   # a class a person added in review, in one correction
    styles.loc[0, "articleType"] = "Cargo Jorts"
    styles.to_csv(feedback[0] / "styles.csv", index=False)
    table = labelled(feedback[:1])
    added = table[table["id"] >= 1_000_000_000]
    assert "this run does not learn as classes" not in caplog.text   # min_count=1: learnt
    dm = datamodule(kaggle_folder, min_count=2)
    dm.train_only = feedback[:1]
    dm.prepare_labels()
    assert "'articleType': {'Cargo Jorts': 1}" in caplog.text
    assert len(table) == 48 + 4 and added["split"].eq("train").all() and added["path"].str.startswith(str(feedback[0])).all()
    with pytest.raises(ConfigError, match=f"data.train_only: {feedback[1]} reuses ids of {feedback[0]} \\(\\[1000000001, "):
        labelled(feedback[:2])
    with pytest.raises(ConfigError, match=f"data.train_only: {feedback[2]} reuses ids of {kaggle_folder} \\(\\[1000, 1003\\]"):
        labelled(feedback[2:])


def test_corrupt_and_truncated_images_are_dropped_and_named(kaggle_folder):
    good = (kaggle_folder / "images" / "1009.jpg").read_bytes()
    (kaggle_folder / "images" / "1009.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (kaggle_folder / "images" / "1012.jpg").write_bytes(b"not a jpeg at all")  # garbage
    dm = datamodule(kaggle_folder)
    dm.setup("fit")
    assert dm.report["corrupt_images"] == 2
    assert sorted(dm.report["corrupt_image_ids"]) == [1009, 1012]
    assert not dm.table["id"].isin([1009, 1012]).any()
    images, targets = next(iter(dm.train_dataloader()))  # the rest still loads
    assert images.shape == (4, 3, 32, 32)


def test_a_complete_jpeg_with_damaged_scan_data_is_refused_not_decoded_to_garbage(tmp_path):
    """One flipped byte in a bundled photo's compressed data: the file still ends as a JPEG should, and
    some decoders (OpenCV's libjpeg-turbo build) return garbage pixels for it, which catalogue scoring
    would then tag as a product (docs/batch_scoring.md). Ours must refuse it, naming the file."""
    raw = bytearray((SAMPLE / "images" / "10002.jpg").read_bytes())
    raw[885] ^= 0xFF
    damaged = tmp_path / "10002.jpg"
    damaged.write_bytes(bytes(raw))
    assert raw.endswith(b"\xff\xd9")   # not a truncated file: its end marker is there
    with pytest.raises(ImageReadError, match=f"cannot decode image {damaged}: broken data stream"):
        load_rgb(damaged, min_side=160)
    assert find_unreadable([damaged]) == [damaged]   # so training and evaluation drop it as well


def test_na_label_masks_only_that_attribute(kaggle_folder):
    styles = pd.read_csv(kaggle_folder / "styles.csv")
    styles.loc[styles["id"] == 1000, "baseColour"] = None
    styles.to_csv(kaggle_folder / "styles.csv", index=False)
    dm = datamodule(kaggle_folder)
    dm.prepare_labels()
    row = dm.table[dm.table["id"] == 1000].iloc[0]
    assert row["y_baseColour"] == IGNORE_INDEX
    assert row["y_gender"] != IGNORE_INDEX and row["y_articleType"] != IGNORE_INDEX
    assert sum(dm.report[f"masked_labels/{s}/baseColour"] for s in ("train", "val", "test")) == 1


def test_rare_classes_ignored_or_folded_into_other(kaggle_folder):
    styles = pd.read_csv(kaggle_folder / "styles.csv")
    styles.loc[styles["id"].isin([1000, 1003]), "baseColour"] = "Mauve"  # 2 samples
    styles.to_csv(kaggle_folder / "styles.csv", index=False)

    ignored = datamodule(kaggle_folder, min_count=3)
    ignored.prepare_labels()
    assert "Mauve" not in ignored.vocabularies["baseColour"].classes
    assert (ignored.table.loc[ignored.table["id"].isin([1000, 1003]), "y_baseColour"] == IGNORE_INDEX).all()

    folded = datamodule(kaggle_folder, min_count=3, rare_classes="other")
    folded.prepare_labels()
    vocab = folded.vocabularies["baseColour"]
    assert vocab.classes[-1] == "Other" and vocab.other_index == len(vocab) - 1
    assert (folded.table.loc[folded.table["id"].isin([1000, 1003]), "y_baseColour"] == vocab.other_index).all()
    assert len(vocab) == len(ignored.vocabularies["baseColour"]) + 1


def test_a_folded_class_and_the_levels_above_rare_article_types_are_in_the_taxonomy(caplog):
    """The taxonomy held the raw labels, so with rare_classes=other no combination had Other (the heads learnt it,
    decoding together never answered it), nor a subCategory whose article types were all rare (the sample's
    Bottomwear). Folded, they are; masked (rare_classes=ignore), the classes decoding cannot reach are said."""
    for policy, unreachable in (("other", {}), ("ignore", {"subCategory": ["Bottomwear", "Innerwear", "Sandal"]})):
        data = datamodule(SAMPLE, min_count=20, rare_classes=policy)
        taxonomy = Taxonomy.from_dict(data.taxonomy, "here")
        assert taxonomy.unreachable({a: v.classes for a, v in data.vocabularies.items()}) == unreachable, policy
        if policy == "other":
            assert any(c[:2] == ("Other", "Bottomwear") for c in taxonomy.combinations)
    assert "subCategory ['Bottomwear', 'Innerwear', 'Sandal'] with every other level learnt" in caplog.text


def test_a_label_named_like_the_fold_is_a_class_unless_rare_classes_fold(kaggle_folder):
    """colour_families maps unnamed colours to Other (`unmapped`) and drops rare classes: Other, its eleventh
    family, was dropped with them, its products' colours masked."""
    spec = dict(attributes=["baseColour"], mappings={"baseColour": {"Black": "Dark", "Blue": "Dark"}},
                unmapped={"baseColour": "Other"})
    dropped = datamodule(kaggle_folder, **spec)
    dropped.prepare_labels()
    assert dropped.vocabularies["baseColour"].classes == ["Dark", "Other"]
    assert (dropped.table["y_baseColour"] != IGNORE_INDEX).all()
    folded = datamodule(kaggle_folder, rare_classes="other", **spec)
    folded.prepare_labels()
    assert folded.vocabularies["baseColour"].classes == ["Dark", "Other"] and folded.vocabularies["baseColour"].other_index == 1


def test_head_sizes_come_from_the_training_vocabulary(kaggle_folder):
    dm = datamodule(kaggle_folder, attributes=["gender", "articleType", "baseColour"])
    assert dm.num_classes == {"gender": 2, "articleType": 3, "baseColour": 4}


def test_mapping_groups_labels_before_the_vocabulary(kaggle_folder):
    dm = datamodule(
        kaggle_folder, attributes=["baseColour"],
        mappings={"baseColour": {"Black": "Dark", "Blue": "Dark"}}, unmapped={"baseColour": "Light"},
    )
    dm.prepare_labels()
    assert dm.vocabularies["baseColour"].classes == ["Dark", "Light"]


def test_label_spec_rejects_unknown_attribute_and_policy():
    with pytest.raises(ValueError, match="unknown \\['colour'\\]"):
        LabelSpec(attributes=["gender", "colour"])
    with pytest.raises(ValueError, match="rare_classes: Input should be 'ignore' or 'other' \\(got 'drop'\\)"):
        LabelSpec(rare_classes="drop")


def test_single_class_attribute_is_an_error_naming_the_attribute(kaggle_folder):
    styles = pd.read_csv(kaggle_folder / "styles.csv")
    styles["season"] = "Summer"
    styles.to_csv(kaggle_folder / "styles.csv", index=False)
    with pytest.raises(ValueError, match="attribute 'season' has 1 class"):
        datamodule(kaggle_folder).prepare_labels()


def test_vocabulary_round_trip_and_unknown_labels():
    vocab = LabelVocabulary.build("gender", ["Men", "Women", "Men", "Boys"], min_count=2, rare_classes="ignore", other_label="Other")
    assert vocab.classes == ["Men"] and vocab.counts == [2]  # Women and Boys are under min_count
    vocab = LabelVocabulary.build("gender", ["Men", "Women", "Men", "Women"], min_count=1, rare_classes="ignore", other_label="Other")
    again = LabelVocabulary.from_dict(vocab.to_dict())
    assert again.classes == ["Men", "Women"] and again.counts == [2, 2]
    assert again.encode("Women") == 1 and again.encode("Unisex") == IGNORE_INDEX and again.encode(None) == IGNORE_INDEX


def _catalogue(n: int = 400, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": np.arange(n) + 10_000,
        "articleType": rng.choice(["Tshirts", "Shirts", "Watches", "Heels"], n, p=[0.4, 0.3, 0.2, 0.1]),
        "baseColour": rng.choice(["Black", "Blue"], n),
        "gender": rng.choice(["Men", "Women"], n),
    })


def test_split_is_deterministic_stratified_and_keeps_groups_together():
    frame = _catalogue()
    spec = SplitSpec(seed=3)
    first, second = assign_splits(frame, spec), assign_splits(frame, spec)
    assert first.equals(second)
    assert not first.equals(assign_splits(frame, SplitSpec(seed=4)))
    shares = first.value_counts(normalize=True)
    assert abs(shares["train"] - 0.8) < 0.03 and abs(shares["test"] - 0.1) < 0.03
    for article, rows in frame.groupby("articleType"):  # stratified: each class in every split
        assert set(first[rows.index]) == {"train", "val", "test"}, article
    groups = near_duplicate_groups(frame, ["articleType", "baseColour", "gender"], 2)
    assert (pd.DataFrame({"g": groups, "s": first}).groupby("g")["s"].nunique() == 1).all()
    assert groups.nunique() < len(frame)  # the random catalogue does contain near-duplicate runs


def test_saved_split_is_reused(kaggle_folder, tmp_path):
    dm = datamodule(kaggle_folder)
    dm.prepare_labels()
    path = tmp_path / "split.csv"
    table = dm.split_table
    table.loc[table["id"] == 1000, "split"] = "test" if table.loc[table["id"] == 1000, "split"].item() != "test" else "val"
    table.to_csv(path, index=False)
    reused = FashionDataModule(str(kaggle_folder), LabelSpec(min_count=1), SplitSpec(path=str(path)), Augmentation(), PRE, num_workers=0)
    assert reused.split_table.equals(table)
    assert reused.fingerprint != dm.fingerprint



def test_every_ddp_process_trains_on_a_batch_when_its_share_of_train_is_smaller_than_one(kaggle_folder, monkeypatch):
    """drop_last was chosen on the whole train split (38 > 16) while each of 3 DDP processes reads a third of it
    (13): every process dropped its only, partial batch, fit stopped with "No training batches", and the test of
    the best checkpoint raised. Lightning gives each process a DistributedSampler and keeps drop_last, as here."""
    from torch.utils.data import DataLoader, DistributedSampler

    monkeypatch.setattr("fashion.data.datamodule.processes", lambda: 3)
    dm = FashionDataModule(str(kaggle_folder), LabelSpec(min_count=1), SplitSpec(), Augmentation(), PRE,
                           batch_size=16, num_workers=0)
    dm.setup("fit")
    train = dm.train_dataloader()
    assert 16 < len(dm.datasets["train"]) < 3 * 16
    for rank in range(3):
        share = DistributedSampler(dm.datasets["train"], num_replicas=3, rank=rank, shuffle=True, seed=0)
        assert len(DataLoader(train.dataset, train.batch_size, sampler=share, drop_last=train.drop_last)) == 1
    monkeypatch.setattr("fashion.data.datamodule.processes", lambda: 1)
    assert dm.train_dataloader().drop_last   # one process keeps dropping a last partial batch (BatchNorm)

def test_missing_data_root_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="data.root does not exist") as refused:
        datamodule(tmp_path / "sample").prepare_labels()
    assert "bundled sample" not in str(refused.value)   # a checkout: its data/sample was moved or deleted
    # installed from a wheel, the default data=sample names a folder no install has
    monkeypatch.setattr("fashion.data.datamodule.IS_CHECKOUT", False)
    with pytest.raises(FileNotFoundError, match=r"sample; the bundled sample comes with a checkout of the project, not "
                                                r"with the installed package: give data.root="):
        datamodule(tmp_path / "sample").prepare_labels()


def test_a_split_given_a_share_but_no_product_is_refused_and_one_given_none_is_left_out_of_mlflow(tmp_path, kaggle_folder):
    """Six products: val and test came out empty, and the run failed an epoch in (early stopping's "metric
    val/mean_acc ... not available"); with test's share 0, MLflow's dataset digest failed on the empty table."""
    from fashion.tracking.artifacts import dataset_inputs

    tiny = tmp_path / "tiny"
    write_kaggle_folder(tiny, n=6)
    with pytest.raises(InputError, match=r"leaves val and test without a product \(train 6, val 0, test 0; split.fractions"):
        datamodule(tiny).prepare_labels()
    dm = FashionDataModule(str(kaggle_folder), LabelSpec(min_count=1), SplitSpec(fractions={"train": 0.9, "val": 0.1, "test": 0.0}),
                           Augmentation(), PRE, batch_size=4, num_workers=0)
    dm.prepare_labels()
    contexts = [tag.value for entry in dataset_inputs(dm) for tag in entry.tags]
    assert contexts == ["train", "val"]


def test_a_folder_whose_products_have_no_readable_image_is_named_with_the_counts(kaggle_folder):
    """An empty images/ (a copy that has not finished, a wrong folder) was pandas' TypeError in the split."""
    photos = sorted((kaggle_folder / "images").glob("*.jpg"))
    for photo in photos[:-1]:
        photo.unlink()
    photos[-1].write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match=re.escape(
            f"no product of {kaggle_folder / 'styles.csv'} has a readable image in {kaggle_folder / 'images'} "
            f"(48 rows read: 47 without an image file, 1 unreadable)")) as refused:
        datamodule(kaggle_folder).prepare_labels()
    assert "another name" not in str(refused.value)   # an unreadable <id>.jpg is not one
    photos[-1].unlink()   # a shop's own export in another format: the layout's <id>.jpg is said, with an example
    for photo in photos[:3]:
        photo.with_suffix(".png").write_bytes(b"")
    with pytest.raises(InputError, match=re.escape(f"(48 rows read: 48 without an image file, 0 unreadable); 3 of them "
                                                   f"are there under another name (such as {photos[0].stem}.png), and "
                                                   "the layout is images/<id>.jpg: convert them to JPEG")):
        datamodule(kaggle_folder).prepare_labels()
