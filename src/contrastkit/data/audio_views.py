"""Random views of an audio batch: batched, GPU-capable transforms for waveforms and log-mels.

Waveform transforms take ``waves: (B, T)``; SpecAugment masks take ``spec: (B, M, F)`` (a
:func:`contrastkit.data.audio.log_mel`). Every clip in the batch gets its own random parameters
in one batched call, drawn from ``generator`` (reproducible, the global RNG untouched). Small
parameter tensors are drawn on the generator's device and moved to the input's; for the
noise of :func:`add_noise` pass a generator on the input's device to avoid a host copy.

COLA (Saeed et al. 2021, https://arxiv.org/abs/2010.10915) makes a positive pair from two
random crops of one clip; BYOL-A (Niizumi et al. 2021, https://arxiv.org/abs/2103.06695) adds
gain/mixing noise; SpecAugment (Park et al. 2019, https://arxiv.org/abs/1904.08779) masks
time and frequency stripes of the log-mel. :class:`AudioViews` composes the waveform steps.

>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(4, 16000, generator=g)
>>> crops, mask = random_crop(x, 8000, generator=g)
>>> crops.shape, bool(mask.all())
(torch.Size([4, 8000]), True)
>>> add_noise(crops, snr_db=10.0, generator=g).shape
torch.Size([4, 8000])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "AudioViews",
    "add_noise",
    "frequency_mask",
    "gain",
    "random_crop",
    "time_mask",
    "time_shift",
]


def _check_waves(waves: object, name: str = "waves") -> Tensor:
    if not isinstance(waves, Tensor) or waves.ndim != 2 or not waves.dtype.is_floating_point:
        shape = tuple(waves.shape) if isinstance(waves, Tensor) else type(waves).__name__
        raise ValueError(f"{name} must be a float (B, T) tensor of waveforms, got {shape}.")
    return waves


def _check_spec(spec: object) -> Tensor:
    if not isinstance(spec, Tensor) or spec.ndim != 3 or not spec.dtype.is_floating_point:
        shape = tuple(spec.shape) if isinstance(spec, Tensor) else type(spec).__name__
        raise ValueError(f"spec must be a float (B, n_mels, frames) log-mel tensor, got {shape}.")
    return spec


def _uniform(b: int, low: float, high: float, generator: torch.Generator | None, device) -> Tensor:
    """(B,) float32 uniform in [low, high], drawn on the generator's device, moved to ``device``."""
    gen_device = generator.device if generator is not None else "cpu"
    u = torch.rand(b, generator=generator, device=gen_device)
    return (low + (high - low) * u).to(device)


def _randint(b: int, high: Tensor, generator: torch.Generator | None, device) -> Tensor:
    """(B,) long with entry i uniform in [0, high[i]] (inclusive), ``high: (B,)`` long >= 0."""
    gen_device = generator.device if generator is not None else "cpu"
    u = torch.rand(b, generator=generator, device=gen_device, dtype=torch.float64).to(device)
    return torch.minimum((u * (high.to(device) + 1).double()).long(), high.to(device))


def _check_range(
    name: str, value: object, *, low_bound: float | None = None
) -> tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) for v in value)
        and value[0] <= value[1]
    )
    if not ok or (low_bound is not None and value[0] < low_bound):  # type: ignore[index]
        raise ValueError(
            f"{name} must be a number or a (low, high) pair with low <= high"
            f"{'' if low_bound is None else f' and low >= {low_bound:g}'}, got {value!r}."
        )
    return float(value[0]), float(value[1])  # type: ignore[index]


