"""Models stage: a timm backbone and per-attribute heads."""

from fashion import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "fashion.models.backbone": ["Backbone"],
    "fashion.models.colour": ["ColourHistogram"],
    "fashion.models.heads": ["LinearHeads", "MLPHeads"],
    "fashion.models.tagger": ["MultiHeadTagger"],
})
