"""Fit the model's `Decision` from validation logits: temperatures first, then thresholds on the
calibrated confidences. Pure tensors in, plain values out (the Lightning side is in
`fashion.training.callbacks.Calibration`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from fashion.calibration.decision import METHOD, Decision
from fashion.calibration.selective import choose_threshold, reliability, selective_scores
from fashion.calibration.temperature import TemperatureFit, fit_confidence_scaling, fit_temperature, scale_confidence
from fashion.data.taxonomy import Taxonomy, decode_levels
from fashion.data.vocab import IGNORE_INDEX


def calibrate(logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
              target_precision: Mapping[str, float], taxonomy: Taxonomy | None = None,
              classes: Mapping[str, list[str]] | None = None, review_always: Collection[str] = ()
              ) -> tuple[Decision, dict[str, float]]:
    """Uncalibrated `logits` (N, C) and `targets` (N,) per attribute -> the decision and, per attribute,
    what it did on validation: `calibration/<a>/{temperature,nll_before,nll_after,val_ece_before,
    val_ece_after,threshold,val_coverage,val_accepted_precision,val_samples}` (finite values only).

    With a `taxonomy` (and the vocabularies' `classes`), the levels' thresholds are chosen on the
    confidences served by default: the decoded combination's, Platt-scaled on validation (a product of
    three heads' evidence is over-confident, and one scalar per level fixes that without reordering);
    their thresholds on the heads' own confidences are kept too, for serving with the taxonomy off.
    `review_always`: attributes that get no threshold (every tag to a person), whatever validation says."""
    fits, kept_at_one = {}, {}
    for attribute, scores in logits.items():
        fits[attribute], kept_at_one[attribute] = ece_checked(fit_temperature(scores, targets[attribute]), scores, targets[attribute])
    probs = {a: torch.softmax(scores.double() / fits[a].temperature, dim=1) for a, scores in logits.items()}
    chosen, decoded = decode_levels(probs, taxonomy, classes or {})
    levels = set(taxonomy.attributes) if taxonomy else set()
    thresholds, head_thresholds, joint_scaling, temperatures, notes, report = {}, {}, {}, {}, {}, {}
    for attribute, scores in logits.items():
        fit, precision = fits[attribute], target_precision[attribute]
        labelled = targets[attribute] != IGNORE_INDEX
        target = targets[attribute][labelled]
        before = torch.softmax(scores[labelled].double(), dim=1).max(dim=1)
        after = probs[attribute][labelled].max(dim=1)
        confidence, correct = after.values, after.indices == target
        if attribute in levels and not fit.fallback and attribute not in review_always:   # served: the decoded combination's, scaled (see Decision)
            head_thresholds[attribute] = choose_threshold(confidence, correct, precision)
            correct = chosen[attribute][labelled] == target
            joint_scaling[attribute] = list(fit_confidence_scaling(decoded[attribute][labelled], correct))
            confidence = scale_confidence(decoded[attribute][labelled], joint_scaling[attribute])
        threshold = None if fit.fallback or attribute in review_always else choose_threshold(confidence, correct, precision)
        reason = fit.fallback or kept_at_one[attribute]
        if attribute in review_always:
            notes[attribute] = "review_always: every tag goes to a person" + (f" ({reason})" if reason else "")
        elif reason:
            notes[attribute] = reason
        elif threshold is None:
            notes[attribute] = f"no confidence reached precision {precision} on validation"
        thresholds[attribute], temperatures[attribute] = threshold, fit.temperature
        selective = selective_scores(confidence, correct, threshold)
        values = {"temperature": fit.temperature, "nll_before": fit.nll_before, "nll_after": fit.nll_after,
                  "val_ece_before": reliability(before.values, before.indices == target)["ece"], "val_samples": float(fit.samples),
                  "val_ece_after": reliability(confidence, correct)["ece"], "threshold": threshold,
                  "val_coverage": selective["coverage"], "val_accepted_precision": selective["accepted_precision"]}
        report |= {f"calibration/{attribute}/{k}": float(v) for k, v in values.items()
                   if v is not None and torch.isfinite(torch.tensor(float(v)))}
    decision = Decision(thresholds, dict(target_precision), temperatures, notes, METHOD, joint_scaling, head_thresholds)
    return decision, report


def ece_checked(fit: TemperatureFit, logits: torch.Tensor, targets: torch.Tensor) -> tuple[TemperatureFit, str | None]:
    """The fit, unless it raises the validation ECE: then T = 1 (thresholds still apply) and the reason.
    The NLL and the ECE can disagree (sharpening baseColour lowered its NLL and raised its ECE, 0.028 ->
    0.040), and the ECE is how a person reads a confidence."""
    if fit.fallback or fit.temperature == 1.0:
        return fit, None
    labelled = targets != IGNORE_INDEX
    scores, target = logits[labelled].double(), targets[labelled]
    top = [torch.softmax(scores / t, dim=1).max(dim=1) for t in (1.0, fit.temperature)]
    before, after = (reliability(p.values, p.indices == target)["ece"] for p in top)
    if after <= before:
        return fit, None
    return (TemperatureFit(1.0, fit.nll_before, fit.nll_before, fit.samples),
            f"T = {fit.temperature:.2f} lowered the validation NLL but raised its ECE ({before:.3f} -> {after:.3f}): T = 1 kept")
