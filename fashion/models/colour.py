"""A colour histogram of the product (not the white studio background), as extra head input.

ImageNet features are trained to be fairly colour-invariant, and baseColour is the attribute they
serve worst. A joint RGB histogram of the foreground pixels is parameter-free, costs next to
nothing, and gives the heads the colour information directly; it is concatenated to the backbone
features (`extra_features` in the config). Built from tensor ops only, so it exports to ONNX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fashion.data.transforms import Preprocessing
from fashion.validation import AtLeastTwo, ImageSide

MIN_FOREGROUND = 0.02  # below this share of non-background pixels, histogram the whole image


class ColourHistogram(nn.Module):
    """sqrt-normalised joint RGB histogram (`bins`^3 values) of the pixels that are not background.

    Inputs are the model's normalised images; `preprocessing` undoes the normalisation. Pixels with
    every channel above `background` (in 0..1) count as studio background. The sqrt histogram has
    unit L2 norm, so each of its 512 values is ~20x smaller than a pooled backbone feature; `scale`
    (default sqrt(bins^3): unit RMS) puts it on the backbone's scale, so the heads' weight decay and
    initialisation do not mute it.
    """

    def __init__(self, preprocessing: Preprocessing, bins: AtLeastTwo = 8, size: ImageSide = 64, background: float = 0.92,
                 scale: float | None = None) -> None:
        super().__init__()
        self.bins, self.size, self.background = bins, size, background
        self.num_features = bins**3
        self.scale = float(scale) if scale is not None else float(self.num_features) ** 0.5
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("place", torch.tensor([bins * bins, bins, 1]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pool", adaptive_pool_matrix(preprocessing.image_size, size), persistent=False)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, size={self.size}, background={self.background}, scale={self.scale:g}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Always float32: under bf16/fp16 autocast the pooling matmul would round colours into the
        # wrong bins, and bf16 cannot even hold the bin index 511 (it becomes 512: out of range).
        with torch.autocast(images.device.type, enabled=False):
            return self._histogram(images.float())

    def _histogram(self, images: torch.Tensor) -> torch.Tensor:
        rgb = (images * self.std + self.mean).clamp(0, 1)
        if rgb.shape[-1] == rgb.shape[-2] == self.pool.shape[1]:
            rgb = self.pool @ rgb @ self.pool.T    # = adaptive_avg_pool2d, in ops every ONNX runtime has
        else:
            rgb = F.adaptive_avg_pool2d(rgb, self.size)
        foreground = (rgb <= self.background).any(dim=1).flatten(1).float()              # (N, size*size)
        enough = foreground.mean(dim=1, keepdim=True) >= MIN_FOREGROUND
        weights = torch.where(enough, foreground, torch.ones_like(foreground))
        index = ((rgb * self.bins).floor().clamp(max=self.bins - 1).long() * self.place).sum(dim=1).flatten(1)
        histogram = torch.zeros(images.shape[0], self.num_features, device=images.device).scatter_add(1, index, weights)
        return self.scale * (histogram / histogram.sum(dim=1, keepdim=True).clamp(min=1.0)).sqrt()


def adaptive_pool_matrix(length: int, size: int) -> torch.Tensor:
    """(size, length) averaging matrix with adaptive_avg_pool's bins: row i averages
    [floor(i*length/size), ceil((i+1)*length/size))."""
    matrix = torch.zeros(size, length)
    for i in range(size):
        start, end = (i * length) // size, -(-((i + 1) * length) // size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix
