"""From a Kaggle-layout folder (styles.csv + images/<id>.jpg) to train/val/test dataloaders.

Reads in one direction: styles.csv -> mapped labels -> rows with a readable image -> split ->
vocabularies (train split only) -> encoded targets -> datasets. Everything dropped on the way is
counted in `report` so the run can log it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler

from fashion.config import IS_CHECKOUT, ConfigError, InputError
from fashion.data.cached import CachedInputs, FeatureDataset
from fashion.data.dataset import ProductImages
from fashion.data.eval_sets import EvalSource
from fashion.data.images import split_usable, under_other_names
from fashion.data.sampler import EpochRandomSampler, each_product_once, processes
from fashion.data.split import SPLITS, SplitSpec, assign_splits, load_split
from fashion.data.styles import EXAMPLES_IN_REPORT, read_styles
from fashion.data.taxonomy import Taxonomy
from fashion.data.transforms import Augmentation, Preprocessing
from fashion.data.vocab import IGNORE_INDEX, LabelSpec, LabelVocabulary, build_vocabularies
from fashion.validation import Aspect, AtLeastOne, AtLeastZero

log = logging.getLogger(__name__)


class FashionDataModule(L.LightningDataModule):
    """Labels, split and loaders for one dataset folder; `preprocessing` comes from the backbone."""

    def __init__(
        self,
        root: str,
        labels: LabelSpec,
        split: SplitSpec,
        augmentation: Augmentation,
        preprocessing: Preprocessing,
        styles_file: str = "styles.csv",
        images_dir: str = "images",
        batch_size: AtLeastOne = 32,
        eval_batch_size: AtLeastOne | None = None,
        num_workers: AtLeastZero = 2,
        persistent_workers: bool = False,
        pin_memory: bool = False,
        check_images: bool = True,
        seed: int = 0,
        true_aspect: Aspect | None = None,
        out_of_time_years: Sequence[int] = (),
        eval_sets: Mapping[str, EvalSource] | None = None,
        train_only: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.labels, self.split_spec, self.augmentation = labels, split, augmentation
        self.preprocessing = preprocessing
        self.styles_path = self.root / styles_file
        self.images_path = self.root / images_dir
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory, self.check_images = num_workers, pin_memory, check_images
        # Fresh workers each epoch take their seeds from the (per-epoch) global seed: reproducible
        # after a resume. Persistent workers save their start-up time but continue their own RNG.
        self.persistent_workers = persistent_workers
        self.seed = seed
        self.true_aspect = true_aspect   # the folder's photos are stored squashed: restore this width/height
        self.out_of_time_years = sorted(int(y) for y in out_of_time_years)
        self.eval_sources = dict(eval_sets or {})
        # Kaggle-layout folders whose rows only ever train (people's corrections, fashion-data export-feedback):
        # added after the split, so none of them is ever in val, test or an evaluation set.
        self.train_only = [Path(folder) for folder in train_only]
        if self.train_only and true_aspect is not None:
            raise ConfigError("data.train_only holds photos at their true aspect; it cannot be mixed with a squashed "
                             f"folder (data.true_aspect={true_aspect}): train on the catalogue instead")
        self.table: pd.DataFrame | None = None
        self.train_only_rows = 0
        self.eval_tables: dict[str, pd.DataFrame] = {}
        self.vocabularies: dict[str, LabelVocabulary] = {}
        self.report: dict = {}
        self.datasets: dict[str, ProductImages | FeatureDataset] = {}

    # --- labels, split, vocabularies -------------------------------------------------------------
    def prepare_labels(self) -> None:
        """Build the labelled table, the split and the vocabularies once (idempotent)."""
        if self.table is not None:
            return
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root does not exist: {self.root}{outside_a_checkout(self.root)}")
        if not self.images_path.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.images_path} (expected <root>/images/<id>.jpg)")
        attributes = self.labels.attributes
        split_columns = [self.split_spec.stratify_on, *self.split_spec.group_by]
        year = ["year"] if self.out_of_time_years else []
        frame, styles_report = read_styles(self.styles_path, list(dict.fromkeys([*attributes, *split_columns, *year])))
        frame["path"] = [str(self.images_path / f"{i}.jpg") for i in frame["id"]]
        ids = frame["id"].tolist()
        frame, image_report = self._drop_unusable_images(frame)
        if frame.empty:   # before the split, which has nothing to split
            raise InputError(f"no product of {self.styles_path} has a readable image in {self.images_path} "
                             f"({styles_report.rows_read} rows read: {image_report['missing_images']} without an image "
                             f"file, {image_report['corrupt_images']} unreadable){under_other_names(self.images_path, ids)}")
        frame, out_of_time = self._hold_out_years(frame)
        if frame.empty:
            raise InputError(f"every product of {self.styles_path} is of a held-out year (data.out_of_time_years="
                             f"{list(self.out_of_time_years)}): nothing is left to train on")
        frame["split"] = self._splits_for(frame)  # on raw labels, so a mapping never changes the split
        frame = frame[frame["split"].notna()].reset_index(drop=True)
        frame = self._with_train_only(frame, attributes)
        self._refuse_an_empty_split(frame)
        frame = self._map_labels(frame)
        if frame.empty:
            raise InputError(f"no usable rows in {self.styles_path}: every row was malformed, unlabelled or had no image")
        self.vocabularies = build_vocabularies(frame[frame["split"] == "train"], self.labels)
        self._say_corrections_left_out(frame)
        self.table = self._encode(frame)
        self.eval_tables = self._eval_tables(out_of_time)
        self.report = {**styles_report.__dict__, **image_report, **self._label_report(self.table),
                       **self._eval_report()}
        log.info("%s", styles_report.summary())
        log.info("images: %s", {k: v for k, v in image_report.items() if not k.endswith("examples")})

    def _refuse_an_empty_split(self, frame: pd.DataFrame) -> None:
        """A split given a share but no product (a folder of a few products): the run failed an epoch in,
        at early stopping ("metric val/mean_acc ... not available") or at MLflow's dataset digest."""
        sizes = {split: int((frame["split"] == split).sum()) for split in SPLITS}
        empty = [split for split in SPLITS if sizes[split] == 0 and self.split_spec.fractions[split] > 0]
        if empty:
            raise InputError(f"the split of {self.styles_path} leaves {' and '.join(empty)} without a product "
                             f"({', '.join(f'{k} {v}' for k, v in sizes.items())}; split.fractions "
                             f"{self.split_spec.fractions}): a folder this small needs more products, or a split.path "
                             "file that gives each split some")

    def _with_train_only(self, frame: pd.DataFrame, attributes: list[str]) -> pd.DataFrame:
        """Adds each train_only folder's rows; an id already taken, by the data or by an earlier folder (two
        exports of one queue, or of two queues), is refused: one correction would train twice, or two
        photos would be one product."""
        taken, parts = {self.root: set(frame["id"])}, [frame]
        for folder in self.train_only:
            parts.append(self._train_only_rows(folder, taken, attributes))
            taken[folder] = set(parts[-1]["id"])
        self.train_only_rows = sum(len(part) for part in parts[1:])
        return pd.concat(parts, ignore_index=True)

    def _say_corrections_left_out(self, frame: pd.DataFrame) -> None:
        """A class a person added in review (a new articleType, on purpose) is learnt only from `labels.min_count`
        training products on: until then the retrained model still cannot answer it, and the person corrects on."""
        corrections = frame.iloc[len(frame) - self.train_only_rows:]   # _with_train_only adds them last
        left = {a: counts for a in self.attributes if len(counts := corrections.loc[
            ~corrections[a].isin(self.vocabularies[a].classes), a].dropna().value_counts().to_dict())}
        if left:
            log.warning("data.train_only: labels the corrections give that this run does not learn as classes, having "
                        "fewer training products than labels.min_count (photos each): %s", left)

    def _train_only_rows(self, folder: Path, taken: dict[Path, set[int]], attributes: list[str]) -> pd.DataFrame:
        if not (folder / "styles.csv").is_file():
            raise FileNotFoundError(f"data.train_only: {folder / 'styles.csv'} not found (write it with fashion-data export-feedback)")
        rows, _ = read_styles(folder / "styles.csv", attributes)
        for source, ids in taken.items():
            clash = sorted(set(rows["id"]) & ids)
            if clash:
                raise ConfigError(f"data.train_only: {folder} reuses ids of {source} ({clash[:5]}...): a product would "
                                  "be two products, or a correction train twice. Each export holds every correction "
                                  "of its queue so far, so train on a queue's newest export only; two queues' exports "
                                  "need their own numbers (fashion-data export-feedback queue=2)")
        rows["path"] = [str(folder / "images" / f"{i}.jpg") for i in rows["id"]]
        rows, report = self._drop_unusable_images(rows)
        log.info("train_only %s: %d rows (%s)", folder, len(rows), report)
        return rows.assign(split="train")

    def _map_labels(self, frame: pd.DataFrame) -> pd.DataFrame:
        for attribute in self.labels.attributes:
            frame[attribute] = self.labels.map_values(attribute, frame[attribute])
        return frame

    def _encode(self, frame: pd.DataFrame) -> pd.DataFrame:
        """y_<attribute> columns with the training vocabularies (IGNORE_INDEX for an unseen or missing label)."""
        for attribute, vocab in self.vocabularies.items():
            frame[f"y_{attribute}"] = [vocab.encode(v) for v in frame[attribute]]
        return frame

    def _hold_out_years(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Rows of `out_of_time_years` leave train/val/test: they are the out-of-time evaluation set."""
        if not self.out_of_time_years:
            return frame, frame.iloc[:0]
        year = pd.to_numeric(frame["year"], errors="coerce")
        held = year.isin(self.out_of_time_years)
        if not held.any():
            raise ConfigError(f"data.out_of_time_years={self.out_of_time_years}: no product of {self.styles_path} is from "
                             f"those years (it has {sorted(year.dropna().astype(int).unique().tolist())})")
        log.info("out of time: %d products of years %s held out of train/val/test", int(held.sum()), self.out_of_time_years)
        return frame[~held].reset_index(drop=True), frame[held].reset_index(drop=True)

    def _eval_tables(self, out_of_time: pd.DataFrame) -> dict[str, pd.DataFrame]:
        tables = {"out_of_time": self._encode(self._map_labels(out_of_time.copy()))} if len(out_of_time) else {}
        trained = set(self.table.loc[self.table["split"].isin(["train", "val"]), "id"])
        for name, source in self.eval_sources.items():
            if name in tables:
                raise ConfigError(f"data.eval_sets.{name}: the name is taken by the out-of-time set")
            tables[name] = self._encode(self._map_labels(self._source_table(name, source, trained)))
        return tables

    def _source_table(self, name: str, source: EvalSource, trained: set[int]) -> pd.DataFrame:
        try:
            frame, _ = source.table(self.labels.attributes, trained if source.unseen_only else (), self.check_images)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"data.eval_sets.{name}: {err}") from None
        return frame

    def _eval_report(self) -> dict:
        report = {}
        for name, table in self.eval_tables.items():
            report[f"eval_size/{name}"] = len(table)
            for attribute in self.attributes:
                labelled = table.loc[table[f"y_{attribute}"] != IGNORE_INDEX, f"y_{attribute}"]
                report[f"masked_labels/{name}/{attribute}"] = int(len(table) - len(labelled))
                # The floor a model must beat there: always answering the set's most common class.
                report[f"majority_rate/{name}/{attribute}"] = float(labelled.value_counts(normalize=True).max()) if len(labelled) else float("nan")
        return report

    def _drop_unusable_images(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
        frame, missing_ids, corrupt_ids = split_usable(frame, self.check_images)
        if missing_ids:
            log.warning("%d rows have no image file in %s, dropped (e.g. ids %s)", len(missing_ids), self.images_path, missing_ids[:5])
        if corrupt_ids:
            log.warning("%d images are corrupt or truncated, dropped: ids %s", len(corrupt_ids), corrupt_ids[:EXAMPLES_IN_REPORT])
        report = {
            "missing_images": len(missing_ids),
            "missing_image_examples": missing_ids[:EXAMPLES_IN_REPORT],
            "corrupt_images": len(corrupt_ids),
            "corrupt_image_ids": corrupt_ids,
        }
        return frame, report

    def _splits_for(self, frame: pd.DataFrame) -> pd.Series:
        if self.split_spec.path:
            try:
                saved = load_split(self.split_spec.path)
            except ValueError as err:   # the key that named the file, in one line (cli.one_line_errors)
                raise ConfigError(f"split.path: {err}") from err
            splits = frame["id"].map(saved)
            if splits.isna().any():
                log.warning("%d rows are not in split file %s and are left out", int(splits.isna().sum()), self.split_spec.path)
            return splits
        return assign_splits(frame, self.split_spec)

    def _label_report(self, frame: pd.DataFrame) -> dict:
        """Per split and attribute: samples whose label is masked (missing, rare or unseen in train)."""
        masked = {
            f"masked_labels/{split}/{a}": int((frame.loc[frame["split"] == split, f"y_{a}"] == IGNORE_INDEX).sum())
            for split in SPLITS for a in self.labels.attributes
        }
        sizes = {f"split_size/{s}": int((frame["split"] == s).sum()) for s in SPLITS}
        return {**sizes, **masked}

    # --- what the rest of the run needs ------------------------------------------------------------
    @property
    def attributes(self) -> list[str]:
        return list(self.labels.attributes)

    @property
    def num_classes(self) -> dict[str, int]:
        self.prepare_labels()
        return {a: len(v) for a, v in self.vocabularies.items()}

    @property
    def class_counts(self) -> dict[str, list[int]]:
        self.prepare_labels()
        return {a: list(v.counts) for a, v in self.vocabularies.items()}

    @property
    def split_table(self) -> pd.DataFrame:
        self.prepare_labels()
        return self.table[["id", "split"]].sort_values("id").reset_index(drop=True)

    @property
    def taxonomy(self) -> dict[str, Any] | None:
        """The articleType / subCategory / masterCategory combinations of the training split, so inference
        can decode the levels together (`fashion.data.taxonomy`); a plain dict, for checkpoint hparams.

        Combinations of the classes the heads learn: a rare label folded into `Other` (`rare_classes=other`) is
        `Other` there too. Built from the raw labels, no combination held `Other`, so decoding never answered it,
        nor a subCategory whose every article type was rare."""
        self.prepare_labels()
        train = self.table[self.table["split"] == "train"]
        learnt = pd.DataFrame({a: [v.classes[i] if i != IGNORE_INDEX else None for i in train[f"y_{a}"]]
                               for a, v in self.vocabularies.items()})
        taxonomy = Taxonomy.from_table(learnt, self.attributes)
        if taxonomy is None:
            return None
        for attribute, classes in taxonomy.unreachable({a: v.classes for a, v in self.vocabularies.items()}).items():
            log.warning("taxonomy: no training product gives %s %s with every other level learnt, so answers decoded "
                        "together (as served) never say it; a lower labels.min_count, or labels.rare_classes=other, "
                        "keeps its products' article types", attribute, classes)
        return taxonomy.to_dict()

    @property
    def fingerprint(self) -> str:
        """sha256 of ids, split and (mapped) labels: equal fingerprints mean comparable runs."""
        self.prepare_labels()
        columns = ["id", "split", *self.attributes]
        text = self.table[columns].sort_values("id").to_csv(index=False)
        return hashlib.sha256(text.encode()).hexdigest()

    # --- Lightning hooks -----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.prepare_labels()
        if self.datasets:
            return
        eval_transform = self.preprocessing.eval_transform()
        for split in SPLITS:
            rows = self.table[self.table["split"] == split]
            transform = self.augmentation.train_transform(self.preprocessing) if split == "train" else eval_transform
            targets = {a: rows[f"y_{a}"].to_numpy() for a in self.attributes}
            self.datasets[split] = ProductImages(rows["path"].tolist(), targets, transform, self.preprocessing.decode_side,
                                                 self.true_aspect)

    def use_cached_inputs(self, inputs: CachedInputs, views: Sequence[CachedInputs] = ()) -> None:
        """Serve precomputed model inputs (FeatureCache, one row per table row) instead of images.

        `views`: the same for each augmentation view; training draws among them, evaluation never.
        """
        self.prepare_labels()
        if any(len(t) != len(self.table) for version in (inputs, *views) for t in version.values()):
            raise ValueError(f"cached inputs of {[len(t) for t in inputs.values()]} rows for a table of {len(self.table)} rows")
        for split in SPLITS:
            mask = torch.from_numpy((self.table["split"] == split).to_numpy().copy())
            rows = self.table[mask.numpy()]
            targets = {a: rows[f"y_{a}"].to_numpy() for a in self.attributes}
            split_views = [{n: t[mask] for n, t in view.items()} for view in views] if split == "train" else []
            self.datasets[split] = FeatureDataset({n: t[mask] for n, t in inputs.items()}, targets, split_views)

    def _loader(self, split: str, sampler: Sampler | None = None) -> DataLoader:
        dataset = self.datasets[split]
        training = isinstance(sampler, EpochRandomSampler)
        batch_size = self.batch_size if training else self.eval_batch_size
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            generator=sampler.loader_generator if training else None,
            # a batch of 1 breaks BatchNorm; a share smaller than a batch is kept whole, or a DDP process
            # given a small split's share trained on no batch at all
            drop_last=training and math.ceil(len(dataset) / processes()) > batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        sampler = EpochRandomSampler(self.datasets["train"], self.seed, loader_generator=torch.Generator())
        sampler.set_epoch(self.trainer.current_epoch if self.trainer else 0)  # a resumed run starts mid-way
        return self._loader("train", sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", each_product_once(self.datasets["val"]))

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", each_product_once(self.datasets["test"]))

    def whole_split(self, split: str) -> DataLoader:
        """Every product of an evaluation split, in order, in whichever process asks: for work one process
        does for all (calibration, on global rank zero), where val_dataloader gives each DDP process a share."""
        return self._loader(split)

    def eval_dataloaders(self) -> dict[str, DataLoader]:
        """One loader of images per evaluation set (never cached inputs: scored as a user's photos are).
        Built in the calling process: under torchrun or SLURM each process scores its share once; under
        ddp_spawn (built before its processes start) Lightning's padding sampler still applies."""
        self.prepare_labels()
        transform = self.preprocessing.eval_transform()
        loaders = {}
        for name, table in self.eval_tables.items():
            aspect = table["true_aspect"].iloc[0] if "true_aspect" in table else self.true_aspect
            targets = {a: table[f"y_{a}"].to_numpy() for a in self.attributes}
            dataset = ProductImages(table["path"].tolist(), targets, transform, self.preprocessing.decode_side,
                                    None if pd.isna(aspect) else float(aspect))
            loaders[name] = DataLoader(dataset, batch_size=self.eval_batch_size, sampler=each_product_once(dataset),
                                       num_workers=self.num_workers, pin_memory=self.pin_memory)
        return loaders


def outside_a_checkout(root: Path) -> str:
    """The default `data=sample` names the sample bundled in a checkout (data/sample); a package installed from a
    wheel has none, and "data.root does not exist: <working directory>/data/sample" reads as a mystery there."""
    return ("; the bundled sample comes with a checkout of the project, not with the installed package: give "
            "data.root=<folder with styles.csv and images/>") if not IS_CHECKOUT and root.name == "sample" else ""
