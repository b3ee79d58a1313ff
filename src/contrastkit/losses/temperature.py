"""Learnable temperature (CLIP-style log-scale parameter).

CLIP (Radford et al. 2021, https://arxiv.org/abs/2103.00020) learns ``log(1 / temperature)``
initialised from a temperature and clamps ``1 / temperature <= 100``. Any softmax loss module
accepts a :class:`LearnableTemperature` in place of a float.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from contrastkit._checks import check_temperature


class LearnableTemperature(nn.Module):
    """A temperature learnt on the log scale: ``temperature = exp(-log_scale)``.

    The scale ``1 / temperature`` is clamped to ``max_scale`` (100 as in CLIP) in the forward
    pass, so the temperature never drops below 0.01.

    Args:
        init: initial temperature (> 0), e.g. 0.07.
        max_scale: largest allowed ``1 / temperature``.

    >>> t = LearnableTemperature(0.07)
    >>> round(t().item(), 4)
    0.07
    >>> t.log_scale.requires_grad
    True
    """

    def __init__(self, init: float = 0.07, max_scale: float = 100.0) -> None:
        super().__init__()
        check_temperature(init, "init")
        check_temperature(max_scale, "max_scale")
        if 1.0 / init > max_scale:
            raise ValueError(
                f"init={init} is below the minimum temperature 1/max_scale={1.0 / max_scale}; "
                "raise init or max_scale."
            )
        self.max_scale = float(max_scale)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init)))

    def forward(self) -> Tensor:
        return torch.exp(-self.log_scale.clamp(max=math.log(self.max_scale)))

    def extra_repr(self) -> str:
        return f"temperature={self().item():.4g}, max_scale={self.max_scale:g}"


def resolve_temperature(temperature: float | LearnableTemperature | Tensor) -> float | Tensor:
    """The value to pass to a functional loss."""
    return temperature() if isinstance(temperature, LearnableTemperature) else temperature


def init_temperature(temperature: float | LearnableTemperature) -> float | LearnableTemperature:
    """Validate a module's temperature argument (float or learnable) at construction."""
    if isinstance(temperature, LearnableTemperature):
        return temperature
    check_temperature(temperature)
    return float(temperature)
