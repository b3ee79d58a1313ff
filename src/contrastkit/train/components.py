"""The image pieces of the trainer: dataset names, views and the SimCLR-style CNN.

Datasets come from :mod:`contrastkit.data` (as float images in [0, 1]). Views are kornia's
batched augmentations through :class:`contrastkit.data.SimCLRViews`, built from the ``views:``
config section by :func:`build_views` and drawn from a ``torch.Generator`` (one seed per call,
the global RNG untouched) so that ``--resume`` draws the same views. :class:`SmallCNN` adds a
BatchNorm MLP projection head on top of a VGG-style backbone (the backbone features are what
evaluation uses).

Shapes: B batch, V views, C channels, H x W image, D embedding dim.

>>> import torch
>>> from contrastkit.train.config import ViewsConfig
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.rand(4, 1, 28, 28, generator=g)
>>> views = build_views(ViewsConfig(), x)
>>> views(x, n_views=2, generator=g).shape  # (V, B, C, H, W)
torch.Size([2, 4, 1, 28, 28])
>>> cnn = SmallCNN(width=8, out_dim=16, projection_dim=4, pool=3)
>>> cnn(x).shape, cnn.embed(x).shape
(torch.Size([4, 4]), torch.Size([4, 288]))
"""

from __future__ import annotations

import os
from collections.abc import Callable

from torch import Tensor, nn

from contrastkit.data._common import ImageDataset
from contrastkit.data.fashion_mnist import load_digits, load_fashion_mnist
from contrastkit.data.views import SimCLRViews
from contrastkit.train.config import ViewsConfig


def _fashion_mnist(split: str, root: str | os.PathLike | None = None) -> ImageDataset:
    return load_fashion_mnist(split, root).float()


def _digits(split: str) -> ImageDataset:
    return load_digits(split).float()


# The image datasets an image task can name in ``data.dataset`` (loaders of contrastkit.data).
IMAGE_DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "fashion_mnist": _fashion_mnist,
    "digits": _digits,
}


def build_views(views: ViewsConfig, images: Tensor) -> SimCLRViews:
    """The kornia :class:`~contrastkit.data.SimCLRViews` of the ``views:`` config section for
    square images shaped like ``images`` (B, C, H, H): crop, flip, jitter, blur and noise."""
    size, channels = images.shape[-1], images.shape[1]
    if images.shape[-2] != size:
        raise ValueError(
            f"image tasks need square images for their views, got {tuple(images.shape[-2:])}; "
            "resize the dataset to H x H."
        )
    return SimCLRViews(
        size=size,
        channels=channels,
        strength=views.strength,
        crop_scale=views.crop_scale,
        crop_ratio=views.crop_ratio,
        flip=views.flip,
        jitter_p=views.jitter_p,
        blur=views.blur,
        noise=views.noise,
    )


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SmallCNN(nn.Module):
    """A small VGG-style BatchNorm CNN backbone with SimCLR's MLP projection head.

    ``embed`` maps (B, C, H, W) -> (B, 4 * width * pool**2) backbone features: five 3x3
    conv-BN-ReLU layers (two 2x2 max-pools), then average pooling to a ``pool`` x ``pool`` grid,
    flattened. ``pool=3`` keeps a coarse spatial layout, which matters for 28x28 clothing images
    (raw pixels alone reach 0.855 kNN accuracy); evaluation reads these features, as is standard.
    ``forward`` returns the projection (B, projection_dim) the loss sees: Linear-BN-ReLU,
    Linear-BN-ReLU, Linear (or the features when ``projection_dim`` is 0).

    Args:
        in_channels: image channels.
        width: channels of the first stage (doubled at each of the 3 stages).
        out_dim: hidden width of the projection head.
        projection_dim: output of the projection head (0: no head).
        pool: side of the final average pooling (1: global pooling).
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 32,
        out_dim: int = 128,
        projection_dim: int = 64,
        pool: int = 3,
    ) -> None:
        super().__init__()
        w = width
        self.backbone = nn.Sequential(
            _conv_block(in_channels, w),
            _conv_block(w, w),
            nn.MaxPool2d(2),
            _conv_block(w, 2 * w),
            _conv_block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv_block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
        )
        self.out_features = 4 * w * pool * pool
        self.head: nn.Module = (
            nn.Sequential(
                nn.Linear(self.out_features, out_dim, bias=False),
                nn.BatchNorm1d(out_dim),
                nn.ReLU(inplace=True),
                nn.Linear(out_dim, out_dim, bias=False),
                nn.BatchNorm1d(out_dim),
                nn.ReLU(inplace=True),
                nn.Linear(out_dim, projection_dim),
            )
            if projection_dim
            else nn.Identity()
        )

    def embed(self, x: Tensor) -> Tensor:
        """Backbone features: (B, C, H, W) -> (B, 4 * width * pool**2)."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))
