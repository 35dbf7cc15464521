"""Models stage: a timm backbone and per-attribute heads."""

from fashion.models.backbone import Backbone
from fashion.models.colour import ColourHistogram
from fashion.models.heads import LinearHeads, MLPHeads
from fashion.models.tagger import MultiHeadTagger

__all__ = ["Backbone", "ColourHistogram", "LinearHeads", "MLPHeads", "MultiHeadTagger"]
