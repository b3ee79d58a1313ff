"""SimCLR views: shapes, ranges, determinism under a seed, independence across images and views."""

from __future__ import annotations

import pytest
import torch

from contrastkit.data import SimCLRViews, load_digits


@pytest.fixture(scope="module")
def digits():
    return load_digits("all").images[:64]  # (64, 1, 8, 8) uint8


def test_shapes_and_range_grayscale(digits):
    views = SimCLRViews(size=8, channels=1)
    out = views(digits, n_views=3, seed=0)
    assert out.shape == (3, 64, 1, 8, 8) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # uint8 and float inputs give the same views
    assert torch.allclose(out, views(digits.float() / 255, n_views=3, seed=0))


def test_rgb_resize_and_range():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 32, 32, generator=g)
    out = SimCLRViews(size=16, channels=3, strength=1.5)(images, n_views=2, seed=1)
    assert out.shape == (2, 8, 3, 16, 16)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_seed_reproducible_and_leaves_global_rng(digits):
    views = SimCLRViews(size=8, channels=1)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = views(digits, seed=7)
    after = torch.rand(3)
    assert torch.equal(before, after)  # the seeded call did not consume the global RNG
    assert torch.equal(a, views(digits, seed=7))
    assert not torch.equal(a, views(digits, seed=8))


def test_generator_drives_the_views(digits):
    views = SimCLRViews(size=8, channels=1)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    first = views(digits, generator=g1)
    assert torch.equal(first, views(digits, generator=g2))
    assert not torch.equal(views(digits, generator=g1), first)  # the generator advanced
    with pytest.raises(ValueError, match="either seed or generator"):
        views(digits, seed=0, generator=g1)


def test_views_differ_per_view_and_per_image(digits):
    x = digits[:1].repeat(32, 1, 1, 1)  # one image 32 times
    out = SimCLRViews(size=8, channels=1)(x, n_views=2, seed=0)
    assert not torch.equal(out[0], out[1])  # two views of a batch differ
    flat = out[0].flatten(1)
    assert len({tuple(r.tolist()) for r in flat}) > 16  # same image, different parameters


def test_strength_zero_keeps_only_geometry(digits):
    x = digits.float() / 255
    out = SimCLRViews(size=8, channels=1, strength=0.0, crop_scale=(1.0, 1.0))(x, seed=0)
    flipped = x.flip(-1)
    # full-area crops may change the aspect ratio slightly; with flips only, every view is
    # close to the image or its mirror
    for v in out:
        err = torch.minimum(
            (v - x).abs().flatten(1).mean(1), (v - flipped).abs().flatten(1).mean(1)
        )
        assert float(err.max()) < 0.1


@pytest.mark.parametrize("strength", [0.01, 0.5, 3.0])
def test_any_strength_builds_valid_pipelines(digits, strength):
    out = SimCLRViews(size=8, channels=1, strength=strength)(digits[:8], seed=0)
    assert out.shape == (2, 8, 1, 8, 8) and torch.isfinite(out).all()
    rgb = SimCLRViews(size=8, channels=3, strength=strength)(torch.rand(4, 3, 8, 8), seed=0)
    assert rgb.shape == (2, 4, 3, 8, 8)


def test_errors(digits):
    views = SimCLRViews(size=8, channels=1)
    with pytest.raises(ValueError, match="channels=3"):
        views(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        views(torch.rand(8, 8))
    with pytest.raises(ValueError, match="n_views"):
        views(digits, n_views=0)
    with pytest.raises(ValueError, match="channels"):
        SimCLRViews(size=8, channels=2)
    with pytest.raises(ValueError, match="crop_scale"):
        SimCLRViews(size=8, crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="strength"):
        SimCLRViews(size=8, strength=-1.0)


def test_flip_and_jitter_probabilities(digits):
    x = digits.float() / 255
    geometry_only = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), blur=False, noise=False)
    always_flipped = SimCLRViews(size=8, channels=1, flip=1.0, jitter_p=0.0, **geometry_only)
    out = always_flipped(x, seed=0)
    assert torch.allclose(out, x.flip(-1).expand_as(out), atol=1e-4)
    identity = SimCLRViews(size=8, channels=1, flip=0.0, jitter_p=0.0, **geometry_only)
    assert torch.allclose(identity(x, seed=0), x.expand(2, *x.shape), atol=1e-4)
    jittered = SimCLRViews(size=8, channels=1, flip=0.0, jitter_p=1.0, **geometry_only)(x, seed=0)
    assert not torch.allclose(jittered, x.expand_as(jittered), atol=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"crop_ratio": (2.0, 1.0)}, r"crop_ratio must satisfy 0 < low <= high.*\(2\.0, 1\.0\)"),
        ({"crop_ratio": (1.0,)}, r"crop_ratio must be a \(low, high\) pair"),
        ({"flip": 1.5}, r"flip must be a probability in \[0, 1\].*got 1\.5"),
        ({"jitter_p": -0.1}, r"jitter_p must be a probability in \[0, 1\].*got -0\.1"),
        ({"blur": 1}, "blur must be True or False, got 1"),
    ],
)
def test_new_argument_errors_name_the_argument_and_value(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SimCLRViews(size=8, channels=1, **kwargs)


# -- RGB colour views (real emoji renders) and the unchanged grayscale pipeline ---------------

GEOMETRY_OFF = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=0.0, blur=False, noise=False)


