"""ResNet-18/50: torchvision's parameter counts, the stem chosen by input size, shapes, gradients."""

from __future__ import annotations

import pytest
import torch

from contrastkit.encoders import ResNet, create_encoder, list_encoders, resnet18, resnet50
from contrastkit.encoders.heads import ProjectionHead
from contrastkit.encoders.resnet import BasicBlock

# torchvision.models.resnet18() / resnet50() parameter counts (1000-class fc included), and the
# backbone without fc (fc: 512 * 1000 + 1000 and 2048 * 1000 + 1000 parameters)
TORCHVISION = {"resnet18": (11_689_512, 11_176_512), "resnet50": (25_557_032, 23_508_032)}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_parameter_counts_match_torchvision(name):
    full, backbone = TORCHVISION[name]
    net = create_encoder(name, in_channels=3, image_size=224)
    assert net.stem_kind == "imagenet"
    fc = net.out_features * 1000 + 1000
    assert abs(n_params(net) - backbone) / backbone < 0.01
    assert abs(n_params(net) + fc - full) / full < 0.01
    assert n_params(net) == backbone  # the layout is torchvision's exactly
    # the CIFAR stem swaps the 7x7 convolution for a 3x3 one: 64 * 3 * (49 - 9) fewer weights
    assert n_params(create_encoder(name, image_size=32)) == backbone - 64 * 3 * 40


def test_parameter_names_follow_torchvision():
    names = set(resnet18().state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight",
                "layer2.0.downsample.0.weight", "layer4.1.bn2.bias"):  # fmt: skip
        assert key in names
    assert "layer3.0.conv3.weight" in set(resnet50().state_dict())


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("side", [28, 32, 64, 96])
def test_resnet18_shapes_for_every_input(channels, side):
    torch.manual_seed(0)
    net = resnet18(in_channels=channels, image_size=side, projection_dim=32, width=16)
    assert net.stem_kind == ("cifar" if side <= 64 else "imagenet")
    net.eval()
    x = rand(2, channels, side, side)
    with torch.no_grad():
        assert net.embed(x).shape == (2, net.out_features) == (2, 128)
        out = net(x)
    assert out.shape == (2, 32) == (2, net.embedding_dim) and torch.isfinite(out).all()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("side", [28, 96])
def test_resnet50_shapes(channels, side):
    torch.manual_seed(0)
    net = resnet50(in_channels=channels, image_size=side, width=8).eval()
    with torch.no_grad():
        out = net(rand(2, channels, side, side))
    assert out.shape == (2, net.out_features) == (2, 256)  # 4 * 8 * 2**3, no head


def test_gradients_reach_every_parameter_and_the_input():
    torch.manual_seed(0)
    net = resnet18(in_channels=3, image_size=32, projection_dim=16, width=8)
    x = rand(4, 3, 32, 32).requires_grad_()
    net(x).pow(2).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing and x.grad is not None and x.grad.abs().sum() > 0
    assert isinstance(net.head, ProjectionHead)


def test_zero_init_residual_starts_blocks_as_the_identity():
    net = resnet18(image_size=32, zero_init_residual=True, width=8).eval()
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for b in net.layer1)
    x = rand(2, 8, 16, 16)  # non-negative, like the stem's ReLU output
    with torch.no_grad():
        assert torch.equal(net.layer1(x), x)  # relu(0 + x) = x through both blocks
        assert not torch.equal(resnet18(image_size=32, width=8).eval().layer1(x), x)


def test_bad_input_names_the_argument():
    assert create_encoder("resnet18", image_size=32, stem="imagenet").stem_kind == "imagenet"
    with pytest.raises(ValueError, match="stem must be one of"):
        resnet18(stem="tiny")
    with pytest.raises(ValueError, match="in_channels=1"):
        resnet18(in_channels=3, image_size=28)(rand(2, 1, 28, 28))
    with pytest.raises(TypeError, match="float"):
        resnet18(image_size=28)(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="layers must be four ints"):
        ResNet(BasicBlock, (2, 2, 2))
    with pytest.raises(ValueError, match="projection_dim must be an int >= 0"):
        resnet18(projection_dim=-1)
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        resnet50(in_channels=0)


def test_registry_lists_and_builds_the_resnets():
    assert {"resnet18", "resnet50"} <= set(list_encoders("resnet*"))
    net = create_encoder("resnet18", in_channels=1, image_size=28, width=8)
    assert isinstance(net, ResNet) and net(rand(2, 1, 28, 28)).shape == (2, 64)
