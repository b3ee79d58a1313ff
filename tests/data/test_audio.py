"""Audio decoding, resampling, crops and the log-mel front end.

Files are written by soundfile into tmp_path (WAV, FLAC, OGG); the front end is checked against
librosa (the test oracle: ``feature.melspectrogram`` then ``power_to_db``) on several configs.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from contrastkit.data.audio import (
    MAX_RESAMPLE_RATIO,
    AudioError,
    crop_or_pad,
    load_audio,
    log_mel,
    mel_filterbank,
    power_to_db,
    resample,
)

librosa = pytest.importorskip("librosa")


def _sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# -- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "subtype", "tol"),
    [
        (".wav", "FLOAT", 0.0),
        (".wav", "PCM_16", 1e-4),
        (".flac", "PCM_24", 1e-6),
        (".ogg", "VORBIS", None),
    ],
)
def test_decodes_formats_written_by_soundfile(tmp_path, suffix, subtype, tol):
    wave = _sine(440.0, 16000, 0.5)
    path = tmp_path / f"tone{suffix}"
    soundfile.write(path, wave, 16000, subtype=subtype)
    got, rate = load_audio(path)
    assert rate == 16000 and got.dtype == np.float32 and got.ndim == 1
    if tol is None:  # lossy Vorbis: same length and close in energy and shape
        assert abs(len(got) - len(wave)) < 2048
        n = min(len(got), len(wave))
        corr = np.corrcoef(got[:n], wave[:n])[0, 1]
        assert corr > 0.95
    else:
        assert got.shape == wave.shape
        np.testing.assert_allclose(got, wave, atol=tol)


def test_bytes_decode_like_the_file(tmp_path):
    path = tmp_path / "a.flac"
    soundfile.write(path, _sine(220.0, 8000, 0.25), 8000)
    from_file, _ = load_audio(path)
    from_bytes, rate = load_audio(path.read_bytes(), name="upload")
    assert rate == 8000 and np.array_equal(from_file, from_bytes)


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = _sine(300.0, 16000, 0.2), _sine(700.0, 16000, 0.2, amplitude=0.25)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    got, _ = load_audio(path)
    np.testing.assert_allclose(got, (left + right) / 2, atol=1e-7)


def test_resampling_matches_an_analytic_sine(tmp_path):
    path = tmp_path / "tone.wav"
    soundfile.write(path, _sine(440.0, 44100, 1.0), 44100, subtype="FLOAT")
    got, rate = load_audio(path, sample_rate=16000)
    assert rate == 16000 and got.shape == (16000,)
    want = _sine(440.0, 16000, 1.0)
    inner = slice(500, -500)  # away from the filter's edge transients
    assert np.abs(got[inner] - want[inner]).max() < 1e-3


def test_resample_batches_along_the_last_axis():
    x = np.stack([_sine(100.0, 8000, 0.5), _sine(200.0, 8000, 0.5)])  # (2, 4000)
    batch = resample(x, 8000, 22050)
    assert batch.shape == (2, 11025) and batch.dtype == np.float32
    one = resample(x[1], 8000, 22050)
    np.testing.assert_allclose(batch[1], one, atol=1e-6)
    assert resample(x, 8000, 8000).shape == x.shape


# -- bad inputs: one line naming the file ---------------------------------------------------


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_empty_file_is_named(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert str(path) in _one_line(err) and "empty" in str(err.value)


def test_text_file_named_wav_is_named(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are my notes, not a recording\n")
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert str(path) in _one_line(err) and "not a readable audio file" in str(err.value)


def test_wav_with_no_samples_is_named(tmp_path):
    path = tmp_path / "silent.wav"
    soundfile.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert str(path) in _one_line(err) and "no samples" in str(err.value)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_audio(tmp_path / "nope.wav")
    assert "nope.wav" in _one_line(err)


def test_upload_bytes_not_audio():
    with pytest.raises(AudioError) as err:
        load_audio(b"GIF89a not a sound", name="upload")
    assert _one_line(err).startswith("upload: not a readable audio file")


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, True, 10**9])
def test_rates_the_resampler_refuses(tmp_path, rate):
    path = tmp_path / "tone.wav"
    soundfile.write(path, _sine(440.0, 8000, 0.1), 8000)
    with pytest.raises(AudioError) as err:
        load_audio(path, sample_rate=rate)
    assert str(path) in _one_line(err) and "sample_rate" in str(err.value)


def test_ratio_beyond_the_limit_is_refused(tmp_path):
    path = tmp_path / "low.wav"
    soundfile.write(path, _sine(1.0, 50, 1.0), 50)  # a 50 Hz file (valid WAV), asked at 48 kHz
    with pytest.raises(AudioError) as err:
        load_audio(path, sample_rate=48000)
    assert str(path) in _one_line(err) and f"{MAX_RESAMPLE_RATIO:g}" in str(err.value)


# -- crop / pad -------------------------------------------------------------------------------


def test_crop_or_pad_masks_and_windows():
    wave = torch.arange(10.0)
    clip, mask = crop_or_pad(wave, 14)
    assert clip.tolist() == [*range(10), 0, 0, 0, 0] and mask.tolist() == [True] * 10 + [False] * 4
    centre, mask = crop_or_pad(wave, 4)
    assert centre.tolist() == [3.0, 4.0, 5.0, 6.0] and bool(mask.all())
    g = torch.Generator().manual_seed(0)
    starts = {int(crop_or_pad(wave, 4, generator=g)[0][0]) for _ in range(200)}
    assert starts == set(range(7))  # every start 0..6 is drawn, no window leaves the clip
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(crop_or_pad(wave, 4, generator=g1)[0], crop_or_pad(wave, 4, generator=g2)[0])
    same, mask = crop_or_pad(wave, 10)
    assert torch.equal(same, wave) and bool(mask.all())


def test_crop_or_pad_rejects_bad_arguments():
    with pytest.raises(ValueError, match="wave must be a"):
        crop_or_pad(torch.zeros(2, 5), 3)
    with pytest.raises(ValueError, match="length must be"):
        crop_or_pad(torch.zeros(5), 0)


# -- log-mel against librosa --------------------------------------------------------------------

CONFIGS = [  # sample_rate, n_fft, hop, n_mels, f_min, f_max, top_db, T
    (16000, 1024, 320, 64, 0.0, None, 80.0, 16000),
    (22050, 512, 128, 40, 50.0, 8000.0, 80.0, 5000),
    (16000, 400, 160, 80, 0.0, None, None, 3999),
    (48000, 2048, 480, 128, 20.0, None, 60.0, 20000),
    (8000, 256, 80, 32, 0.0, 4000.0, 80.0, 257),
]


def _librosa_log_mel(y, sr, n_fft, hop, n_mels, f_min, f_max, top_db):
    power = librosa.feature.melspectrogram(
        y=y, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels, fmin=f_min, fmax=f_max, power=2.0
    )
    return librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=top_db)


def _clips(b: int, t: int, rate: int, dtype) -> np.ndarray:
    """Speech-like test clips: a chirp, noise with a loud/quiet envelope, silence at the end."""
    rng = np.random.default_rng(0)
    time = np.arange(t) / rate
    out = []
    for i in range(b):
        chirp = np.sin(2 * np.pi * (200 + 2000 * time) * time) * (0.2 + i)
        noise = rng.standard_normal(t) * np.linspace(1.0, 1e-3, t)
        y = chirp + noise
        y[int(0.9 * t) :] = 0.0
        out.append(y)
    return np.stack(out).astype(dtype)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, 1e-4), (np.float32, 1e-3)])
def test_log_mel_equals_librosa(config, dtype, tol):
    sr, n_fft, hop, n_mels, f_min, f_max, top_db, t = config
    clips = _clips(3, t, sr, dtype)  # (3, T), amplitudes differ per clip
    got = log_mel(torch.from_numpy(clips), sr, n_fft, hop, n_mels, f_min, f_max, top_db)
    assert got.shape == (3, n_mels, 1 + t // hop) and got.dtype == torch.from_numpy(clips).dtype
    for i in range(3):  # top_db is per clip: each equals librosa on that clip alone
        want = _librosa_log_mel(clips[i], sr, n_fft, hop, n_mels, f_min, f_max, top_db)
        assert np.abs(got[i].numpy() - want).max() < tol


def test_log_mel_single_clip_and_filterbank_equal_librosa():
    y = _clips(1, 8000, 16000, np.float64)[0]
    got = log_mel(torch.from_numpy(y), 16000, n_fft=512, hop_length=160, n_mels=40)
    want = _librosa_log_mel(y, 16000, 512, 160, 40, 0.0, None, 80.0)
    assert got.shape == (1, 40, 51) and np.abs(got[0].numpy() - want).max() < 1e-4
    fb = mel_filterbank(22050, 1024, 96, 30.0, 9000.0, dtype=torch.float64).numpy()
    ref = librosa.filters.mel(
        sr=22050, n_fft=1024, n_mels=96, fmin=30.0, fmax=9000.0, dtype=np.float64
    )
    np.testing.assert_allclose(fb, ref, rtol=1e-10, atol=1e-14)


def test_power_to_db_floors_each_clip_at_its_own_peak():
    power = torch.stack([torch.full((2, 3), 1.0), torch.full((2, 3), 1e-6)])  # (2, 2, 3)
    power[0, 0, 0], power[1, 0, 0] = 1e-12, 1e-15
    db = power_to_db(power, top_db=30.0)
    assert db[0, 0, 0].item() == pytest.approx(-30.0) and db[1, 0, 0].item() == pytest.approx(-90.0)


def test_log_mel_is_differentiable_and_rejects_bad_input():
    x = torch.randn(2, 1600, dtype=torch.float64, requires_grad=True)
    log_mel(x, 16000, n_fft=256, hop_length=80, n_mels=16, top_db=None).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="waveform must be"):
        log_mel(torch.zeros(1, 2, 3), 16000)
    with pytest.raises(ValueError, match="f_max"):
        log_mel(torch.zeros(100), 16000, f_max=9000.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        log_mel(torch.zeros(100, dtype=torch.int16), 16000)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_log_mel_on_cuda_matches_cpu():
    x = torch.from_numpy(_clips(4, 16000, 16000, np.float32))
    cpu = log_mel(x, 16000)
    gpu = log_mel(x.cuda(), 16000)
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max().item() < 1e-2
