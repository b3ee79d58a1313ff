"""Decoding, resampling, cropping and the log-mel front end for audio.

Every audio file the library or the service reads is decoded by :func:`load_audio`:
``soundfile`` (libsndfile: WAV, FLAC, OGG/Vorbis, MP3 where the installed libsndfile reads
it, and the other formats of ``soundfile.available_formats()``), mixed to mono float32 and
resampled with ``soxr`` (a maintained polyphase/FFT resampler; torchaudio does not install
beside this torch build). Anything that does not decode (an empty file, a text file named
``.wav``, a WAV with no samples, a rate the resampler refuses) is one :class:`AudioError`
naming the file and the fix, never a decoder traceback.

:func:`log_mel` is the front end: a batched torch implementation, CPU or CUDA (the device
follows the input), equal to ``librosa.feature.melspectrogram(power=2.0, center=True,
pad_mode="constant", htk=False, norm="slaney")`` followed by ``librosa.power_to_db(ref=1.0,
amin=1e-10, top_db=80.0)`` clip by clip (within 1e-4 dB in float64; see its docstring).

Shapes: ``T`` samples, ``B`` clips, ``M`` mel bands, ``F`` frames (``1 + T // hop_length``).

>>> import numpy as np, soundfile, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "tone.wav")
>>> t = np.arange(16000) / 16000
>>> soundfile.write(path, np.sin(2 * np.pi * 440 * t).astype(np.float32), 16000)
>>> wave, rate = load_audio(path, sample_rate=8000)
>>> wave.shape, wave.dtype, rate
((8000,), dtype('float32'), 8000)
>>> log_mel(torch.from_numpy(wave), rate, n_fft=256, hop_length=80, n_mels=32).shape
torch.Size([1, 32, 101])
"""

from __future__ import annotations

import functools
import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "AUDIO_SUFFIXES",
    "MAX_RESAMPLE_RATIO",
    "AudioError",
    "crop_or_pad",
    "load_audio",
    "log_mel",
    "mel_filterbank",
    "power_to_db",
    "resample",
]

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au"})
"""File suffixes an audio folder lists (what libsndfile decodes)."""
MAX_RESAMPLE_RATIO = 256.0
"""The largest up- or down-sampling factor :func:`resample` accepts (soxr itself accepts
larger ones but then allocates without bound: 1 Hz -> 16 kHz is a 16000x blow-up)."""
_MAX_RATE = 1_000_000


class AudioError(ValueError):
    """Bytes or a file that do not decode as audio, or a rate the resampler refuses; the message
    names the source and the fix (the CLI exits 2, the service answers 400)."""


def _check_rate(name: str, rate: object, source: str | None = None) -> int:
    ok = isinstance(rate, (int, np.integer)) and not isinstance(rate, bool)
    if not ok or not 1 <= int(rate) <= _MAX_RATE:  # type: ignore[arg-type]
        where = f"{source}: " if source else ""
        raise AudioError(
            f"{where}{name} must be a whole number of Hz in [1, {_MAX_RATE}], got {rate!r}; "
            "pass e.g. 16000."
        )
    return int(rate)  # type: ignore[arg-type]


def resample(
    wave: np.ndarray, orig_rate: int, new_rate: int, *, name: str | None = None
) -> np.ndarray:
    """Resample ``wave: (..., T)`` along its last axis from ``orig_rate`` to ``new_rate`` Hz with
    soxr (high quality, linear phase). Returns ``(..., T')`` with ``T' = ceil(T * new / orig)``
    (soxr's length), in ``wave``'s dtype (float32 or float64; other dtypes become float32).

    Raises:
        AudioError: a rate that is not a whole number of Hz in [1, 1e6], or a ratio beyond
            :data:`MAX_RESAMPLE_RATIO` (``name`` labels the source in the message).

    >>> t = np.arange(8000) / 8000
    >>> y = resample(np.sin(2 * np.pi * 100 * t), 8000, 16000)
    >>> y.shape, bool(np.abs(y[1000:-1000] - np.sin(2 * np.pi * 100 * np.arange(16000) / 16000)[1000:-1000]).max() < 1e-3)
    ((16000,), True)
    """
    import soxr

    orig_rate = _check_rate("orig_rate", orig_rate, name)
    new_rate = _check_rate("new_rate", new_rate, name)
    ratio = new_rate / orig_rate
    if not 1 / MAX_RESAMPLE_RATIO <= ratio <= MAX_RESAMPLE_RATIO:
        where = f"{name}: " if name else ""
        raise AudioError(
            f"{where}resampling {orig_rate} Hz to {new_rate} Hz is a factor of "
            f"{max(ratio, 1 / ratio):g}, beyond the {MAX_RESAMPLE_RATIO:g} the resampler allows; "
            "pass a file recorded at a usual rate (8000-96000 Hz)."
        )
    wave = np.asarray(wave)
    if wave.dtype not in (np.float32, np.float64):
        wave = wave.astype(np.float32)
    if orig_rate == new_rate:
        return wave.copy()
    if wave.ndim == 0:
        raise ValueError("wave must have a time axis (..., T), got a scalar.")
    lead = wave.shape[:-1]
    flat = wave.reshape(-1, wave.shape[-1])  # (N, T)
    if flat.shape[1] == 0:
        return np.zeros((*lead, 0), dtype=wave.dtype)
    out = soxr.resample(np.ascontiguousarray(flat.T), orig_rate, new_rate)  # (T', N)
    out = np.asarray(out).reshape(-1, flat.shape[0]).T  # (N, T')
    return np.ascontiguousarray(out.reshape(*lead, out.shape[-1]).astype(wave.dtype, copy=False))