def random_crop(
    waves: Tensor,
    length: int,
    *,
    lengths: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """A random window of ``length`` samples of every clip: ``(crops: (B, length), mask: (B,
    length) bool)``.

    ``lengths: (B,)`` are the clips' real lengths (default: all ``T``; e.g. ``mask.sum(1)`` from
    :func:`~contrastkit.data.audio.crop_or_pad`): the start is uniform in ``[0, max(len - length,
    0)]`` so the window stays inside the real samples; samples past a clip's end are zero with
    mask False. Two calls give COLA's two views of one clip.

    >>> x = torch.arange(10.0).repeat(2, 1)
    >>> c, m = random_crop(x, 4, lengths=torch.tensor([10, 2]), generator=torch.Generator().manual_seed(0))
    >>> c[1].tolist(), m[1].tolist()
    ([0.0, 1.0, 0.0, 0.0], [True, True, False, False])
    """
    waves = _check_waves(waves)
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be an int >= 1 (samples), got {length!r}.")
    b, t = waves.shape
    if lengths is None:
        lengths = torch.full((b,), t, dtype=torch.long, device=waves.device)
    else:
        if not isinstance(lengths, Tensor) or lengths.shape != (b,):
            raise ValueError(
                f"lengths must be a ({b},) tensor of real clip lengths, got {lengths!r}."
            )
        lengths = lengths.to(device=waves.device, dtype=torch.long).clamp(0, t)
    start = _randint(b, (lengths - length).clamp(min=0), generator, waves.device)  # (B,)
    idx = start[:, None] + torch.arange(length, device=waves.device)[None, :]  # (B, length)
    mask = idx < lengths[:, None]  # (B, length)
    crops = torch.gather(waves, 1, idx.clamp(max=t - 1)) if t > 0 else waves.new_zeros(b, length)
    return crops * mask, mask


def gain(
    waves: Tensor,
    db: float | tuple[float, float] = (-6.0, 6.0),
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Scale each clip by a random gain: ``waves * 10 ** (g / 20)``, ``g`` uniform in ``db``
    (a ``(low, high)`` range in dB, or one number). Returns ``(B, T)``.

    >>> gain(torch.ones(1, 3), 20.0).tolist()
    [[10.0, 10.0, 10.0]]
    """
    waves = _check_waves(waves)
    lo, hi = _check_range("db", db)
    g = _uniform(waves.shape[0], lo, hi, generator, waves.device)  # (B,) dB
    return waves * torch.pow(10.0, g / 20.0).to(waves.dtype)[:, None]


def add_noise(
    waves: Tensor,
    snr_db: float | tuple[float, float] = (5.0, 30.0),
    *,
    noise: Tensor | None = None,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Add noise at a signal-to-noise ratio: ``waves + s * noise`` with ``s`` chosen per clip so
    that ``mean(waves**2) / mean((s * noise)**2) = 10 ** (snr / 10)``, ``snr`` uniform in
    ``snr_db`` (a ``(low, high)`` range in dB, or one number).

    ``noise: (B, T)`` is the noise to mix (e.g. other clips, babble); default white Gaussian.
    ``mask: (B, T)`` bool marks the real samples: powers are measured over them and padding
    stays zero. A silent clip stays silent. Returns ``(B, T)``.
    """
    waves = _check_waves(waves)
    lo, hi = _check_range("snr_db", snr_db)
    b, t = waves.shape
    if noise is None:
        gen_device = generator.device if generator is not None else waves.device
        noise = torch.randn(b, t, generator=generator, device=gen_device, dtype=waves.dtype).to(
            waves.device
        )
    else:
        noise = _check_waves(noise, "noise")
        if noise.shape != waves.shape:
            raise ValueError(
                f"noise must have the shape of waves {tuple(waves.shape)}, got {tuple(noise.shape)}."
            )
        noise = noise.to(device=waves.device, dtype=waves.dtype)
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.shape != waves.shape:
            raise ValueError(f"mask must be a bool tensor shaped like waves {tuple(waves.shape)}.")
        m = mask.to(device=waves.device, dtype=waves.dtype)
        noise = noise * m
        count = m.sum(1).clamp(min=1)  # (B,)
    else:
        count = torch.full((b,), float(max(t, 1)), device=waves.device, dtype=waves.dtype)
    signal_power = waves.square().sum(1) / count  # (B,)
    noise_power = noise.square().sum(1) / count  # (B,)
    snr = _uniform(b, lo, hi, generator, waves.device).to(waves.dtype)  # (B,) dB
    scale = torch.sqrt(signal_power / (noise_power.clamp(min=1e-20) * torch.pow(10.0, snr / 10.0)))
    return waves + scale[:, None] * noise


def time_shift(
    waves: Tensor, max_shift: int, *, wrap: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """Shift each clip by a random whole number of samples in ``[-max_shift, max_shift]``:
    later (positive) or earlier (negative), zero-filled, or rotated when ``wrap``. ``(B, T)``.

    >>> time_shift(torch.arange(1.0, 5.0)[None], 0).tolist()
    [[1.0, 2.0, 3.0, 4.0]]
    """
    waves = _check_waves(waves)
    if not isinstance(max_shift, int) or isinstance(max_shift, bool) or max_shift < 0:
        raise ValueError(f"max_shift must be an int >= 0 (samples), got {max_shift!r}.")
    b, t = waves.shape
    high = torch.full((b,), 2 * max_shift, dtype=torch.long)
    shift = _randint(b, high, generator, waves.device) - max_shift  # (B,) in [-max, max]
    src = torch.arange(t, device=waves.device)[None, :] - shift[:, None]  # (B, T) source index
    if wrap:
        return torch.gather(waves, 1, src % max(t, 1))
    valid = (src >= 0) & (src < t)
    return torch.gather(waves, 1, src.clamp(0, max(t - 1, 0))) * valid


def _stripe_mask(
    spec: Tensor,
    dim: int,
    max_width: int,
    n_masks: int,
    generator: torch.Generator | None,
    value: float | None,
) -> Tensor:
    if not isinstance(max_width, int) or isinstance(max_width, bool) or max_width < 0:
        raise ValueError(f"max_width must be an int >= 0, got {max_width!r}.")
    if not isinstance(n_masks, int) or isinstance(n_masks, bool) or n_masks < 0:
        raise ValueError(f"n_masks must be an int >= 0, got {n_masks!r}.")
    b, size = spec.shape[0], spec.shape[dim]
    pos = torch.arange(size, device=spec.device)[None, :]  # (1, size)
    hit = torch.zeros(b, size, dtype=torch.bool, device=spec.device)  # (B, size)
    for _ in range(n_masks):
        width = _randint(
            b, torch.full((b,), min(max_width, size), dtype=torch.long), generator, spec.device
        )
        start = _randint(b, size - width, generator, spec.device)  # (B,)
        hit |= (pos >= start[:, None]) & (pos < (start + width)[:, None])
    fill = (
        spec.mean(dim=(1, 2), keepdim=True) if value is None else spec.new_tensor(value)
    )  # (B, 1, 1)
    hit = hit[:, :, None] if dim == 1 else hit[:, None, :]  # (B, M, 1) or (B, 1, F)
    return torch.where(hit, fill, spec)


def time_mask(
    spec: Tensor,
    max_width: int,
    *,
    n_masks: int = 1,
    value: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SpecAugment time masking: ``n_masks`` stripes of ``w`` frames (``w`` uniform in
    ``[0, max_width]``, start uniform) set to ``value`` (default: the clip's mean, which is
    neutral for a dB log-mel where 0 would be loud). ``spec: (B, M, F) -> (B, M, F)``.

    >>> s = time_mask(torch.ones(2, 4, 10), 3, value=0.0, generator=torch.Generator().manual_seed(1))
    >>> s.shape, bool(((s == 0).all(1).sum(1) <= 3).all())
    (torch.Size([2, 4, 10]), True)
    """
    return _stripe_mask(_check_spec(spec), 2, max_width, n_masks, generator, value)


def frequency_mask(
    spec: Tensor,
    max_width: int,
    *,
    n_masks: int = 1,
    value: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SpecAugment frequency masking: like :func:`time_mask`, on stripes of mel bands.
    ``spec: (B, M, F) -> (B, M, F)``."""
    return _stripe_mask(_check_spec(spec), 1, max_width, n_masks, generator, value)


class AudioViews(nn.Module):
    """V random views of every clip for audio self-supervision (COLA / BYOL-A style):
    ``waves (B, T) -> (views (V, B, length), mask (V, B, length))``.

    Each view is a random crop of ``length`` samples (:func:`random_crop`), a random gain in
    ``gain_db`` (:func:`gain`), a random shift up to ``max_shift`` samples (:func:`time_shift`)
    and, when ``snr_db`` is set, white noise at a random SNR in it (:func:`add_noise`). SpecAugment
    masks apply to the log-mel, after the front end (:func:`time_mask`, :func:`frequency_mask`).

    >>> views, mask = AudioViews(4000)(torch.randn(3, 16000), n_views=2, generator=torch.Generator().manual_seed(0))
    >>> views.shape, mask.shape
    (torch.Size([2, 3, 4000]), torch.Size([2, 3, 4000]))
    """

    def __init__(
        self,
        length: int,
        gain_db: tuple[float, float] | None = (-6.0, 6.0),
        snr_db: tuple[float, float] | None = (10.0, 40.0),
        max_shift: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ValueError(f"length must be an int >= 1 (samples), got {length!r}.")
        self.length = length
        self.gain_db = None if gain_db is None else _check_range("gain_db", gain_db)
        self.snr_db = None if snr_db is None else _check_range("snr_db", snr_db)
        if not isinstance(max_shift, int) or isinstance(max_shift, bool) or max_shift < 0:
            raise ValueError(f"max_shift must be an int >= 0 (samples), got {max_shift!r}.")
        self.max_shift = max_shift

    def forward(
        self,
        waves: Tensor,
        n_views: int = 2,
        *,
        lengths: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        waves = _check_waves(waves)
        if not isinstance(n_views, int) or isinstance(n_views, bool) or n_views < 1:
            raise ValueError(f"n_views must be an int >= 1, got {n_views!r}.")
        b = waves.shape[0]
        batch = waves.repeat(n_views, 1)  # (V*B, T), view-major
        if lengths is not None:
            lengths = lengths.repeat(n_views)
        out, mask = random_crop(batch, self.length, lengths=lengths, generator=generator)
        if self.gain_db is not None:
            out = gain(out, self.gain_db, generator=generator)
        if self.max_shift:
            out = time_shift(out, self.max_shift, generator=generator)
        if self.snr_db is not None:
            out = add_noise(out, self.snr_db, mask=mask, generator=generator)
        return out.reshape(n_views, b, -1), mask.reshape(n_views, b, -1)  # (V, B, length)

    def extra_repr(self) -> str:
        return f"length={self.length}, gain_db={self.gain_db}, snr_db={self.snr_db}, max_shift={self.max_shift}"
