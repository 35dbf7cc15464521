"""Calibration stage: what turns scores into decisions a catalogue team can act on.

After training, on the validation split: one temperature per attribute (`temperature`), then a
confidence threshold per attribute for a target precision (`selective`), stored together as the
model's `Decision` (`decision`), which every runtime applies the same way.
"""

from fashion.calibration.calibrate import calibrate
from fashion.calibration.decision import Decision
from fashion.calibration.selective import choose_threshold, reliability, selective_scores
from fashion.calibration.temperature import TemperatureFit, fit_temperature

__all__ = ["Decision", "TemperatureFit", "calibrate", "choose_threshold", "fit_temperature", "reliability", "selective_scores"]
