"""Data stage: styles.csv -> label vocabularies -> split -> dataset -> datamodule."""

from fashion.data.datamodule import FashionDataModule
from fashion.data.eval_sets import EvalSource
from fashion.data.split import SplitSpec
from fashion.data.transforms import Augmentation, Preprocessing
from fashion.data.vocab import IGNORE_INDEX, LabelSpec, LabelVocabulary

__all__ = ["FashionDataModule", "EvalSource", "SplitSpec", "Augmentation", "Preprocessing", "LabelSpec", "LabelVocabulary", "IGNORE_INDEX"]
