"""Losses stage: masked per-attribute criteria, class weights and multi-task weighting."""

from fashion.losses.class_weights import EffectiveNumber, InverseFrequency, NoClassWeights
from fashion.losses.criteria import CrossEntropy, FocalLoss
from fashion.losses.multi_attribute import MultiAttributeLoss
from fashion.losses.weighting import DWAWeighting, FixedWeighting, LossWeighting, UncertaintyWeighting

__all__ = [
    "CrossEntropy", "FocalLoss", "NoClassWeights", "InverseFrequency", "EffectiveNumber",
    "MultiAttributeLoss", "LossWeighting", "FixedWeighting", "UncertaintyWeighting", "DWAWeighting",
]
