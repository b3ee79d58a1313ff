"""Debiased, hard-negative and decoupled contrastive losses: loop references from the papers'
formulas, reductions to InfoNCE / NT-Xent, analytic values, stability and errors."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.functional import info_nce, similarity_matrix
from contrastkit.functional.debiased import (
    debiased_contrastive,
    decoupled_contrastive,
    hard_negative_contrastive,
)


def _pairs(seed: int, b: int = 7, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, d, generator=g, dtype=torch.float64),
        torch.randn(b, d, generator=g, dtype=torch.float64),
    )


def _hcl_loop(q, k, t, beta, tau_plus):
    """Robinson et al.'s reference code, written per anchor with explicit exponentials."""
    s = similarity_matrix(q, k)
    b = q.shape[0]
    n = b - 1
    losses = []
    for i in range(b):
        pos = math.exp(s[i, i] / t)
        neg = [math.exp(s[i, j] / t) for j in range(b) if j != i]
        imp = [x**beta for x in neg]  # exp(beta * log neg)
        reweight = sum(w * x for w, x in zip(imp, neg)) / (sum(imp) / n)
        ng = max((-n * tau_plus * pos + reweight) / (1 - tau_plus), n * math.exp(-1 / t))
        losses.append(-math.log(pos / (pos + ng)))
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize(("beta", "tau_plus"), [(0.0, 0.1), (0.5, 0.0), (1.0, 0.1), (2.0, 0.3)])
def test_hard_negative_matches_loop(beta: float, tau_plus: float) -> None:
    q, k = _pairs(0)
    got = hard_negative_contrastive(
        q, k, temperature=0.5, beta=beta, tau_plus=tau_plus, reduction="none"
    )
    torch.testing.assert_close(got, _hcl_loop(q, k, 0.5, beta, tau_plus))


def test_debiased_is_hcl_with_beta_zero_and_infonce_without_prior() -> None:
    q, k = _pairs(1)
    torch.testing.assert_close(
        debiased_contrastive(q, k, temperature=0.3, tau_plus=0.2),
        hard_negative_contrastive(q, k, temperature=0.3, beta=0.0, tau_plus=0.2),
    )
    torch.testing.assert_close(
        debiased_contrastive(q, k, temperature=0.3, tau_plus=0.0), info_nce(q, k, temperature=0.3)
    )


def test_floor_applies_when_the_correction_would_go_negative() -> None:
    # Perfectly aligned pairs, huge prior: the estimate is clamped at N e^{-1/t}.
    q = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1)
    t, n = 0.5, 3
    got = debiased_contrastive(q, q, temperature=t, tau_plus=0.9, reduction="none")
    pos = math.exp(1 / t)
    expected = -math.log(pos / (pos + n * math.exp(-1 / t)))
    torch.testing.assert_close(got, torch.full((4,), expected, dtype=torch.float64))


def test_small_temperature_float32_is_finite() -> None:
    q, k = (x.float() for x in _pairs(2, b=64, d=16))
    for fn in (debiased_contrastive, hard_negative_contrastive):
        loss = fn(q.requires_grad_(), k, temperature=0.01)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(q.grad).all()
        q.grad = None


def _dcl_loop(z1, z2, t, sigma=None):
    """Yeh et al.'s reference: positive term + logsumexp over all views but self and partner."""
    z = torch.cat([z1, z2])
    s = similarity_matrix(z, z)
    b = z1.shape[0]
    pos_pairs = torch.tensor([float(s[i, i + b]) for i in range(b)], dtype=torch.float64)
    if sigma is None:
        w = torch.ones(b, dtype=torch.float64)
    else:
        e = torch.exp(pos_pairs / sigma)
        w = 2 - b * e / e.sum()
    out = []
    for i in range(2 * b):
        p = (i + b) % (2 * b)
        negs = [float(s[i, j]) / t for j in range(2 * b) if j not in (i, p)]
        lse = math.log(sum(math.exp(x) for x in negs))
        out.append(-float(w[i % b]) * float(s[i, p]) / t + lse)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_decoupled_matches_loop(sigma: float | None) -> None:
    z1, z2 = _pairs(3)
    got = decoupled_contrastive(z1, z2, temperature=0.2, weight_sigma=sigma, reduction="none")
    torch.testing.assert_close(got, _dcl_loop(z1, z2, 0.2, sigma))


def test_decoupled_is_nt_xent_minus_the_positive_in_the_denominator() -> None:
    # Collapsed embeddings: DCL = -1/t + log(2B - 2) + 1/t = log(2B - 2).
    z = torch.ones(5, 3, dtype=torch.float64)
    got = decoupled_contrastive(z, z, temperature=0.1)
    torch.testing.assert_close(got, torch.tensor(math.log(8), dtype=torch.float64))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda q: debiased_contrastive(q, q, temperature=0.1, tau_plus=1.0), "tau_plus must be"),
        (lambda q: hard_negative_contrastive(q, q, temperature=0.1, beta=-1.0), "beta must be"),
        (lambda q: hard_negative_contrastive(q[:1], q[:1], temperature=0.1), "at least 2 rows"),
        (lambda q: decoupled_contrastive(q, q, temperature=0.1, weight_sigma=0.0), "weight_sigma"),
        (lambda q: decoupled_contrastive(q, q[:2], temperature=0.1), "same batch size"),
    ],
)
def test_bad_input(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(torch.randn(4, 3))
