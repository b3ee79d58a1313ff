"""Audio towers: ``audio_cnn`` over log-mel and ``hf_audio`` over tiny random Hugging Face audio
folders written by ``save_pretrained`` here (Wav2Vec2, Whisper's encoder); nothing is
downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit.encoders import create_encoder
from contrastkit.encoders.audio import AudioCNN, frame_mask, masked_mean
from contrastkit.encoders.registry import encoder_spec

transformers = pytest.importorskip("transformers")


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    waves = torch.randn(3, 8000, generator=g) * 0.1
    mask = torch.ones(3, 8000, dtype=torch.bool)
    mask[1, 5000:] = False
    mask[2, 2000:] = False
    return waves * mask, mask


def test_frame_mask_and_masked_mean_from_their_definitions() -> None:
    mask = torch.tensor([[True] * 10 + [False] * 10, [True] * 20])
    assert frame_mask(mask, 4).tolist() == [[True, True, False, False], [True] * 4]
    x = torch.arange(8.0).view(2, 4, 1)
    assert masked_mean(x, frame_mask(mask, 4)).flatten().tolist() == [0.5, 5.5]


def test_audio_cnn_is_registered_shapes_and_ignores_padding() -> None:
    assert encoder_spec("audio_cnn").inputs == "audio"
    enc = create_encoder(
        "audio_cnn", sample_rate=8000, n_mels=32, n_fft=256, hop_length=80, width=4,
        projection_dim=16,
    ).eval()  # fmt: skip
    waves, mask = _batch()
    out = enc(waves, mask)
    assert out.shape == (3, 16) and torch.allclose(out.norm(dim=1), torch.ones(3))
    noisy = waves + (~mask) * torch.randn_like(waves)  # garbage where the mask says padding
    assert torch.allclose(enc(noisy, mask), out, atol=1e-5)
    with pytest.raises(ValueError, match="waveform must be a \\(B, T\\)"):
        enc(torch.zeros(8000))


def test_audio_cnn_trains() -> None:
    enc = AudioCNN(8000, n_mels=16, n_fft=256, hop_length=80, width=4, stages=2)
    waves, mask = _batch()
    enc(waves, mask).sum().backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)


def _wav2vec2(folder: Path, attention_mask: bool = True) -> Path:
    cfg = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.Wav2Vec2Model(cfg).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(
        sampling_rate=16000, do_normalize=True, return_attention_mask=attention_mask
    ).save_pretrained(folder)
    return folder


def _whisper(folder: Path) -> Path:
    cfg = transformers.WhisperConfig(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16,
        max_source_positions=50, vocab_size=100, max_target_positions=20, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.WhisperModel(cfg).save_pretrained(folder)
    transformers.WhisperFeatureExtractor(
        feature_size=16, chunk_length=1, sampling_rate=16000, hop_length=160
    ).save_pretrained(folder)
    return folder


def test_hf_audio_wav2vec2_honours_the_feature_extractor(tmp_path: Path) -> None:
    folder = _wav2vec2(tmp_path / "w2v")
    enc = create_encoder("hf_audio", path=str(folder)).eval()
    assert enc.sample_rate == 16000 and enc.raw_waveform and enc.out_features == 32
    waves, mask = _batch()
    # the torch normalisation equals the extractor's own, clip by clip over its real samples
    extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(folder)
    for w, m, mine in zip(waves, mask, enc._normalise(waves, mask), strict=True):
        ref = extractor(w[m].numpy(), sampling_rate=16000, return_tensors="np")["input_values"][0]
        np.testing.assert_allclose(mine[m].numpy(), ref, atol=1e-4)
    out = enc(waves, mask)
    assert out.shape == (3, 32)
    noisy = waves + (~mask) * torch.randn_like(waves)
    assert torch.allclose(enc(noisy, mask), out, atol=1e-5)  # padding never enters
    alone = enc(waves[2:, :2000], None)  # the short clip unpadded: close (convolutions see edges)
    assert torch.allclose(alone, out[2:], atol=0.05)


def test_hf_audio_whisper_encoder_pools_real_frames(tmp_path: Path) -> None:
    enc = create_encoder("hf_audio", path=str(_whisper(tmp_path / "whisper")), projection_dim=8)
    enc.eval()
    assert not enc.raw_waveform and enc.input_name == "input_features"
    waves, mask = _batch()
    out = enc(waves, mask)
    assert out.shape == (3, 8)
    alone = enc(waves[2:, :2000], None)  # Whisper pads every clip to its window: the same
    assert torch.allclose(alone, out[2:], atol=1e-5)


def test_hf_audio_refuses_a_folder_that_is_not_an_audio_model(tmp_path: Path) -> None:
    text = tmp_path / "bert"
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16,
    )  # fmt: skip
    transformers.BertModel(cfg).save_pretrained(text)
    with pytest.raises(ValueError, match="is not a Hugging Face audio model folder") as err:
        create_encoder("hf_audio", path=str(text))
    assert str(text) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        create_encoder("hf_audio", path=str(tmp_path / "missing"))


def test_audio_cnn_dft_front_end_equals_log_mel() -> None:
    """The front end ONNX export traces (STFT as a convolution) equals data.audio.log_mel."""
    enc = AudioCNN(sample_rate=8000, n_mels=32, n_fft=256, hop_length=80)
    waves, _ = _batch()
    torch.testing.assert_close(enc.dft_log_mel(waves), enc.log_mel(waves), atol=2e-3, rtol=0)
