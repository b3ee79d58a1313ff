"""Learning-rate schedule: linear warm-up, then cosine decay (Loshchilov & Hutter 2017,
https://arxiv.org/abs/1608.03983) to ``min_lr_ratio`` of the base rate.

>>> f = warmup_cosine(total_steps=100, warmup_steps=10)
>>> round(f(0), 3), round(f(9), 3), round(f(10), 3), round(f(100), 3)
(0.1, 1.0, 1.0, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(
    total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0, cosine: bool = True
) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}.")

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if not cosine:
            return 1.0
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
