"""The image pieces of the trainer: dataset names, batched views and the SimCLR-style CNN.

Datasets come from :mod:`contrastkit.data` (as float images in [0, 1]). The views here are one
batched affine resample (crop + flip) plus brightness/contrast jitter, drawn from a
``torch.Generator`` for exact resume; they are cheaper on a CPU than a per-op augmentation
pipeline, which matters for minutes-long runs. :class:`SmallCNN` adds a BatchNorm MLP projection
head on top of a VGG-style backbone (the backbone features are what evaluation uses).

Shapes: B batch, C channels, H x W image, D embedding dim.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.rand(4, 1, 28, 28, generator=g)
>>> view_batch(x, ViewSpec(), generator=g).shape
torch.Size([4, 1, 28, 28])
>>> cnn = SmallCNN(width=8, out_dim=16, projection_dim=4, pool=3)
>>> cnn(x).shape, cnn.embed(x).shape
(torch.Size([4, 4]), torch.Size([4, 288]))
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.data._common import ImageDataset
from contrastkit.data.fashion_mnist import load_digits, load_fashion_mnist


def _fashion_mnist(split: str, root: str | os.PathLike | None = None) -> ImageDataset:
    return load_fashion_mnist(split, root).float()


def _digits(split: str) -> ImageDataset:
    return load_digits(split).float()


# The image datasets an image task can name in ``data.dataset`` (loaders of contrastkit.data).
IMAGE_DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "fashion_mnist": _fashion_mnist,
    "digits": _digits,
}


@dataclass
class ViewSpec:
    """Random view parameters for small grayscale images (SimCLR-style, no colour).

    Attributes:
        crop_scale: (min, max) area fraction of the random resized crop.
        crop_ratio: (min, max) aspect ratio of the crop.
        flip: probability of a horizontal flip.
        brightness: max additive brightness change.
        contrast: max relative contrast change.
        jitter_p: probability of applying brightness/contrast jitter.
        noise: std of added Gaussian noise.
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    jitter_p: float = 0.8
    noise: float = 0.0


def view_batch(images: Tensor, spec: ViewSpec, *, generator: torch.Generator) -> Tensor:
    """One random view of each image: resized crop + flip in a single affine resample, then jitter.

    Args:
        images: (B, C, H, W) in [0, 1].
        spec: the view parameters.
        generator: random source (views are reproducible from its state).

    Returns:
        (B, C, H, W) views.
    """
    b = images.shape[0]

    def uniform(lo: float, hi: float) -> Tensor:
        return torch.rand(b, generator=generator) * (hi - lo) + lo

    area = uniform(*spec.crop_scale)
    log_ratio = uniform(math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1]))
    ratio = torch.exp(log_ratio)
    sx = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width as a fraction of the image
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - sx)  # centre, in [-1, 1] units
    ty = (torch.rand(b, generator=generator) * 2 - 1) * (1 - sy)
    flip = torch.where(torch.rand(b, generator=generator) < spec.flip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = sx * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if spec.jitter_p > 0 and (spec.brightness > 0 or spec.contrast > 0):
        apply = (torch.rand(b, generator=generator) < spec.jitter_p).float().view(b, 1, 1, 1)
        bright = uniform(-spec.brightness, spec.brightness).view(b, 1, 1, 1)
        contrast = uniform(1 - spec.contrast, 1 + spec.contrast).view(b, 1, 1, 1)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        jittered = ((out - mean) * contrast + mean + bright).clamp(0.0, 1.0)
        out = apply * jittered + (1 - apply) * out
    if spec.noise > 0:
        out = out + spec.noise * torch.randn(out.shape, generator=generator)
    return out


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
