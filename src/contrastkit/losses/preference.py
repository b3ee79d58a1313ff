"""Preference (chosen vs rejected) loss module; see :func:`contrastkit.functional.preference_loss`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit._checks import check_choice
from contrastkit.functional import preference_loss
from contrastkit.functional.margin import PREFERENCE_KINDS, _check_margin
from contrastkit.losses.registry import register


@register("preference")
class PreferenceLoss(nn.Module):
    """Bradley-Terry (``"logistic"``) or hinge preference loss on scalar scores.

    >>> import torch
    >>> round(PreferenceLoss()(torch.tensor([2.0]), torch.tensor([0.0])).item(), 4)
    0.1269
    """

    inputs = "scores"
    distributed = "local"

    def __init__(self, kind: str = "logistic", margin: float = 0.0) -> None:
        super().__init__()
        self.kind = check_choice("kind", kind, PREFERENCE_KINDS)
        self.margin = _check_margin(margin)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        g = generator
        return (
            torch.randn(8, generator=g, dtype=torch.float64),
            torch.randn(8, generator=g, dtype=torch.float64),
        )

    def forward(
        self, chosen_scores: Tensor, rejected_scores: Tensor, *, reduction: str = "mean"
    ) -> Tensor:
        return preference_loss(
            chosen_scores, rejected_scores, kind=self.kind, margin=self.margin, reduction=reduction
        )
