"""Data stage: styles.csv -> label vocabularies -> split -> dataset -> datamodule."""

from fashion import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "fashion.data.datamodule": ["FashionDataModule"],
    "fashion.data.eval_sets": ["EvalSource"],
    "fashion.data.split": ["SplitSpec"],
    "fashion.data.transforms": ["Augmentation", "Preprocessing"],
    "fashion.data.vocab": ["IGNORE_INDEX", "LabelSpec", "LabelVocabulary"],
})
