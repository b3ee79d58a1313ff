"""Projection and prediction heads: small MLPs on top of a backbone's features.

The projection head maps backbone features to the space the contrastive loss sees
(SimCLR, Chen et al. 2020, https://arxiv.org/abs/2002.05709: the loss is computed on the head's
output, while the backbone's features are what transfers). The prediction head is the extra
MLP on the online branch of BYOL (Grill et al. 2020, https://arxiv.org/abs/2006.07733) and
SimSiam (Chen & He 2021, https://arxiv.org/abs/2011.10566); with a stop-gradient on the other
branch it prevents collapse without negatives.
"""

from __future__ import annotations

from torch import Tensor, nn

from contrastkit.encoders.registry import create_encoder, register


def mlp(
    in_features: int, hidden_features: int, out_features: int, num_layers: int, batch_norm: bool
) -> nn.Sequential:
    """``num_layers`` linear layers; hidden ones followed by (BatchNorm and) ReLU."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(width, hidden_features, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_features))
        layers.append(nn.ReLU(inplace=True))
        width = hidden_features
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


@register("projection_head", inputs="embedding")
class ProjectionHead(nn.Module):
    """SimCLR's projection MLP: ``features (B, F) -> (B, out_features)``.

    Args:
        in_features: F, the backbone's ``out_features``.
        hidden_features: width of the hidden layers.
        out_features: D, the embedding the loss sees.
        num_layers: linear layers (SimCLR: 2, SimCLR v2: 3).
        batch_norm: BatchNorm after each hidden linear layer.

    >>> import torch
    >>> ProjectionHead(128, 256, 64)(torch.rand(4, 128)).shape
    torch.Size([4, 64])
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int = 512,
        out_features: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.net = mlp(in_features, hidden_features, out_features, num_layers, batch_norm)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


@register("prediction_head", inputs="embedding")
class PredictionHead(nn.Module):
    """BYOL / SimSiam predictor: a bottleneck MLP ``(B, D) -> (B, D)``.

    Args:
        dim: D, the projection's ``out_features`` (input and output width).
        hidden_features: bottleneck width (SimSiam uses D / 4).

    >>> import torch
    >>> PredictionHead(64, 16)(torch.rand(4, 64)).shape
    torch.Size([4, 64])
    """

    def __init__(self, dim: int = 128, hidden_features: int = 512) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden_features", hidden_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        self.in_features = self.out_features = dim
        self.net = mlp(dim, hidden_features, dim, 2, True)

    def forward(self, projection: Tensor) -> Tensor:
        return self.net(projection)


class ProjectedEncoder(nn.Module):
    """A backbone with a projection head: ``forward`` is what the loss sees, ``embed`` the
    backbone features that evaluation and the index read (SimCLR's convention).

    >>> import torch
    >>> from contrastkit.encoders.vision import SmallCNN
    >>> enc = ProjectedEncoder(SmallCNN(1, width=4), ProjectionHead(16, 8, 4, num_layers=3))
    >>> x = torch.rand(2, 1, 28, 28)
    >>> enc(x).shape, enc.embed(x).shape
    (torch.Size([2, 4]), torch.Size([2, 16]))
    """

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        self.out_features = int(getattr(head, "out_features", backbone.out_features))

    def embed(self, images: Tensor) -> Tensor:
        """Backbone features (B, F)."""
        return self.backbone(images)

    def forward(self, images: Tensor) -> Tensor:
        """The projection (B, D) (the features when there is no head)."""
        return self.head(self.backbone(images))


@register("projected", inputs="image")
def projected_encoder(
    backbone: str, backbone_options: dict | None = None, head: dict | None = None
) -> ProjectedEncoder:
    """A registered ``backbone`` with a :class:`ProjectionHead` (``head``: its keyword arguments
    besides ``in_features``; None: no head): how image runs build, and export, their encoder.

    >>> import torch
    >>> enc = projected_encoder("small_cnn", {"in_channels": 1, "width": 4},
    ...                         {"hidden_features": 8, "out_features": 4, "num_layers": 3})
    >>> enc(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 4])
    """
    net = create_encoder(backbone, **(backbone_options or {}))
    return ProjectedEncoder(net, ProjectionHead(net.out_features, **head) if head else None)
