"""CosFace loss module; see :func:`contrastkit.functional.proxy.cosface_loss`."""

from __future__ import annotations

from torch import Tensor

from contrastkit.functional.class_logits import DEFAULT_BLOCK_SIZE
from contrastkit.functional.proxy import cosface_loss
from contrastkit.losses.class_centres import StreamedCentreLoss
from contrastkit.losses.registry import register


@register("cosface")
class CosFace(StreamedCentreLoss):
    """CosFace (additive cosine margin, 0.35; scale 64) over ``num_classes`` class centres
    ``self.weight: (C, D)``. Same engine options as :class:`~contrastkit.losses.arcface.ArcFace`.

    >>> import torch
    >>> loss = CosFace(num_classes=5, embedding_dim=8)
    >>> loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 4])).ndim
    0
    """

    def __init__(
        self,
        num_classes: int = 10,
        embedding_dim: int = 128,
        margin: float = 0.35,
        scale: float = 64.0,
        block_size: int = DEFAULT_BLOCK_SIZE,
        sample_fraction: float = 1.0,
        shard_classes: bool = False,
    ) -> None:
        super().__init__()
        self._init_centres(
            num_classes,
            embedding_dim,
            block_size=block_size,
            sample_fraction=sample_fraction,
            shard_classes=shard_classes,
        )
        self.margin, self.scale = float(margin), float(scale)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return cosface_loss(
            embeddings,
            labels,
            self.weight,
            margin=self.margin,
            scale=self.scale,
            **self.engine_options(),
        )

    def repr_options(self) -> dict[str, object]:
        return {"margin": self.margin, "scale": self.scale}
