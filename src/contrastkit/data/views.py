"""SimCLR-style random views of an image batch, built on kornia's batched augmentations.

SimCLR (Chen et al. 2020, https://arxiv.org/abs/2002.05709) makes a positive pair from two
random augmentations of one image: random resized crop, horizontal flip, colour jitter (for
grayscale: brightness and contrast), random grayscale, Gaussian blur; this pipeline adds
Gaussian noise, which helps on small grayscale images. Each image in the batch gets its own
random parameters (``same_on_batch=False``), and all V views are made in one batched call.

For text, views come from the encoder instead: two forward passes with dropout on give two
different embeddings of one sentence (SimCSE, Gao et al. 2021, https://arxiv.org/abs/2104.08821).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from contrastkit._checks import check_positive_number


class SimCLRViews(nn.Module):
    """V random views of every image: ``images (B, C, H, W) -> views (V, B, C, size, size)``.

    Args:
        size: output side (e.g. 28 for Fashion-MNIST, 64 for emoji).
        channels: 1 (grayscale: brightness/contrast jitter, no grayscale step) or 3 (RGB:
            brightness, contrast and saturation jitter ``0.8 * strength``, hue ``0.2 *
            strength``, then random grayscale; SimCLR's colour distortion).
        strength: scales every jitter, blur and noise amount (1.0 = SimCLR's colour
            strength; 0.5 is milder; jitter factors are capped at 0.9). The crop scale range
            is set by ``crop_scale``.
        crop_scale: range of the crop's area as a fraction of the image (SimCLR: (0.08, 1)).
        crop_ratio: range of the crop's aspect ratio (width / height), e.g. (3/4, 4/3).
        flip: probability of a horizontal flip, in [0, 1].
        jitter_p: probability of the colour (grayscale: brightness/contrast) jitter, in [0, 1].
        grayscale: probability of converting an RGB view to grayscale (SimCLR: 0.2); unused
            for 1-channel images.
        blur: apply Gaussian blur with probability 0.5.
        noise: apply Gaussian noise (std ``0.05 * strength``) with probability 0.5.

    ``forward(images, n_views=2, seed=None, generator=None)`` accepts uint8 in [0, 255] or
    float in [0, 1] and returns float32 in [0, 1]. With an integer ``seed`` (or a
    ``torch.Generator``, from which one seed is drawn per call) the views are reproducible and
    the global RNG is left untouched (kornia samples from it inside ``torch.random.fork_rng``).

    >>> views = SimCLRViews(size=8, channels=1)
    >>> x = torch.rand(4, 1, 8, 8)
    >>> v = views(x, n_views=3, seed=0)
    >>> v.shape, bool(v.min() >= 0) and bool(v.max() <= 1)
    (torch.Size([3, 4, 1, 8, 8]), True)
    >>> torch.equal(v, views(x, n_views=3, seed=0))
    True
    """

    def __init__(
        self,
        size: int,
        channels: int = 3,
        strength: float = 1.0,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: float = 0.5,
        jitter_p: float = 0.8,
        grayscale: float = 0.2,
        blur: bool = True,
        noise: bool = True,
    ) -> None:
        super().__init__()
        try:
            import kornia.augmentation as K
        except ImportError as err:  # pragma: no cover - kornia is in the vision extra
            raise ImportError("SimCLRViews needs kornia: pip install kornia") from err
        if not isinstance(size, int) or isinstance(size, bool) or size < 2:
            raise ValueError(f"size must be an int >= 2 (the output side), got {size!r}.")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
        check_positive_number("strength", strength, allow_zero=True)
        lo, hi = _check_range("crop_scale", crop_scale, "0 < low <= high <= 1, e.g. (0.2, 1.0)")
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(
                f"crop_scale must satisfy 0 < low <= high <= 1 (area fractions), got "
                f"{crop_scale!r}; e.g. (0.2, 1.0)."
            )
        r_lo, r_hi = _check_range("crop_ratio", crop_ratio, "0 < low <= high, e.g. (0.75, 1.333)")
        if not 0.0 < r_lo <= r_hi:
            raise ValueError(
                f"crop_ratio must satisfy 0 < low <= high (aspect ratios), got {crop_ratio!r}; "
                "e.g. (0.75, 1.333), or (1.0, 1.0) for square crops."
            )
        flip = _check_probability("flip", flip)
        jitter_p = _check_probability("jitter_p", jitter_p)
        grayscale = _check_probability("grayscale", grayscale)
        for name, flag in (("blur", blur), ("noise", noise)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}.")
        self.size, self.channels, self.strength = size, channels, float(strength)
        self.crop_scale, self.crop_ratio = (lo, hi), (r_lo, r_hi)
        self.flip, self.jitter_p, self.blur, self.noise = flip, jitter_p, blur, noise
        self.grayscale = grayscale
        s = float(strength)
        jitter = min(0.8 * s, 0.9)  # kornia keeps brightness/contrast/saturation factors in (0, 2)
        steps: list[nn.Module] = [
            # "resample": one batched affine warp instead of a crop + resize per image (3x faster
            # on small images, same output to ~1e-6)
            K.RandomResizedCrop(
                (size, size), scale=(lo, hi), ratio=(r_lo, r_hi), p=1.0, cropping_mode="resample"
            ),
        ]
        if flip > 0:
            steps.append(K.RandomHorizontalFlip(p=flip))
        if channels == 3:
            if jitter_p > 0 and s > 0:
                steps.append(K.ColorJiggle(jitter, jitter, jitter, min(0.2 * s, 0.5), p=jitter_p))
            if grayscale > 0:
                steps.append(K.RandomGrayscale(p=grayscale))
        elif jitter_p > 0 and s > 0:
            amount = min(0.4 * s, 0.9)
            steps.append(K.ColorJiggle(amount, amount, 0.0, 0.0, p=jitter_p))
        if blur and s > 0:
            kernel = max(3, (size // 10) | 1)  # ~10% of the side, odd
            steps.append(K.RandomGaussianBlur((kernel, kernel), (0.1, max(0.1, 2.0 * s)), p=0.5))
        if noise and s > 0:
            steps.append(K.RandomGaussianNoise(mean=0.0, std=0.05 * s, p=0.5))
        self.pipeline = nn.Sequential(*steps)

    def forward(
        self,
        images: Tensor,
        n_views: int = 2,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}.")
        if images.shape[1] != self.channels:
            raise ValueError(
                f"images has {images.shape[1]} channels but the views were built for "
                f"channels={self.channels}; build SimCLRViews(channels={images.shape[1]})."
            )
        if not isinstance(n_views, int) or isinstance(n_views, bool) or n_views < 1:
            raise ValueError(f"n_views must be an int >= 1, got {n_views!r}.")
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        elif not images.dtype.is_floating_point:
            raise TypeError(f"images must be uint8 or floating, got {images.dtype}.")
        if generator is not None:
            if seed is not None:
                raise ValueError("pass either seed or generator, not both.")
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        b = images.shape[0]
        batch = images.repeat(n_views, 1, 1, 1)  # (V*B, C, H, W), view-major
        if seed is None:
            out = self.pipeline(batch)
        else:
            devices = [images.device] if images.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                out = self.pipeline(batch)
        return out.clamp_(0.0, 1.0).reshape(n_views, b, *out.shape[1:])  # (V, B, C, S, S)

    def extra_repr(self) -> str:
        grayscale = f"grayscale={self.grayscale:g}, " if self.channels == 3 else ""
        return (
            f"size={self.size}, channels={self.channels}, strength={self.strength:g}, "
            f"crop_scale={self.crop_scale}, crop_ratio=({self.crop_ratio[0]:.3g}, "
            f"{self.crop_ratio[1]:.3g}), flip={self.flip:g}, jitter_p={self.jitter_p:g}, "
            f"{grayscale}blur={self.blur}, noise={self.noise}"
        )


def _check_range(name: str, value: object, rule: str) -> tuple[float, float]:
    """A ``(low, high)`` pair of finite numbers (a tuple or list of two)."""
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) for v in value)
    )
    if not ok:
        raise ValueError(
            f"{name} must be a (low, high) pair of numbers with {rule}; got {value!r}."
        )
    return float(value[0]), float(value[1])


def _check_probability(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{name} must be a probability in [0, 1] (e.g. 0.5; 0 turns the step off), "
            f"got {value!r}."
        )
    return float(value)
