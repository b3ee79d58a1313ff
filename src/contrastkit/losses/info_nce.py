"""InfoNCE / CLIP loss module; see :func:`contrastkit.functional.info_nce`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.collectives import world_group
from contrastkit.functional import KeyRoles, info_nce
from contrastkit.functional.ring import check_collective
from contrastkit.functional.similarity import check_metric
from contrastkit.losses.examples import paired_example, temperature_repr
from contrastkit.losses.registry import register
from contrastkit.losses.temperature import (
    LearnableTemperature,
    init_temperature,
    resolve_temperature,
)


@register("info_nce")
class InfoNCE(nn.Module):
    """InfoNCE with in-batch negatives; ``symmetric=True`` gives the CLIP loss.

    Args:
        temperature: float > 0 or a :class:`LearnableTemperature`.
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        symmetric: average with the key -> query direction.
        gather_distributed: compute the problem over all ranks of the default process group
            (``group=world_group()``, see :mod:`contrastkit.distributed`); the trainer sets it.
        collective: under a process group, ``"gather"`` the keys, pass them around a
            ``"ring"`` or ``"auto"`` (default) by size (:mod:`contrastkit.functional.ring`).

    >>> import torch
    >>> loss = InfoNCE(temperature=0.1, symmetric=True)
    >>> q = torch.randn(4, 8)
    >>> loss(q, q + 0.01).shape
    torch.Size([])
    """

    inputs = "pair"
    distributed = "gather"
    takes_negatives = True

    def __init__(
        self,
        temperature: float | LearnableTemperature = 0.07,
        metric: str = "cosine",
        symmetric: bool = False,
        gather_distributed: bool = False,
        collective: str = "auto",
    ) -> None:
        super().__init__()
        self.temperature = init_temperature(temperature)
        self.metric = check_metric(metric)
        self.gather_distributed = bool(gather_distributed)
        self.collective = check_collective(collective)
        self.symmetric = bool(symmetric)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        return paired_example(generator)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        negatives: Tensor | None = None,
        *,
        positive_mask: Tensor | None = None,
        ignore_mask: Tensor | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        """query: (B, D), key: (B, D), negatives: (M, D) or (B, M, D); the masks as the
        ``roles`` of :func:`~contrastkit.functional.info_nce` (``ignore_mask``: (B, W*B + M),
        the loss-registry contract of losses that take negatives)."""
        return info_nce(
            query,
            key,
            negatives,
            temperature=resolve_temperature(self.temperature),
            metric=self.metric,
            symmetric=self.symmetric,
            roles=KeyRoles(positive_mask=positive_mask, ignore_mask=ignore_mask),
            reduction=reduction,
            group=world_group() if self.gather_distributed else None,
            collective=self.collective,
        )

    def extra_repr(self) -> str:
        return f"temperature={temperature_repr(self.temperature)}, metric={self.metric!r}, symmetric={self.symmetric}"
