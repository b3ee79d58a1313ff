"""Image backbones, heads, towers and the encoder registry: shapes, normalisation, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastkit.encoders import (
    DualEncoder,
    ImageTextModel,
    MLPEncoder,
    PredictionHead,
    ProjectionHead,
    SmallCNN,
    SmallResNet,
    create_encoder,
    list_encoders,
)


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls", [SmallCNN, SmallResNet])
@pytest.mark.parametrize(("channels", "side", "stem_stride"), [(1, 28, 1), (3, 64, 2), (3, 64, 1)])
def test_conv_backbones_shapes_and_gradients(cls, channels, side, stem_stride):
    torch.manual_seed(0)
    enc = cls(in_channels=channels, width=8, stem_stride=stem_stride)
    x = rand(4, channels, side, side)
    out = enc(x)
    assert out.shape == (4, enc.out_features) == (4, 32)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    enc.eval()
    assert torch.allclose(enc(x[:1]), enc(x)[:1], atol=1e-5)  # eval mode: rows independent


def test_backbone_input_errors():
    enc = SmallCNN(in_channels=1)
    with pytest.raises(ValueError, match="in_channels=3"):
        enc(rand(2, 3, 28, 28))
    with pytest.raises(TypeError, match="float"):
        enc(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="blocks"):
        SmallResNet(blocks=(1, 1))


def test_mlp_encoder_normalisation():
    torch.manual_seed(0)
    z = MLPEncoder(64, 32, 16)(rand(5, 1, 8, 8))
    assert z.shape == (5, 16) and torch.allclose(z.norm(dim=-1), torch.ones(5), atol=1e-6)
    raw = MLPEncoder(64, 32, 16, normalize=False)(rand(5, 64))
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(5))
    with pytest.raises(ValueError, match="in_features=10"):
        MLPEncoder(64)(rand(2, 10))


def test_heads():
    torch.manual_seed(0)
    proj = ProjectionHead(32, 64, 16, num_layers=3)
    assert proj(rand(8, 32)).shape == (8, 16)
    assert sum(isinstance(m, nn.Linear) for m in proj.modules()) == 3
    assert PredictionHead(16, 4)(rand(8, 16)).shape == (8, 16)
    with pytest.raises(ValueError, match="num_layers"):
        ProjectionHead(4, num_layers=0)


def test_registry_builds_every_image_encoder():
    names = list_encoders()
    assert {"mlp", "small_cnn", "small_resnet", "projection_head", "prediction_head", "hf_text",
            "tiny_text"} <= set(names)  # fmt: skip
    enc = create_encoder("small_resnet", in_channels=1, width=8)
    assert isinstance(enc, SmallResNet) and enc(rand(2, 1, 28, 28)).shape == (2, 32)
    with pytest.raises(ValueError, match="small_cnn"):
        create_encoder("small_cnnn")


def test_dual_encoder_shared_and_separate():
    torch.manual_seed(0)
    base = MLPEncoder(4, 8, 3)
    shared = DualEncoder(base)
    x = rand(2, 4)
    q, k = shared(x, x)
    assert shared.shared and torch.equal(q, k)
    separate = DualEncoder(base, shared=False)
    assert not separate.shared
    assert {id(p) for p in separate.key_encoder.parameters()}.isdisjoint(
        id(p) for p in base.parameters()
    )
    with torch.no_grad():
        separate.key_encoder.net[0].weight.add_(1.0)
    q, k = separate(x, x)
    assert not torch.allclose(q, k)
    explicit = DualEncoder(base, MLPEncoder(4, 8, 3))
    assert not explicit.shared


def test_image_text_model_learnable_temperature():
    torch.manual_seed(0)
    model = ImageTextModel(SmallCNN(3, width=8), nn.EmbeddingBag(20, 12), 6, text_dim=12)
    images = rand(4, 3, 16, 16)
    tokens = torch.randint(0, 20, (4, 5), generator=torch.Generator().manual_seed(0))
    img, txt = model(images, tokens)
    assert img.shape == txt.shape == (4, 6)
    assert torch.allclose(img.norm(dim=-1), torch.ones(4), atol=1e-6)
    logits = model.logits(img, txt)
    assert torch.allclose(logits, img @ txt.T / 0.07, atol=1e-4)
    loss = nn.functional.cross_entropy(logits, torch.arange(4))
    loss.backward()
    assert model.temperature.log_scale.grad is not None
    with pytest.raises(ValueError, match="text_dim="):
        ImageTextModel(SmallCNN(3), nn.EmbeddingBag(20, 12))


def test_image_text_model_learns_on_real_emoji():
    """Real pipeline: rendered emoji + captions -> two towers -> CLIP loss; a few steps lower it."""
    from contrastkit.data import load_emoji
    from contrastkit.encoders import TextEncoder
    from contrastkit.losses import InfoNCE

    data = load_emoji(size=32).subset(torch.arange(0, 1200, 75))  # 16 emoji
    torch.manual_seed(0)
    text = TextEncoder.from_scratch(hidden_size=32, num_layers=1, num_heads=2, max_length=16)
    model = ImageTextModel(SmallCNN(3, width=8), text, embedding_dim=16)
    loss_fn = InfoNCE(temperature=model.temperature, symmetric=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    images = data.float().images  # (16, 3, 32, 32) float in [0, 1]
    losses = []
    for _ in range(15):
        img, txt = model(images, data.texts)
        loss = loss_fn(img, txt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 2.0  # about log(16) at the start
    assert losses[-1] < 0.7 * losses[0]
