"""Learning-rate schedules, stepped per optimizer step (the `scheduler` config group), as factors of
torch's `LambdaLR`.

Why not timm's `CosineLRScheduler` or torch's `CosineAnnealingLR`: both decay every parameter group
to one absolute floor (`lr_min`, `eta_min`), while the backbone group trains at
`module.backbone_lr_scale` x the heads' rate; a factor decays each group to `min_lr_ratio` x its own
rate. Swapping would also move every published run's numbers (docs/results.md), which users
reproduce from the experiment configs.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from fashion.validation import Probability


def cosine_with_warmup(
    optimizer: Optimizer, total_steps: int, warmup_fraction: Probability = 0.05, min_lr_ratio: Probability = 0.01
) -> LambdaLR:
    """Linear warmup, then cosine decay to `min_lr_ratio` x each group's own lr (backbone and heads alike)."""
    warmup = max(1, int(total_steps * warmup_fraction)) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: 1.0)
