"""ResNet-18 and ResNet-50 for RGB (or grayscale) images, in torchvision's layout.

He et al. 2016, "Deep Residual Learning for Image Recognition", https://arxiv.org/abs/1512.03385.
The layers, widths, strides (ResNet-50's stride sits on the 3x3 convolution, "v1.5") and
initialisation follow ``torchvision.models.resnet18/50``, written here because torchvision cannot
be installed beside this torch; the parameter names match torchvision's (``conv1``, ``bn1``,
``layer1.0.conv1``, ...), so its state dicts load with ``strict=False`` (no ``fc``).

The stem follows the input size: images up to 64 px get the CIFAR stem (one 3x3 stride-1
convolution, no max-pool; SimCLR's choice for CIFAR-10), larger ones ImageNet's 7x7 stride-2
convolution and 3x3 stride-2 max-pool, which would leave a 28 px image 7 px wide before the
first block.

Like the other backbones, ``embed(images)`` gives the backbone features ``(B, out_features)``
(512 for ResNet-18, 2048 for ResNet-50) and ``forward(images)`` the projection the loss sees
``(B, projection_dim)`` (the features themselves when ``projection_dim == 0``).

>>> import torch
>>> net = resnet18(in_channels=1, image_size=28, projection_dim=64)
>>> x = torch.rand(2, 1, 28, 28)
>>> net.stem_kind, net.embed(x).shape, net(x).shape
('cifar', torch.Size([2, 512]), torch.Size([2, 64]))
>>> resnet50(image_size=224).stem_kind, resnet50().out_features
('imagenet', 2048)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from contrastkit.encoders.heads import ProjectionHead
from contrastkit.encoders.registry import register
from contrastkit.encoders.vision import _check_images

STEMS = ("auto", "cifar", "imagenet")
CIFAR_STEM_MAX_SIZE = 64  # inputs up to this side get the 3x3 stride-1 stem without max-pool


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34): ``(B, cin, H, W) ->
    (B, width, H / stride, W / stride)``."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != width:
            self.downsample = nn.Sequential(_conv1x1(cin, width, stride), nn.BatchNorm2d(width))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, with a residual connection
    (ResNet-50/101/152): ``(B, cin, H, W) -> (B, 4 * width, H / stride, W / stride)``."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


def choose_stem(stem: str, image_size: int) -> str:
    """``"cifar"`` or ``"imagenet"``: ``stem`` itself, or for ``"auto"`` the CIFAR stem when
    ``image_size <= 64``.

    >>> choose_stem("auto", 32), choose_stem("auto", 96), choose_stem("cifar", 224)
    ('cifar', 'imagenet', 'cifar')
    """
    if stem not in STEMS:
        raise ValueError(
            f"stem must be one of {STEMS} ('auto' picks 'cifar' up to {CIFAR_STEM_MAX_SIZE} px), "
            f"got {stem!r}."
        )
    if stem != "auto":
        return stem
    return "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"


class ResNet(nn.Module):
    """A ResNet backbone with global average pooling and an optional projection head.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3) for ResNet-50.
        in_channels: C, 3 for RGB, 1 for grayscale.
        image_size: the input side the stem is chosen for (see ``stem``).
        stem: ``"auto"`` (CIFAR stem up to 64 px, ImageNet stem above), ``"cifar"`` or
            ``"imagenet"``.
        width: channels of the stem and first stage (64 in the paper; doubled at each stage).
        projection_dim: D of SimCLR's projection head (Linear-BN-ReLU-Linear) on top of the
            features; 0 for none (``forward`` then returns the features).
        hidden_dim: hidden width of the projection head (default: ``out_features``).
        zero_init_residual: start each block's last BatchNorm at zero, so every block begins
            as the identity (Goyal et al. 2017, https://arxiv.org/abs/1706.02677).

    ``embed: (B, C, H, W) -> (B, out_features)``, ``forward: (B, C, H, W) -> (B, D)``.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        in_channels: int = 3,
        image_size: int = 224,
        stem: str = "auto",
        width: int = 64,
        projection_dim: int = 0,
        hidden_dim: int | None = None,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("image_size", image_size),
                            ("width", width)):  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(
                f"layers must be four ints >= 1 (blocks per stage), got {layers!r}; "
                "e.g. (2, 2, 2, 2) for ResNet-18."
            )
        if not isinstance(projection_dim, int) or projection_dim < 0:
            raise ValueError(
                f"projection_dim must be an int >= 0 (0: no projection head), got {projection_dim!r}."
            )
        self.stem_kind = choose_stem(stem, image_size)
        self.in_channels, self.image_size = in_channels, image_size
        if self.stem_kind == "cifar":
            self.conv1 = _conv3x3(in_channels, width)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        cin = width
        stages = []
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, stride=2 if i > 0 and j == 0 else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_features = cin
        self.projection_dim = projection_dim
        self.head: nn.Module = (
            ProjectionHead(cin, hidden_dim or cin, projection_dim, num_layers=2)
            if projection_dim
            else nn.Identity()
        )
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # torchvision's initialisation: He-normal (fan-out) convolutions, BatchNorm at (1, 0)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    @property
    def embedding_dim(self) -> int:
        """Width of ``forward``'s output: ``projection_dim``, or ``out_features`` without a head."""
        return self.projection_dim or self.out_features

    def embed(self, images: Tensor) -> Tensor:
        """Backbone features: ``images (B, C, H, W)`` float -> ``(B, out_features)``."""
        x = _check_images(images, self.in_channels)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, w, H', W')
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, out_features, h, w)
        return self.avgpool(x).flatten(1)  # (B, out_features)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.embed(images))

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, stem={self.stem_kind!r}, "
            f"out_features={self.out_features}, projection_dim={self.projection_dim}"
        )


@register("resnet18", inputs="image")
def resnet18(
    in_channels: int = 3,
    image_size: int = 224,
    stem: str = "auto",
    projection_dim: int = 0,
    hidden_dim: int | None = None,
    width: int = 64,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-18: :class:`BasicBlock` x (2, 2, 2, 2), 512 features; 11.18M parameters at
    ``width=64`` with the ImageNet stem (torchvision's 11,689,512 less its 1000-class ``fc``)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, image_size, stem, width,
                  projection_dim, hidden_dim, zero_init_residual)  # fmt: skip


@register("resnet50", inputs="image")
def resnet50(
    in_channels: int = 3,
    image_size: int = 224,
    stem: str = "auto",
    projection_dim: int = 0,
    hidden_dim: int | None = None,
    width: int = 64,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-50: :class:`Bottleneck` x (3, 4, 6, 3), 2048 features; 23.51M parameters at
    ``width=64`` with the ImageNet stem (torchvision's 25,557,032 less its 1000-class ``fc``)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, image_size, stem, width,
                  projection_dim, hidden_dim, zero_init_residual)  # fmt: skip
