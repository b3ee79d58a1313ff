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
