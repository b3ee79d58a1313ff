"""SwAV loss module with its prototypes; see :func:`contrastkit.functional.noncontrastive.swav_loss`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit._checks import check_positive_number
from contrastkit.collectives import world_group
from contrastkit.functional.noncontrastive import swav_loss
from contrastkit.losses.registry import register
from contrastkit.losses.temperature import (
    LearnableTemperature,
    init_temperature,
    resolve_temperature,
)


@register("swav")
class SwAVLoss(nn.Module):
    """SwAV swapped prediction over ``num_prototypes`` learnable prototypes.

    ``forward(query, key)`` on (B, D) projections of two views. The prototypes (K, D) are a
    parameter of this module: give them to the optimiser (``SwAV`` freezes them during the first
    epoch; do that by excluding them from the optimiser, not here). Codes are computed with
    :func:`~contrastkit.functional.noncontrastive.sinkhorn_knopp` without gradient.

    Args:
        dim: embedding width D (128 in SwAV).
        num_prototypes: K (3000 in SwAV for ImageNet; roughly 10x the number of classes).
        temperature: prediction temperature (0.1), float or :class:`LearnableTemperature`.
        epsilon: Sinkhorn regularisation (0.05).
        sinkhorn_iterations: Sinkhorn rounds (3).
        gather_distributed: balance the codes over the global batch of all ranks of the default
            process group (``group=world_group()`` of
            :func:`~contrastkit.functional.noncontrastive.swav_loss`; every rank calls); the
            trainer sets it under ``torchrun``.

    >>> loss = SwAVLoss(dim=8, num_prototypes=4)
    >>> z = torch.randn(6, 8)
    >>> loss(z, z + 0.1).ndim
    0
    """

    inputs = "pair"
    distributed = "gather"

    # The codes are computed from the inputs under stop-gradient, so a finite-difference check
    # through forward cannot match the analytic gradient; the prediction path is gradchecked in
    # tests/test_noncontrastive.py with the codes held fixed.
    numerical_gradcheck = False

    def __init__(
        self,
        dim: int = 128,
        num_prototypes: int = 3000,
        temperature: float | LearnableTemperature = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_prototypes", num_prototypes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, dim) / dim**0.5)  # (K, D)
        self.temperature = init_temperature(temperature)
        self.epsilon = check_positive_number("epsilon", epsilon)
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.gather_distributed = bool(gather_distributed)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward`` (D = 128, the default ``dim``)."""
        return (
            torch.randn(8, 128, generator=generator, dtype=torch.float64),
            torch.randn(8, 128, generator=generator, dtype=torch.float64),
        )

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        return swav_loss(
            query,
            key,
            self.prototypes.to(query.dtype),
            temperature=resolve_temperature(self.temperature),
            epsilon=self.epsilon,
            sinkhorn_iterations=self.sinkhorn_iterations,
            group=world_group() if self.gather_distributed else None,
        )

    def extra_repr(self) -> str:
        t = self.temperature if isinstance(self.temperature, float) else "learnable"
        k, d = self.prototypes.shape
        return f"dim={d}, num_prototypes={k}, temperature={t}, epsilon={self.epsilon:g}"
