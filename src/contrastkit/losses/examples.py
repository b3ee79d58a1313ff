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


def graded_example(
    generator: torch.Generator, batch: int = 8, dim: int = 16
) -> tuple[Tensor, Tensor, Tensor]:
    """Two float64 (B, D) batches and (B,) distinct gold scores of their pairs.

    >>> q, k, s = graded_example(torch.Generator().manual_seed(0))
    >>> s.shape
    torch.Size([8])
    """
    q, k = paired_example(generator, batch, dim)
    return q, k, torch.randperm(batch, generator=generator).to(torch.float64) / batch


def distillation_example(
    generator: torch.Generator, batch: int = 6, negatives: int = 3, dim: int = 16
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Float64 query (B, D), key (B, D), negatives (B, M, D) and teacher scores (B, 1 + M).

    >>> q, k, n, t = distillation_example(torch.Generator().manual_seed(0))
    >>> n.shape, t.shape
    (torch.Size([6, 3, 16]), torch.Size([6, 4]))
    """
    q, k = paired_example(generator, batch, dim)
    n = torch.randn(batch, negatives, dim, generator=generator, dtype=torch.float64)
    t = torch.randn(batch, 1 + negatives, generator=generator, dtype=torch.float64)
    return q, k, n, t