def load_audio(
    source: str | os.PathLike | bytes,
    sample_rate: int | None = None,
    *,
    name: str | None = None,
) -> tuple[np.ndarray, int]:
    """Decode ``source`` (a path or the encoded bytes of a file) to mono float32.

    Channels are averaged; with ``sample_rate`` the clip is resampled to it with soxr
    (:func:`resample`). Returns ``(wave, rate)``: ``wave: (T,)`` float32, ``rate`` in Hz (the
    file's own rate when ``sample_rate`` is None).

    Raises:
        FileNotFoundError: the path does not exist.
        AudioError: not decodable (empty file, a text file named ``.wav``, an unknown format), a
            file with no samples, or a rate the resampler refuses; the message names ``name``
            (default: the path, or ``"audio bytes"``).
    """
    import soundfile

    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "audio bytes"
        handle: io.BytesIO | str = io.BytesIO(bytes(source))
        if not source:
            raise AudioError(
                f"{label}: empty (0 bytes), not audio; pass a WAV, FLAC, OGG or MP3 file."
            )
    else:
        path = Path(source)
        label = name or str(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{label}: no such audio file; pass the path of a WAV, FLAC, OGG or MP3 file."
            )
        if path.stat().st_size == 0:
            raise AudioError(
                f"{label}: empty file (0 bytes), not audio; pass a WAV, FLAC, OGG or MP3 file."
            )
        handle = str(path)
    try:
        data, rate = soundfile.read(handle, dtype="float32", always_2d=True)  # (T, C)
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError, EOFError) as err:
        raise AudioError(
            f"{label}: not a readable audio file ({_short(err)}); pass a WAV, FLAC, OGG or MP3 file."
        ) from None
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"{label}: the file holds no samples; pass a non-empty recording.")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]  # (T,)
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if not np.isfinite(wave).all():
        raise AudioError(f"{label}: holds NaN or infinite samples; pass a clean recording.")
    if sample_rate is not None:
        target = _check_rate("sample_rate", sample_rate, label)
        if target != rate:
            wave = resample(wave, rate, target, name=label)
            rate = target
    return wave, int(rate)


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def crop_or_pad(
    wave: Tensor, length: int, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """A fixed-length window of ``wave: (T,)``: ``(clip: (length,), mask: (length,) bool)``.

    A longer clip is cropped: at a random start drawn from ``generator`` when one is given
    (training), else the centre window (evaluation; deterministic). A shorter clip is padded
    with zeros at the end, where ``mask`` is False (True marks real samples).

    >>> clip, mask = crop_or_pad(torch.arange(1.0, 4.0), 5)
    >>> clip.tolist(), mask.tolist()
    ([1.0, 2.0, 3.0, 0.0, 0.0], [True, True, True, False, False])
    >>> crop_or_pad(torch.arange(10.0), 4)[0].tolist()
    [3.0, 4.0, 5.0, 6.0]
    """
    if not isinstance(wave, Tensor) or wave.ndim != 1:
        shape = tuple(wave.shape) if isinstance(wave, Tensor) else type(wave).__name__
        raise ValueError(f"wave must be a (T,) tensor, got {shape}; pass one mono clip.")
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be an int >= 1 (samples), got {length!r}.")
    t = wave.shape[0]
    if t >= length:
        if generator is None:
            start = (t - length) // 2
        else:
            start = int(torch.randint(0, t - length + 1, (1,), generator=generator))
        return wave[start : start + length].clone(), torch.ones(
            length, dtype=torch.bool, device=wave.device
        )
    clip = wave.new_zeros(length)
    clip[:t] = wave
    mask = torch.zeros(length, dtype=torch.bool, device=wave.device)
    mask[:t] = True
    return clip, mask


# ---------------------------------------------------------------- log-mel front end


def _hz_to_mel(f: Tensor) -> Tensor:
    """Slaney's mel scale (librosa ``htk=False``): linear below 1 kHz (200/3 Hz per mel), log above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    lin = f / f_sp
    log = min_log_mel + torch.log(torch.clamp(f, min=min_log_hz) / min_log_hz) / logstep
    return torch.where(f >= min_log_hz, log, lin)


def _mel_to_hz(m: Tensor) -> Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    lin = f_sp * m
    log = min_log_hz * torch.exp(logstep * (m - min_log_mel))
    return torch.where(m >= min_log_mel, log, lin)


@functools.lru_cache(maxsize=32)
def _filterbank_cpu(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float
) -> Tensor:
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * (
        sample_rate / n_fft
    )  # (n_fft//2+1,)
    lo, hi = _hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64)).tolist()
    mel_f = _mel_to_hz(torch.linspace(lo, hi, n_mels + 2, dtype=torch.float64))  # (M+2,) band edges
    fdiff = mel_f[1:] - mel_f[:-1]  # (M+1,)
    ramps = mel_f[:, None] - freqs[None, :]  # (M+2, n_fft//2+1)
    lower = -ramps[:-2] / fdiff[:-1, None]  # (M, n_fft//2+1)
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    enorm = 2.0 / (mel_f[2:] - mel_f[:-2])  # Slaney: each triangle has unit area
    return weights * enorm[:, None]  # (M, n_fft//2+1)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int = 64,
    f_min: float = 0.0,
    f_max: float | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Slaney-normalised triangular mel filters ``(n_mels, n_fft // 2 + 1)``, librosa's
    ``filters.mel(htk=False, norm="slaney")``: ``n_mels + 2`` edges equally spaced on Slaney's
    mel scale from ``f_min`` to ``f_max`` (default ``sample_rate / 2``); filter m rises from edge
    m to m+1 and falls to m+2, scaled by ``2 / (edge[m+2] - edge[m])`` (built in float64).

    >>> fb = mel_filterbank(16000, 512, n_mels=40)
    >>> tuple(fb.shape), bool((fb >= 0).all())
    ((40, 257), True)
    """
    f_max = sample_rate / 2 if f_max is None else float(f_max)
    fb = _filterbank_cpu(int(sample_rate), int(n_fft), int(n_mels), float(f_min), f_max)
    return fb.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=8)
