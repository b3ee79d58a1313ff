"""Batched audio views: crops, gain, noise at an SNR, shifts, SpecAugment masks."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.data.audio import log_mel
from contrastkit.data.audio_views import (
    AudioViews,
    add_noise,
    frequency_mask,
    gain,
    random_crop,
    time_mask,
    time_shift,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tones(b: int = 6, t: int = 8000) -> torch.Tensor:
    time = torch.arange(t) / 8000.0
    freqs = torch.linspace(200.0, 900.0, b)[:, None]
    return 0.3 * torch.sin(2 * math.pi * freqs * time)  # (B, T)


def test_random_crop_windows_stay_inside_real_samples():
    x = torch.arange(100.0).repeat(4, 1)  # (4, 100), value = position
    lengths = torch.tensor([100, 60, 20, 0])
    crops, mask = random_crop(x, 30, lengths=lengths, generator=_gen())
    assert crops.shape == (4, 30) and mask.shape == (4, 30)
    assert mask.sum(1).tolist() == [30, 30, 20, 0]
    for i, n in enumerate(lengths.tolist()):
        real = crops[i][mask[i]]
        if len(real):  # consecutive samples from inside the clip's real part
            assert torch.equal(real, torch.arange(real[0].item(), real[0].item() + len(real)))
            assert real[-1].item() < n
        assert bool((crops[i][~mask[i]] == 0).all())
    again, _ = random_crop(x, 30, lengths=lengths, generator=_gen())
    assert torch.equal(crops, again)
    starts = {int(random_crop(x[:1], 30, generator=g)[0][0, 0]) for g in map(_gen, range(300))}
    assert min(starts) == 0 and max(starts) == 70


def test_gain_in_db():
    x = torch.ones(5, 10)
    y = gain(x, (-12.0, 12.0), generator=_gen())
    db = 20 * torch.log10(y[:, 0])
    assert bool(((db >= -12.0 - 1e-4) & (db <= 12.0 + 1e-4)).all()) and db.std() > 1.0
    assert torch.allclose(y, y[:, :1].expand_as(y))  # one gain per clip
    assert torch.allclose(gain(x, 6.0), x * 10 ** (6 / 20))


@pytest.mark.parametrize("snr", [0.0, 10.0, 25.0])
def test_add_noise_reaches_the_snr(snr):
    x = _tones()
    y = add_noise(x, snr, generator=_gen(1))
    noise = y - x
    measured = 10 * torch.log10(x.square().mean(1) / noise.square().mean(1))
    assert torch.allclose(measured, torch.full_like(measured, snr), atol=1e-3)


def test_add_noise_range_mask_and_given_noise():
    x = _tones()
    y = add_noise(x, (5.0, 15.0), generator=_gen(2))
    measured = 10 * torch.log10(x.square().mean(1) / (y - x).square().mean(1))
    assert bool(((measured > 5.0 - 1e-3) & (measured < 15.0 + 1e-3)).all())
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[:, 6000:] = False
    padded = x * mask
    z = add_noise(padded, 10.0, mask=mask, generator=_gen(3))
    assert bool((z[:, 6000:] == 0).all())  # padding stays silent
    real = mask[0]
    snr = 10 * torch.log10(padded[0, real].square().mean() / (z - padded)[0, real].square().mean())
    assert abs(snr.item() - 10.0) < 1e-3  # power measured over the real samples only
    other = torch.flip(x, dims=[0])  # mix another clip (babble)
    w = add_noise(x, 20.0, noise=other, generator=_gen())
    # equal-power tones at 20 dB: the noise is the other clip scaled by 10 ** (-20 / 20)
    assert torch.allclose(w - x, 0.1 * other, atol=1e-5)
    silent = add_noise(torch.zeros(2, 50), 10.0, generator=_gen())
    assert bool((silent == 0).all())


def test_time_shift_moves_and_fills():
    x = torch.arange(1.0, 11.0).repeat(50, 1)  # (50, 10)
    y = time_shift(x, 3, generator=_gen())
    for row in y:
        first = int((row != 0).nonzero()[0])
        shift = first if first > 0 else -(int(row[0].item()) - 1)
        assert -3 <= shift <= 3
        assert torch.equal(
            row, time_shift(torch.arange(1.0, 11.0)[None], 0)[0].roll(shift) * _valid(shift)
        )
    wrapped = time_shift(x, 3, wrap=True, generator=_gen())
    assert torch.equal(wrapped.sort(1).values, x)  # a rotation keeps every sample


def _valid(shift: int) -> torch.Tensor:
    v = torch.ones(10)
    if shift > 0:
        v[:shift] = 0
    elif shift < 0:
        v[shift:] = 0
    return v


def test_spec_augment_masks():
    spec = log_mel(_tones(4, 16000), 8000, n_fft=256, hop_length=80, n_mels=32)  # (4, 32, 201)
    masked = time_mask(spec, 20, n_masks=2, generator=_gen())
    assert masked.shape == spec.shape
    changed = (masked != spec).any(1)  # (B, F): frames touched
    assert bool((changed.sum(1) <= 40).all()) and changed.sum() > 0
    fill = spec.mean(dim=(1, 2))
    for i in range(4):
        cols = changed[i].nonzero().flatten()
        assert torch.allclose(masked[i][:, cols], fill[i].expand(32, len(cols)))
    freq = frequency_mask(spec, 8, value=-100.0, generator=_gen(4))
    rows = (freq == -100.0).all(2)  # (B, M): whole bands masked
    assert bool((rows.sum(1) <= 8).all()) and rows.sum() > 0
    assert torch.equal(
        freq[~rows[:, :, None].expand_as(freq)], spec[~rows[:, :, None].expand_as(spec)]
    )
    assert torch.equal(time_mask(spec, 0, generator=_gen()), spec)


def test_audio_views_two_views_differ_and_repeat_with_a_seed():
    x = _tones(3, 16000)
    views = AudioViews(4000, max_shift=100)
    v, m = views(x, n_views=2, generator=_gen(7))
    assert v.shape == (2, 3, 4000) and m.shape == (2, 3, 4000)
    assert not torch.allclose(v[0], v[1])
    v2, _ = views(x, n_views=2, generator=_gen(7))
    assert torch.equal(v, v2)


def test_views_reject_bad_shapes():
    with pytest.raises(ValueError, match="waves must be"):
        gain(torch.zeros(10), 3.0)
    with pytest.raises(ValueError, match="spec must be"):
        time_mask(torch.zeros(2, 10), 3)
    with pytest.raises(ValueError, match="snr_db"):
        add_noise(torch.zeros(2, 10), (20.0, 10.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_views_run_on_cuda():
    x = _tones().cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    y = add_noise(gain(x, 3.0, generator=g), 10.0, generator=g)
    crops, mask = random_crop(y, 2000, generator=g)
    spec = time_mask(log_mel(crops, 8000, n_fft=256, hop_length=80), 5, generator=g)
    assert spec.device.type == "cuda" and mask.device.type == "cuda"
