"""Sub-center ArcFace loss module; see :func:`contrastkit.functional.proxy.subcenter_arcface_loss`."""

from __future__ import annotations

from torch import Tensor

from contrastkit.functional.class_logits import DEFAULT_BLOCK_SIZE
from contrastkit.functional.proxy import subcenter_arcface_loss
from contrastkit.losses.class_centres import StreamedCentreLoss
from contrastkit.losses.registry import register


@register("subcenter_arcface")
class SubCenterArcFace(StreamedCentreLoss):
    """Sub-center ArcFace: ``num_subcenters`` centres per class, a class's cosine the max over
    them; ``self.weight: (C * K, D)``, class-major (rows ``c*K .. c*K+K-1`` are class ``c``).

    Same arguments as :class:`~contrastkit.losses.arcface.ArcFace`, plus ``num_subcenters`` (K,
    3 in the paper). ``forward(embeddings (B, D), labels (B,))``.

    >>> import torch
    >>> loss = SubCenterArcFace(num_classes=5, embedding_dim=8, num_subcenters=2)
    >>> loss.weight.shape, loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 4])).ndim
    (torch.Size([10, 8]), 0)
    """

    def __init__(
        self,
        num_classes: int = 10,
        embedding_dim: int = 128,
        num_subcenters: int = 3,
        margin: float = 0.5,
        scale: float = 64.0,
        easy_margin: bool = False,
        block_size: int = DEFAULT_BLOCK_SIZE,
        sample_fraction: float = 1.0,
        shard_classes: bool = False,
    ) -> None:
        super().__init__()
        self.num_subcenters = num_subcenters
        self._init_centres(
            num_classes,
            embedding_dim,
            num_subcenters=num_subcenters,
            block_size=block_size,
            sample_fraction=sample_fraction,
            shard_classes=shard_classes,
        )
        self.margin, self.scale, self.easy_margin = float(margin), float(scale), bool(easy_margin)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return subcenter_arcface_loss(
            embeddings,
            labels,
            self.weight,
            num_subcenters=self.num_subcenters,
            margin=self.margin,
            scale=self.scale,
            easy_margin=self.easy_margin,
            **self.engine_options(),
        )

    def repr_options(self) -> dict[str, object]:
        return {"num_subcenters": self.num_subcenters, "margin": self.margin, "scale": self.scale}