@pytest.fixture(scope="module")
def emoji():
    from contrastkit.data import load_emoji

    return load_emoji(size=32).images[:128].float() / 255  # (128, 3, 32, 32) RGB on white


def _colourful(x):
    """(N, H, W) mask of pixels whose channels differ clearly (not white, grey or black)."""
    return (x.amax(1) - x.amin(1)) > 0.2


def test_rgb_jitter_changes_hue_and_saturation(emoji):
    views = SimCLRViews(size=32, channels=3, jitter_p=1.0, grayscale=0.0, **GEOMETRY_OFF)
    out = views(emoji, n_views=1, seed=0)[0]  # (B, 3, 32, 32)
    mask = _colourful(emoji)
    # brightness, contrast and saturation keep each pixel's channel order (up to clipping); only
    # a hue shift changes which channel is largest (measured: 37% of clear-maximum pixels with
    # hue jitter 0.2, 2% with hue 0)
    top = emoji.sort(1, descending=True).values  # (B, 3, H, W)
    clear = (top[:, 0] - top[:, 1]) > 0.15  # pixels with one clearly largest channel
    flips = (out.argmax(1) != emoji.argmax(1)) & clear
    assert float(flips.sum() / clear.sum()) > 0.2

    # colourfulness (HSV saturation, (max - min) / max) moves both ways across images
    def saturation(x, m):
        return ((x.amax(0) - x.amin(0)) / x.amax(0).clamp_min(1e-3))[m].mean()  # x: (3, H, W)

    ratios = torch.stack(
        [
            saturation(out[i], mask[i]) / saturation(emoji[i], mask[i])
            for i in range(64)
            if mask[i].any()
        ]
    )
    assert float(ratios.min()) < 0.8 and float(ratios.max()) > 1.2
    # grayscale inputs get brightness/contrast only: no saturation, hue or grayscale step
    gray = SimCLRViews(size=32, channels=1, jitter_p=1.0, **GEOMETRY_OFF)
    assert [type(m).__name__ for m in gray.pipeline] == ["RandomResizedCrop", "ColorJiggle"]
    rgb = SimCLRViews(size=32, channels=3, jitter_p=1.0, **GEOMETRY_OFF)
    assert [type(m).__name__ for m in rgb.pipeline][1:] == ["ColorJiggle", "RandomGrayscale"]


def test_random_grayscale_for_rgb(emoji):
    x = emoji.repeat(2, 1, 1, 1)  # (256, 3, 32, 32)
    always = SimCLRViews(size=32, channels=3, jitter_p=0.0, grayscale=1.0, **GEOMETRY_OFF)
    out = always(x, n_views=1, seed=0)[0]
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-6) and torch.allclose(out[:, 1], out[:, 2])
    # ITU-R 601 luma, the grayscale kornia (and torchvision) use
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(out[:, 0], luma, atol=1e-3)
    some = SimCLRViews(size=32, channels=3, jitter_p=0.0, grayscale=0.2, **GEOMETRY_OFF)
    out = some(x, n_views=1, seed=1)[0]
    colourful = _colourful(x).flatten(1).any(1)  # images with colour to lose
    grey = ((out.amax(1) - out.amin(1)).flatten(1).amax(1) < 1e-6) & colourful
    assert 0.1 < float(grey.sum() / colourful.sum()) < 0.3
    never = SimCLRViews(size=32, channels=3, jitter_p=0.0, grayscale=0.0, **GEOMETRY_OFF)
    assert torch.allclose(never(x, n_views=1, seed=0)[0], x, atol=1e-4)
    with pytest.raises(ValueError, match=r"grayscale must be a probability in \[0, 1\].*got 2"):
        SimCLRViews(size=32, grayscale=2)


def test_grayscale_views_are_unchanged(digits):
    """1-channel views are kornia's crop, flip, brightness/contrast jitter, blur and noise, in
    that order with these parameters, exactly as before RGB views took a grayscale probability."""
    import kornia.augmentation as K

    ref = torch.nn.Sequential(
        K.RandomResizedCrop((8, 8), scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), p=1.0,
                            cropping_mode="resample"),
        K.RandomHorizontalFlip(p=0.5),
        K.ColorJiggle(0.4, 0.4, 0.0, 0.0, p=0.8),
        K.RandomGaussianBlur((3, 3), (0.1, 2.0), p=0.5),
        K.RandomGaussianNoise(mean=0.0, std=0.05, p=0.5),
    )  # fmt: skip
    x = digits.float() / 255
    out = SimCLRViews(size=8, channels=1)(x, n_views=2, generator=torch.Generator().manual_seed(0))
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(0)))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        expected = ref(x.repeat(2, 1, 1, 1)).clamp(0, 1).reshape(2, *x.shape)
    assert torch.equal(out, expected)
