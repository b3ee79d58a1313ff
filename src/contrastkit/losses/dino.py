"""DINO loss module with its teacher center; see :func:`contrastkit.functional.noncontrastive.dino_loss`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from contrastkit._checks import check_embeddings, check_temperature
from contrastkit.collectives import all_reduce_
from contrastkit.functional.noncontrastive import dino_loss
from contrastkit.losses.registry import register


@register("dino")
class DINOLoss(nn.Module):
    """DINO cross-entropy between a sharpened, centred teacher and the student.

    ``forward(student, teacher)``: (B, K) or (V, B, K) student logits and (B, K) or (T, B, K)
    teacher logits (from a :class:`contrastkit.encoders.MomentumEncoder` of the student). The
    forward pass only reads the center; call :meth:`update_center` with the teacher logits once per
    step, after the loss (as DINO does), so that the loss is a pure function of its inputs::

        loss = dino(student_logits, teacher_logits)
        dino.update_center(teacher_logits)

    Args:
        out_dim: K; ``None`` creates the center on the first :meth:`update_center`.
        student_temperature: 0.1.
        teacher_temperature: 0.04 (warm up from 0.04 to 0.07 in long runs).
        center_momentum: EMA coefficient of the center in [0, 1) (0.9).

    >>> dino = DINOLoss(out_dim=3)
    >>> t = torch.tensor([[4.0, 0.0, 0.0], [4.0, 1.0, 0.0]])
    >>> dino.update_center(t)
    >>> dino.center
    tensor([0.4000, 0.0500, 0.0000])
    >>> dino(torch.zeros(2, 3), t).ndim
    0
    """

    inputs = "pair"
    distributed = "local"

    # The teacher (position 1 of forward) receives no gradient by design.
    stop_gradient_inputs = (1,)
    center: Tensor

    def __init__(
        self,
        out_dim: int | None = None,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        check_temperature(student_temperature, "student_temperature")
        check_temperature(teacher_temperature, "teacher_temperature")
        if not isinstance(center_momentum, (int, float)) or not 0.0 <= center_momentum < 1.0:
            raise ValueError(f"center_momentum must be in [0, 1) (0.9), got {center_momentum!r}.")
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.center_momentum = float(center_momentum)
        size = 0 if out_dim is None else int(out_dim)
        self.register_buffer("center", torch.zeros(size))  # (K,); empty until first update

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        return (
            torch.randn(8, 16, generator=generator, dtype=torch.float64),
            torch.randn(8, 16, generator=generator, dtype=torch.float64),
        )

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        center = self.center.to(teacher.dtype) if self.center.numel() else None
        return dino_loss(
            student,
            teacher,
            center,
            student_temperature=self.student_temperature,
            teacher_temperature=self.teacher_temperature,
        )

    @torch.no_grad()
    def update_center(self, teacher: Tensor) -> None:
        """EMA of the mean teacher logit, averaged over all ranks when distributed.

        ``center <- m * center + (1 - m) * mean_b teacher_b`` (teacher: (B, K) or (T, B, K)).
        """
        check_embeddings("teacher", teacher, ndim=(2, 3))
        flat = teacher.detach().reshape(-1, teacher.shape[-1])  # (T * B, K)
        total = flat.sum(dim=0, dtype=torch.float64)  # (K,)
        count = torch.tensor([float(flat.shape[0])], dtype=torch.float64, device=flat.device)
        all_reduce_(total)
        all_reduce_(count)
        batch_center = total / count
        if self.center.numel() == 0:
            self.center = torch.zeros_like(batch_center, dtype=teacher.dtype)
        elif self.center.shape[0] != flat.shape[1]:
            raise ValueError(
                f"teacher has K={flat.shape[1]} outputs but the center has {self.center.shape[0]}; "
                "pass out_dim=K or use one DINOLoss per head."
            )
        m = self.center_momentum
        self.center.mul_(m).add_(batch_center.to(self.center.dtype), alpha=1.0 - m)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        saved = state_dict.get(prefix + "center")
        if saved is not None and saved.shape != self.center.shape and self.center.numel() == 0:
            self.center = torch.zeros_like(saved)  # a lazily created center: take the saved size
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return (
            f"out_dim={self.center.numel() or None}, student_temperature={self.student_temperature:g}, "
            f"teacher_temperature={self.teacher_temperature:g}, center_momentum={self.center_momentum:g}"
        )
