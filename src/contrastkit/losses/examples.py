"""Small shared pieces of the loss modules: example inputs for the registry-generated tests and
the temperature's display."""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.losses.temperature import LearnableTemperature


def paired_example(
    generator: torch.Generator, batch: int = 8, dim: int = 16
) -> tuple[Tensor, Tensor]:
    """Two float64 (B, D) batches, row i of the first paired with row i of the second.

    >>> q, k = paired_example(torch.Generator().manual_seed(0))
    >>> q.shape, k.dtype
    (torch.Size([8, 16]), torch.float64)
    """
    q = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    k = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    return q, k


def temperature_repr(temperature: float | LearnableTemperature) -> str:
    """``0.07`` for a fixed temperature, ``learnable`` for a :class:`LearnableTemperature`."""
    return str(temperature) if isinstance(temperature, float) else "learnable"
