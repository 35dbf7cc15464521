"""The LightningModule's own choices: parameter groups and memory layout."""

import pytest
import torch

from fashion.losses import CrossEntropy, FixedWeighting, MultiAttributeLoss, NoClassWeights
from fashion.models import Backbone, LinearHeads, MultiHeadTagger
from fashion.training import TaggerModule

NUM_CLASSES = {"gender": 2, "articleType": 4}


def module(channels_last: bool = False, freeze: str = "partial") -> TaggerModule:
    torch.manual_seed(0)
    backbone = Backbone("test_efficientnet", freeze=freeze, trainable_stages=2)
    heads = LinearHeads(backbone.num_features, NUM_CLASSES)
    loss = MultiAttributeLoss(CrossEntropy(), FixedWeighting(list(NUM_CLASSES)), NoClassWeights(),
                              {a: [1] * n for a, n in NUM_CLASSES.items()})
    return TaggerModule(MultiHeadTagger(backbone, heads), loss, optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-2),
                        backbone_lr_scale=0.1, channels_last=channels_last)


def test_channels_last_gives_the_same_logits():
    images = torch.randn(2, 3, 32, 32)
    plain, fast = module().eval(), module(channels_last=True).eval()
    assert fast.model.backbone.model.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    a, b = plain(images), fast(images)
    for attribute in NUM_CLASSES:
        assert torch.allclose(a[attribute], b[attribute], atol=1e-5)


def test_backbone_learns_slower_and_frozen_parameters_are_left_out():
    m = module(freeze="partial")
    optimizer = m.configure_optimizers()["optimizer"]
    heads, backbone = optimizer.param_groups
    assert (heads["name"], heads["lr"]) == ("heads", 1e-2)
    assert backbone["name"] == "backbone" and backbone["lr"] == 1e-3
    trainable = [p for p in m.model.backbone.parameters() if p.requires_grad]
    assert 0 < len(backbone["params"]) == len(trainable) < len(list(m.model.backbone.parameters()))


def test_frozen_backbone_keeps_batchnorm_statistics_in_training():
    m = module(freeze="frozen")
    m.train()
    norms = [x for x in m.model.backbone.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert norms and not any(n.training for n in norms)
    before = norms[0].running_mean.clone()
    m(torch.randn(4, 3, 32, 32))
    assert torch.equal(before, norms[0].running_mean)
    assert len(m.configure_optimizers()["optimizer"].param_groups) == 1  # heads only


def test_top5_is_not_top1_when_the_first_batch_is_all_correct():
    """torchmetrics' compute groups once merged top-5 into top-1 after an all-correct first batch."""
    from fashion.metrics import AttributeMetrics

    metrics = AttributeMetrics({"articleType": 20}, stage="test")
    targets = torch.arange(20)
    metrics.update({"articleType": torch.nn.functional.one_hot(targets, 20).float()}, {"articleType": targets})
    logits = torch.zeros(20, 20)
    logits[torch.arange(20), (targets + 1) % 20] = 2.0   # top-1 wrong ...
    logits[torch.arange(20), targets] = 1.0              # ... the truth second: top-5 right
    metrics.update({"articleType": logits}, {"articleType": targets})
    values = metrics.compute()
    assert values["test/articleType/acc"] == pytest.approx(0.5)
    assert values["test/articleType/top5"] == pytest.approx(1.0)


def test_one_scored_row_gets_its_confidence_scores():
    """torchmetrics squeezes a one-element result to 0-d: the reliability bins raised on a set of one
    product (fashion-eval on a folder of one photo crashed with a traceback)."""
    from fashion.metrics import AttributeMetrics

    metrics = AttributeMetrics({"articleType": 3}, stage="eval", confidence=True)
    metrics.update({"articleType": torch.tensor([[0.0, 2.0, 0.0]])}, {"articleType": torch.tensor([1])})
    values = metrics.compute(thresholds={"articleType": 0.5})
    assert values["eval/articleType/acc"] == 1.0 and values["eval/articleType/coverage"] == 1.0
    assert values["eval/articleType/ece"] == pytest.approx(1 - torch.softmax(torch.tensor([0.0, 2.0, 0.0]), 0)[1].item())
    assert [t.shape for t in metrics.confidence_records()["articleType"]] == [(1,)] * 3


def test_confused_pairs_lists_every_mix_up_once_most_frequent_first():
    from fashion.metrics import classification_report, confused_pairs

    classes = ["Casual Shoes", "Formal Shoes", "Heels"]
    confusion = torch.tensor([[50, 6, 0],     # rows: true, columns: predicted
                              [9, 20, 1],
                              [0, 0, 0]])     # a class absent from the set
    pairs = confused_pairs(confusion, classes)
    assert pairs[["true", "predicted", "count"]].values.tolist() == [
        ["Formal Shoes", "Casual Shoes", 9], ["Casual Shoes", "Formal Shoes", 6], ["Formal Shoes", "Heels", 1]]
    assert pairs["share_of_errors"].tolist() == pytest.approx([9 / 16, 6 / 16, 1 / 16])
    assert pairs["share_of_true"].tolist() == pytest.approx([9 / 30, 6 / 56, 1 / 30])
    report = classification_report(confusion, classes)   # the same errors the per-class report counts
    missed = (report["support"] * (1 - report["recall"])).loc[classes].round().astype(int)
    assert pairs.groupby("true")["count"].sum().reindex(classes, fill_value=0).tolist() == missed.tolist()
    assert confused_pairs(torch.eye(3, dtype=torch.long) * 4, classes).empty   # no mistakes, no rows


def test_the_model_summary_counts_the_flops_of_one_photo():
    """Lightning's summary printed `0 Total Flops` for every run: it needs an input to run the network on."""
    from lightning.pytorch.utilities.model_summary import ModelSummary

    tagger = module()
    side = tagger.model.backbone.preprocessing.image_size
    assert tuple(tagger.example_input_array.shape) == (1, 3, side, side)
    summary = ModelSummary(tagger, max_depth=1)
    assert summary.total_flops > 0 and summary.in_sizes[0] == [1, 3, side, side]
    assert tagger.training   # the summary's forward leaves the module as it found it
