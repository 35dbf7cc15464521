"""Fit the model's `Decision` from validation logits: temperatures first, then thresholds on the
calibrated confidences. Pure tensors in, plain values out (the Lightning side is in
`fashion.training.callbacks.Calibration`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fashion.calibration.decision import METHOD, Decision
from fashion.calibration.selective import choose_threshold, reliability, selective_scores
from fashion.calibration.temperature import fit_temperature
from fashion.data.vocab import IGNORE_INDEX


def calibrate(logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
              target_precision: Mapping[str, float]) -> tuple[Decision, dict[str, float]]:
    """Uncalibrated `logits` (N, C) and `targets` (N,) per attribute -> the decision and, per attribute,
    what it did on validation: `calibration/<a>/{temperature,nll_before,nll_after,val_ece_before,
    val_ece_after,threshold,val_coverage,val_accepted_precision,val_samples}` (finite values only)."""
    thresholds, temperatures, notes, report = {}, {}, {}, {}
    for attribute, scores in logits.items():
        fit = fit_temperature(scores, targets[attribute])
        labelled = targets[attribute] != IGNORE_INDEX
        before = torch.softmax(scores[labelled].double(), dim=1).max(dim=1)
        after = torch.softmax(scores[labelled].double() / fit.temperature, dim=1).max(dim=1)
        correct = after.indices == targets[attribute][labelled]
        threshold = None if fit.fallback else choose_threshold(after.values, correct, target_precision[attribute])
        if fit.fallback:
            notes[attribute] = fit.fallback
        elif threshold is None:
            notes[attribute] = f"no confidence reached precision {target_precision[attribute]} on validation"
        thresholds[attribute], temperatures[attribute] = threshold, fit.temperature
        selective = selective_scores(after.values, correct, threshold)
        values = {"temperature": fit.temperature, "nll_before": fit.nll_before, "nll_after": fit.nll_after,
                  "val_ece_before": reliability(before.values, correct)["ece"], "val_samples": float(fit.samples),
                  "val_ece_after": reliability(after.values, correct)["ece"], "threshold": threshold,
                  "val_coverage": selective["coverage"], "val_accepted_precision": selective["accepted_precision"]}
        report |= {f"calibration/{attribute}/{k}": float(v) for k, v in values.items()
                   if v is not None and torch.isfinite(torch.tensor(float(v)))}
    decision = Decision(thresholds, dict(target_precision), temperatures, notes, METHOD)
    return decision, report
