"""Masked criteria, class weights and the three loss weighting schemes."""

import pytest
import torch

from fashion.data.vocab import IGNORE_INDEX
from fashion.losses import (
    CrossEntropy,
    DWAWeighting,
    EffectiveNumber,
    FixedWeighting,
    FocalLoss,
    InverseFrequency,
    MultiAttributeLoss,
    NoClassWeights,
    UncertaintyWeighting,
)

ATTRS = ["gender", "articleType"]


@pytest.mark.parametrize("criterion", [CrossEntropy(), CrossEntropy(label_smoothing=0.1), FocalLoss(gamma=2.0)])
def test_missing_labels_are_masked(criterion):
    logits = torch.randn(4, 3, requires_grad=True)
    target = torch.tensor([0, IGNORE_INDEX, 2, IGNORE_INDEX])
    masked = criterion(logits, target)
    only_valid = criterion(logits[[0, 2]], target[[0, 2]])
    assert torch.allclose(masked, only_valid)
    empty = criterion(logits, torch.full((4,), IGNORE_INDEX))
    assert empty.item() == 0.0
    empty.backward()  # still part of the graph
    assert logits.grad is not None


def test_focal_loss_down_weights_easy_examples():
    target = torch.tensor([0])
    easy, hard = torch.tensor([[5.0, 0.0]]), torch.tensor([[0.2, 0.0]])
    ratio_focal = FocalLoss(gamma=2.0)(easy, target) / FocalLoss(gamma=2.0)(hard, target)
    ratio_ce = CrossEntropy()(easy, target) / CrossEntropy()(hard, target)
    assert ratio_focal < ratio_ce


def test_class_weights_favour_rare_classes_and_average_one():
    counts = [100, 10, 1]
    for scheme in (InverseFrequency(), InverseFrequency(power=0.5), EffectiveNumber(beta=0.99)):
        w = scheme(counts)
        assert w[0] < w[1] < w[2]
        assert torch.isclose(w.mean(), torch.tensor(1.0))
    assert NoClassWeights()(counts) is None


def test_uncertainty_log_variances_are_parameters_that_receive_gradients():
    weighting = UncertaintyWeighting(ATTRS, clamp=4.0)
    assert any(p is weighting.log_vars for p in weighting.parameters())
    losses = {"gender": torch.tensor(0.5), "articleType": torch.tensor(2.0)}
    weighting(losses).backward()
    grad = weighting.log_vars.grad
    assert grad is not None and torch.all(grad != 0)
    # d/ds (0.5 e^-s L + 0.5 s) at s=0 is 0.5 (1 - L): larger loss -> push s up (down-weight)
    assert torch.allclose(grad, torch.tensor([0.25, -0.5]))


def test_uncertainty_log_variances_are_clamped():
    weighting = UncertaintyWeighting(ATTRS, clamp=1.0)
    with torch.no_grad():
        weighting.log_vars.fill_(10.0)
    assert weighting.weights()["gender"] == pytest.approx(0.5 * torch.exp(torch.tensor(-1.0)).item())


def test_dwa_weights_follow_the_loss_ratio():
    weighting = DWAWeighting(ATTRS, temperature=2.0)
    weighting.end_epoch({"gender": 1.0, "articleType": 1.0})
    assert weighting.weights() == {"gender": 1.0, "articleType": 1.0}  # equal until two epochs are seen
    weighting.end_epoch({"gender": 0.5, "articleType": 1.0})  # gender improves fast, articleType stalls
    w = weighting.weights()
    assert w["articleType"] > 1.0 > w["gender"]
    assert sum(w.values()) == pytest.approx(len(ATTRS))
    state = weighting.get_extra_state()
    restored = DWAWeighting(ATTRS)
    restored.set_extra_state(state)
    assert restored.weights() == w


def test_fixed_weighting_rejects_unknown_attribute():
    assert FixedWeighting(ATTRS, {"gender": 2.0}).weights() == {"gender": 2.0, "articleType": 1.0}
    with pytest.raises(ValueError, match="colour"):
        FixedWeighting(ATTRS, {"colour": 2.0})


def test_multi_attribute_loss_combines_weighted_parts():
    loss = MultiAttributeLoss(CrossEntropy(), FixedWeighting(ATTRS, {"gender": 2.0}), InverseFrequency(),
                              {"gender": [5, 5], "articleType": [8, 1, 1]})
    logits = {"gender": torch.randn(3, 2), "articleType": torch.randn(3, 3)}
    targets = {"gender": torch.tensor([0, 1, IGNORE_INDEX]), "articleType": torch.tensor([0, 2, 1])}
    total, parts = loss(logits, targets)
    assert torch.allclose(total, 2.0 * parts["gender"] + parts["articleType"])
