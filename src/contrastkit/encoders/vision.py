"""Image backbones: the MLP encoder, a small CNN and a small ResNet (28x28 and 64x64 inputs).

Every backbone maps ``images: (B, C, H, W)`` float in [0, 1] (or ``(B, F)`` features for the
MLP) to ``features: (B, out_features)`` and exposes ``out_features`` so heads and towers can
be sized without running it. Global average pooling makes the convolutional ones work at any
input size; ``stem_stride=2`` halves a 64x64 input first to keep the cost of a 28x28 one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.encoders.registry import register


def _check_images(images: object, channels: int) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}.")
    if images.shape[1] != channels:
        raise ValueError(
            f"images has {images.shape[1]} channels but the encoder expects in_channels="
            f"{channels}; build it with in_channels={images.shape[1]}."
        )
    if images.dtype == torch.uint8:
        raise TypeError("images must be float in [0, 1], got uint8; use images.float() / 255.")
    return images


@register("mlp", inputs="image")
class MLPEncoder(nn.Module):
    """The SPEC's encoder: ``Linear -> ReLU -> Linear``, then optional L2 normalisation.

    Inputs with more than two dimensions are flattened, so it takes ``(B, F)`` features or
    ``(B, C, H, W)`` images (``in_features = C * H * W``).

    Args:
        in_features: F.
        hidden_features: width of the hidden layer.
        embedding_dim: D, the output width.
        normalize: L2-normalise the output rows.

    >>> enc = MLPEncoder(784, 256, 64)
    >>> z = enc(torch.rand(5, 1, 28, 28))
    >>> z.shape, torch.allclose(z.norm(dim=-1), torch.ones(5))
    (torch.Size([5, 64]), True)
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int = 512,
        embedding_dim: int = 128,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden_features),
            nn.ReLU(),
            nn.Linear(hidden_features, embedding_dim),
        )
        self.in_features, self.out_features, self.normalize = in_features, embedding_dim, normalize

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1) if x.ndim > 2 else x  # (B, F)
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"x has {x.shape[-1]} features per row (after flattening) but in_features="
                f"{self.in_features}; build MLPEncoder(in_features={x.shape[-1]})."
            )
        z = self.net(x)
        return F.normalize(z, dim=-1) if self.normalize else z


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@register("small_cnn", inputs="image")
class SmallCNN(nn.Module):
    """A small VGG-style BatchNorm CNN: five 3x3 conv-BN-ReLU layers (widths w, w, 2w, 2w, 4w;
    2x2 max-pool after the second and the fourth), then average pooling to a ``pool`` x ``pool``
    grid, flattened: ``images (B, C, H, W) -> (B, 4w * pool**2)``.

    ``pool=3`` keeps a coarse spatial layout, which matters for 28x28 clothing images (raw
    pixels alone reach 0.855 kNN accuracy on Fashion-MNIST); ``pool=1`` is global pooling. About
    0.2M parameters at ``width=32``: SimCLR on Fashion-MNIST trains in minutes on a CPU.

    Args:
        in_channels: C (1 for Fashion-MNIST, 3 for emoji).
        width: w, channels of the first stage.
        pool: side of the final average pooling grid.
        stem_stride: 2 to halve large inputs (64x64) in the first convolution.

    >>> SmallCNN(in_channels=1)(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 128])
    >>> SmallCNN(in_channels=3, pool=3, stem_stride=2)(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2, 1152])
    """

    def __init__(
        self, in_channels: int = 1, width: int = 32, pool: int = 1, stem_stride: int = 1
    ) -> None:
        super().__init__()
        w = width
        self.in_channels, self.out_features = in_channels, 4 * w * pool * pool
        self.features = nn.Sequential(
            _conv_bn(in_channels, w, stem_stride),
            _conv_bn(w, w),
            nn.MaxPool2d(2),
            _conv_bn(w, 2 * w),
            _conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv_bn(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.features(_check_images(images, self.in_channels))


class BasicBlock(nn.Module):
    """ResNet's two-conv residual block (He et al. 2016, https://arxiv.org/abs/1512.03385)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


@register("small_resnet", inputs="image")
class SmallResNet(nn.Module):
    """A CIFAR-style ResNet: 3x3 stem, three stages of :class:`BasicBlock` (widths w, 2w, 4w;
    stride 2 between stages) and global average pooling: ``images (B, C, H, W) -> (B, 4w)``.

    ``blocks=(2, 2, 2)`` with ``width=64`` is close to ResNet-18's depth; the default
    ``(1, 1, 1)``, ``width=32`` has about 0.3M parameters.

    Args:
        in_channels: C.
        width: w.
        blocks: residual blocks per stage.
        stem_stride: 2 to halve large inputs (64x64) in the stem.

    >>> SmallResNet(in_channels=1)(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 128])
    >>> SmallResNet(in_channels=3, stem_stride=2)(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2, 128])
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 32,
        blocks: tuple[int, int, int] = (1, 1, 1),
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        if len(blocks) != 3 or any(int(b) < 1 for b in blocks):
            raise ValueError(f"blocks must be three ints >= 1 (blocks per stage), got {blocks!r}.")
        self.in_channels, self.out_features = in_channels, 4 * width
        layers: list[nn.Module] = [_conv_bn(in_channels, width, stem_stride)]
        cin = width
        for stage, n in enumerate(blocks):
            cout = width * 2**stage
            for i in range(int(n)):
                layers.append(BasicBlock(cin, cout, stride=2 if stage > 0 and i == 0 else 1))
                cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.features(_check_images(images, self.in_channels))
