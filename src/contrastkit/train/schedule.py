"""Learning-rate schedule: linear warm-up, then cosine decay (Loshchilov & Hutter 2017,
https://arxiv.org/abs/1608.03983) to ``min_lr_ratio`` of the base rate.

:class:`WarmupCosine` is the multiplier a ``LambdaLR`` applies. Its warm-up is capped at
``max_warmup_fraction`` of the schedule (a 10-step run with ``warmup_steps: 50`` still reaches
its peak), and :meth:`WarmupCosine.refit` changes the length in the middle of a run without a
jump: from the refit step on, the rate decays on a cosine from its current value to the end, so
it never rises above what it was.

>>> f = WarmupCosine(total_steps=100, warmup_steps=10)
>>> round(f(0), 3), round(f(9), 3), round(f(10), 3), round(f(100), 3)
(0.1, 1.0, 1.0, 0.0)
>>> WarmupCosine(total_steps=10, warmup_steps=50).warmup  # capped at 10 % of the steps
1
>>> f.refit(step=60, total_steps=200)
>>> round(f(60), 3) == round(WarmupCosine(100, 10)(60), 3), f(61) < f(60)
(True, True)
"""

from __future__ import annotations

import math


class WarmupCosine:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Args:
        total_steps: the schedule's length.
        warmup_steps: linear warm-up length before the cap.
        min_lr_ratio: the final multiplier.
        cosine: False keeps the peak after warm-up (constant schedule).
        max_warmup_fraction: the warm-up is at most this fraction of ``total_steps``.

    Its attributes are plain numbers, so ``LambdaLR.state_dict`` saves it for an exact resume.
    """

    def __init__(
        self,
        total_steps: int,
        warmup_steps: int,
        min_lr_ratio: float = 0.0,
        cosine: bool = True,
        max_warmup_fraction: float = 0.1,
    ) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}.")
        self.warmup_steps, self.max_warmup_fraction = int(warmup_steps), float(max_warmup_fraction)
        self.min_lr_ratio, self.cosine = float(min_lr_ratio), bool(cosine)
        self.total_steps = int(total_steps)
        self.warmup = self._capped_warmup(self.total_steps)
        self.anchor_step, self.anchor_value = self.warmup, 1.0  # the cosine starts here

    def _capped_warmup(self, total: int) -> int:
        if not self.warmup_steps:
            return 0
        return max(1, min(self.warmup_steps, int(self.max_warmup_fraction * total)))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if not self.cosine:
            return 1.0
        span = max(1, self.total_steps - self.anchor_step)
        progress = min(1.0, max(0.0, (step - self.anchor_step) / span))
        low = self.min_lr_ratio
        return low + (self.anchor_value - low) * 0.5 * (1 + math.cos(math.pi * progress))

    def refit(self, step: int, total_steps: int) -> None:
        """Set the length to ``total_steps`` at ``step`` without raising the rate: still warming
        up, the warm-up is re-capped for the new length; past it, the cosine restarts from the
        current value."""
        total_steps = max(int(total_steps), step)
        if step < self.warmup:
            self.warmup = max(step, self._capped_warmup(total_steps))
            self.anchor_step, self.anchor_value = self.warmup, 1.0
        else:
            self.anchor_value = self(step)
            self.anchor_step = step
        self.total_steps = total_steps


def warmup_cosine(
    total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0, cosine: bool = True
) -> WarmupCosine:
    """:class:`WarmupCosine` without a warm-up cap (the multiplier as a function of the step).

    >>> f = warmup_cosine(total_steps=100, warmup_steps=10)
    >>> round(f(0), 3), round(f(9), 3), round(f(10), 3), round(f(100), 3)
    (0.1, 1.0, 1.0, 0.0)
    """
    return WarmupCosine(total_steps, warmup_steps, min_lr_ratio, cosine, max_warmup_fraction=1.0)
