"""Momentum (exponential moving average) copy of an encoder.

Used as the key encoder of MoCo (He et al. 2020, https://arxiv.org/abs/1911.05722) and the
teacher of BYOL (Grill et al. 2020, https://arxiv.org/abs/2006.07733) and DINO. After each
optimiser step::

    theta_target <- momentum * theta_target + (1 - momentum) * theta_online

Buffers (e.g. BatchNorm running statistics) are copied from the online encoder.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn


class MomentumEncoder(nn.Module):
    """An EMA copy of ``online`` that is never trained by gradients.

    Args:
        online: the encoder being trained; it is deep-copied, not shared.
        momentum: EMA coefficient in [0, 1) (0.99 to 0.999 is typical; 0 copies the online weights).

    >>> online = nn.Linear(4, 2)
    >>> target = MomentumEncoder(online, momentum=0.5)
    >>> with torch.no_grad():
    ...     _ = online.weight.add_(1.0)
    >>> target.update(online)
    >>> bool(torch.allclose(target.module.weight, online.weight - 0.5))
    True
    """

    def __init__(self, online: nn.Module, momentum: float = 0.996) -> None:
        super().__init__()
        check_momentum(momentum)
        self.momentum = float(momentum)
        self.module = copy.deepcopy(online)
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float | None = None) -> None:
        """Move the copy towards ``online`` by ``1 - momentum`` (default: ``self.momentum``)."""
        m = self.momentum if momentum is None else check_momentum(momentum)
        target_params = list(self.module.parameters())
        online_params = list(online.parameters())
        if len(target_params) != len(online_params):
            raise ValueError(
                f"online has {len(online_params)} parameter tensors but the momentum copy has "
                f"{len(target_params)}; pass the same architecture the copy was made from."
            )
        for t, o in zip(target_params, online_params):
            t.mul_(m).add_(o.detach(), alpha=1.0 - m)
        for t, o in zip(self.module.buffers(), online.buffers()):
            t.copy_(o)

    @torch.no_grad()
    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.module(*args, **kwargs)


def check_momentum(momentum: object) -> float:
    if (
        not isinstance(momentum, (int, float))
        or isinstance(momentum, bool)
        or not 0.0 <= momentum < 1.0
    ):
        raise ValueError(f"momentum must be a float in [0, 1) (e.g. 0.996), got {momentum!r}.")
    return float(momentum)


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's schedule: momentum rises from ``base`` to ``final`` along a half cosine.

    >>> cosine_momentum(0, 100), cosine_momentum(100, 100)
    (0.996, 1.0)
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}.")
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
