"""Proxy-NCA (normalized softmax) loss module; see :func:`contrastkit.functional.proxy.proxy_nca_loss`."""

from __future__ import annotations

from torch import Tensor

from contrastkit.functional.class_logits import DEFAULT_BLOCK_SIZE
from contrastkit.functional.proxy import proxy_nca_loss
from contrastkit.losses.class_centres import StreamedCentreLoss
from contrastkit.losses.examples import temperature_repr
from contrastkit.losses.registry import register
from contrastkit.losses.temperature import (
    LearnableTemperature,
    init_temperature,
    resolve_temperature,
)


@register("proxy_nca")
class ProxyNCA(StreamedCentreLoss):
    """Proxy-NCA / normalized softmax: cross-entropy over ``cos(x, proxy) / temperature``
    (0.05; float or :class:`~contrastkit.losses.temperature.LearnableTemperature`), one proxy
    per class in ``self.weight: (C, D)``. Same engine options as
    :class:`~contrastkit.losses.arcface.ArcFace`.

    >>> import torch
    >>> loss = ProxyNCA(num_classes=5, embedding_dim=8)
    >>> loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 4])).ndim
    0
    """

    def __init__(
        self,
        num_classes: int = 10,
        embedding_dim: int = 128,
        temperature: float | LearnableTemperature = 0.05,
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
        self.temperature = init_temperature(temperature)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return proxy_nca_loss(
            embeddings,
            labels,
            self.weight,
            temperature=resolve_temperature(self.temperature),
            **self.engine_options(),
        )

    def repr_options(self) -> dict[str, object]:
        return {"temperature": temperature_repr(self.temperature)}