def _hann_cpu(n_fft: int) -> Tensor:
    return torch.hann_window(
        n_fft, periodic=True, dtype=torch.float64
    )  # scipy's "hann", fftbins=True


def power_to_db(power: Tensor, *, amin: float = 1e-10, top_db: float | None = 80.0) -> Tensor:
    """``10 * log10(max(power, amin))`` (librosa ``power_to_db`` with ``ref=1.0``) for ``power:
    (B, M, F)``, then, when ``top_db`` is set, each clip floored at its own maximum minus
    ``top_db`` (librosa floors at the maximum of the whole array it is given: equal for one clip,
    and per clip here so a loud clip never raises the floor of a quiet one in the same batch).

    >>> power_to_db(torch.tensor([[[1.0, 1e-12]]]), top_db=None).tolist()
    [[[0.0, -100.0]]]
    >>> power_to_db(torch.tensor([[[1.0, 1e-12]]])).tolist()
    [[[0.0, -80.0]]]
    """
    if amin <= 0:
        raise ValueError(f"amin must be > 0 (the floor before the log), got {amin!r}.")
    db = 10.0 * torch.log10(torch.clamp(power, min=amin))
    if top_db is not None:
        if top_db < 0:
            raise ValueError(f"top_db must be >= 0 or None, got {top_db!r}.")
        peak = db.amax(dim=tuple(range(1, db.ndim)), keepdim=True)  # (B, 1, 1): per clip
        db = torch.maximum(db, peak - top_db)
    return db


