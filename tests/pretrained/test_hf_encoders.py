"""hf_vision and hf_clip on tiny random folders written with save_pretrained."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tests.pretrained.tiny_models import tiny_clip, tiny_siglip, tiny_vit

from contrastkit.encoders import create_encoder
from contrastkit.encoders.hf_clip import HFCLIPModel
from contrastkit.encoders.hf_vision import ImagePreprocess

pytest.importorskip("transformers")


@pytest.mark.parametrize("kind", ["vit", "dinov2", "convnext"])
def test_hf_vision_matches_the_model_on_processed_pixels(tmp_path, kind):
    folder = tiny_vit(tmp_path / kind, kind)
    enc = create_encoder("hf_vision", path=str(folder), pooling="mean").eval()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor([0.48, 0.45, 0.41]).view(1, 3, 1, 1)
    std = torch.tensor([0.27, 0.26, 0.28]).view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = enc.model(pixel_values=(images - mean) / std).last_hidden_state
        ref = hidden.mean((2, 3)) if hidden.ndim == 4 else hidden.mean(1)
        out = enc(images)
    assert out.shape == (3, enc.out_features)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_hf_vision_pooling_cls_and_pooler(tmp_path):
    folder = tiny_vit(tmp_path / "d", "dinov2")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    cls = create_encoder("hf_vision", path=str(folder), pooling="cls").eval()
    pooler = create_encoder("hf_vision", path=str(folder)).eval()  # auto: DINOv2's pooler
    assert pooler.pooling == "pooler"
    with torch.no_grad():
        pixel_values = cls.preprocess(images)
        out = cls.model(pixel_values=pixel_values)
        torch.testing.assert_close(cls(images), out.last_hidden_state[:, 0])
        torch.testing.assert_close(pooler(images), out.pooler_output)
    assert pixel_values.shape == (2, 3, 32, 32)  # resized to the processor's size


def test_hf_vision_takes_grey_images_and_trains(tmp_path):
    folder = tiny_vit(tmp_path / "v", "vit")
    enc = create_encoder("hf_vision", path=str(folder), in_channels=1, pooling="cls")
    enc(torch.rand(2, 1, 28, 28)).sum().backward()
    assert enc.model.embeddings.patch_embeddings.projection.weight.grad is not None


def test_preprocess_shortest_edge_then_centre_crop():
    pre = ImagePreprocess(size=8, crop=(8, 8), mean=(0.0,) * 3, std=(1.0,) * 3, mode="bilinear")
    x = torch.zeros(1, 3, 16, 32)
    x[..., 12:20] = 1.0  # a bar in the middle columns
    out = pre(x)
    assert out.shape == (1, 3, 8, 8)
    assert out[..., 3:5].min() > 0.9 and out[..., 0].max() < 0.1


def test_hf_vision_bad_folders_name_the_key(tmp_path):
    from contrastkit.encoders.text import default_model_path

    with pytest.raises(ValueError, match="model_type = 'bert' is not a vision model"):
        create_encoder("hf_vision", path=str(default_model_path()))
    folder = tiny_vit(tmp_path / "v", "vit")
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"preprocessor_config\.json not found"):
        create_encoder("hf_vision", path=str(folder))
    with pytest.raises(ValueError, match="path must be a local model folder"):
        create_encoder("hf_vision", path=str(tmp_path / "missing"))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_clip_embeds_as_get_features(tmp_path, kind):
    folder = (tiny_clip if kind == "clip" else tiny_siglip)(tmp_path / kind)
    import transformers as tf

    ref = tf.AutoModel.from_pretrained(str(folder)).eval()
    tok = tf.AutoTokenizer.from_pretrained(str(folder))
    model = HFCLIPModel(folder).eval()
    texts = ["a grinning face", "a red apple with a leaf", "cat"]
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor([0.48, 0.45, 0.41]).view(1, 3, 1, 1)
    std = torch.tensor([0.27, 0.26, 0.28]).view(1, 3, 1, 1)
    padding = "max_length" if kind == "siglip" else True
    tokens = tok(
        texts, padding=padding, truncation=True, max_length=model.max_length, return_tensors="pt"
    )
    if kind == "siglip":
        tokens = {"input_ids": tokens["input_ids"]}
    with torch.no_grad():
        want_img = F.normalize(
            ref.get_image_features(pixel_values=(images - mean) / std).pooler_output, dim=-1
        )
        want_txt = F.normalize(ref.get_text_features(**tokens).pooler_output, dim=-1)
        img, txt = model(images, texts)
    torch.testing.assert_close(img, want_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(txt, want_txt, atol=1e-5, rtol=0)
    assert img.shape[1] == model.out_features
    scale = float(ref.logit_scale.exp())
    assert model.initial_temperature == pytest.approx(1 / scale, rel=1e-5)
    if kind == "siglip":
        assert model.initial_bias == pytest.approx(float(ref.logit_bias))
    else:
        assert model.initial_bias is None


def test_hf_clip_refuses_a_single_tower_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match="model_type = 'vit' is not a two-tower model"):
        HFCLIPModel(tiny_vit(tmp_path / "v"))
    model = HFCLIPModel(tiny_clip(tmp_path / "c"))
    with torch.no_grad():
        model.model.text_projection.weight.add_(1.0)
    model.set_logit_scale(0.05)
    out = model.save_pretrained(tmp_path / "out")
    import transformers as tf

    back = tf.CLIPModel.from_pretrained(str(out))
    torch.testing.assert_close(back.text_projection.weight, model.model.text_projection.weight)
    assert float(back.logit_scale.exp()) == pytest.approx(20.0, rel=1e-5)
    assert json.loads((out / "preprocessor_config.json").read_text())["crop_size"]["height"] == 32