def log_mel(
    waveform: Tensor,
    sample_rate: int,
    n_fft: int = 1024,
    hop_length: int = 320,
    n_mels: int = 64,
    f_min: float = 0.0,
    f_max: float | None = None,
    top_db: float | None = 80.0,
) -> Tensor:
    """Log-mel spectrogram in dB: ``waveform: (B, T)`` or ``(T,)`` -> ``(B, n_mels, F)`` with
    ``F = 1 + T // hop_length``, on the input's device and in its dtype (float32 or float64).

    The power STFT (periodic Hann window of ``n_fft``, hop ``hop_length``, frames centred with
    ``n_fft // 2`` zeros padded at both ends) is projected on :func:`mel_filterbank` and turned
    into dB by :func:`power_to_db` (``amin=1e-10``, ``top_db`` per clip). Each clip equals
    ``librosa.power_to_db(librosa.feature.melspectrogram(y=clip, sr=sample_rate, n_fft=n_fft,
    hop_length=hop_length, n_mels=n_mels, fmin=f_min, fmax=f_max, power=2.0),
    ref=1.0, amin=1e-10, top_db=top_db)``: within 1e-4 dB for float64 input (measured ~4e-7 dB,
    the float32 rounding of librosa's filterbank; tests/data/test_audio.py). Float32 input runs
    a float32 FFT (4.6x faster than float64 on CPU) whose rounding shows in bins far below the
    clip's peak: up to ~2e-3 dB from librosa on real speech (librosa's FFT runs in float64 even
    for float32 input); pass float64 where exact parity matters.

    >>> x = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
    >>> log_mel(x, 16000, n_fft=400, hop_length=160, n_mels=40).shape
    torch.Size([2, 40, 26])
    """
    if not isinstance(waveform, Tensor) or waveform.ndim not in (1, 2):
        shape = tuple(waveform.shape) if isinstance(waveform, Tensor) else type(waveform).__name__
        raise ValueError(f"waveform must be a (B, T) or (T,) tensor, got {shape}.")
    if not waveform.dtype.is_floating_point:
        raise TypeError(f"waveform must be float32 or float64, got {waveform.dtype}.")
    sample_rate = _check_rate("sample_rate", sample_rate)
    for arg, value in (("n_fft", n_fft), ("hop_length", hop_length), ("n_mels", n_mels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be an int >= 1, got {value!r}.")
    f_hi = sample_rate / 2 if f_max is None else float(f_max)
    if not 0.0 <= f_min < f_hi <= sample_rate / 2:
        raise ValueError(
            f"need 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2:g}, got f_min={f_min!r}, "
            f"f_max={f_max!r}; leave f_max=None for the Nyquist frequency."
        )
    x = waveform.unsqueeze(0) if waveform.ndim == 1 else waveform  # (B, T)
    if x.shape[-1] < 1:
        raise ValueError("waveform has no samples (T = 0); pass at least one sample per clip.")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    window = _hann_cpu(n_fft).to(device=x.device, dtype=x.dtype)
    fb = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_hi, dtype=x.dtype, device=x.device)
    if x.device.type == "cpu" and len(x) > _CPU_CLIPS:  # a few clips at a time (see _CPU_CLIPS)
        parts = [_log_mel(x[i : i + _CPU_CLIPS], window, fb, n_fft, hop_length, top_db)
                 for i in range(0, len(x), _CPU_CLIPS)]  # fmt: skip
        return torch.cat(parts)  # (B, M, F)
    return _log_mel(x, window, fb, n_fft, hop_length, top_db)


_CPU_CLIPS = 4
"""Clips per STFT on CPU. A whole batch's complex STFT (64 clips of 2 s: 26 MB) comes from
glibc's heap once its mmap threshold has risen, and fragments it: the peak memory of an epoch
grew with the clips read (758 -> 899 MiB PSS from 5,000 to 20,000 clips, 745-849 clips/s).
Four clips at a time: 343 -> 381 MiB at 1,126-1,280 clips/s (benchmarks/bench_audio_data.py,
docs/audio_data.md). Each clip's result does not depend on its neighbours, so it is the same."""


def _log_mel(
    x: Tensor, window: Tensor, fb: Tensor, n_fft: int, hop_length: int, top_db: float | None
) -> Tensor:
    """``x: (B, T)`` -> ``(B, M, F)`` dB (the body of :func:`log_mel`)."""
    spec = torch.stft(
        x,
        n_fft,
        hop_length=hop_length,
        win_length=n_fft,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )  # (B, n_fft//2+1, F)
    power = spec.real.square() + spec.imag.square()  # (B, n_fft//2+1, F)
    mel = torch.matmul(fb, power)  # (B, M, F)
    return power_to_db(mel, amin=1e-10, top_db=top_db)
