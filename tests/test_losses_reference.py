"""Every core loss against a plain-loop reference written from its formula, plus analytic cases."""

from __future__ import annotations

import math

import pytest
import torch

import contrastkit.functional as F
import reference as ref
from contrastkit.functional import METRICS, KeyRoles

TOL = {"rtol": 1e-9, "atol": 1e-10}


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rand_mask(*shape: int, p: float = 0.3, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p


# ---------------------------------------------------------------- info_nce
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_matches_reference(metric: str, symmetric: bool) -> None:
    q, k = rand(6, 5, seed=1), rand(6, 5, seed=2)
    t = 0.3 if metric != "dot" else 2.0
    got = F.info_nce(q, k, temperature=t, metric=metric, symmetric=symmetric, reduction="none")
    want = ref.info_nce(q, k, temperature=t, metric=metric, symmetric=symmetric)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("shape", ["shared", "per_query"])
def test_info_nce_extra_negatives(shape: str) -> None:
    q, k = rand(5, 4, seed=3), rand(5, 4, seed=4)
    negs = rand(3, 4, seed=5) if shape == "shared" else rand(5, 3, 4, seed=5)
    got = F.info_nce(q, k, negs, temperature=0.2, reduction="none")
    torch.testing.assert_close(got, ref.info_nce(q, k, negs, temperature=0.2), **TOL)


@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_masks(symmetric: bool) -> None:
    q, k, negs = rand(6, 4, seed=6), rand(6, 4, seed=7), rand(2, 4, seed=8)
    pos = rand_mask(6, 6, seed=9)
    ign = rand_mask(6, 8, p=0.4, seed=10)
    kw = {"temperature": 0.25, "symmetric": symmetric, "positive_mask": pos, "ignore_mask": ign}
    got = F.info_nce(q, k, negs, reduction="none", **ref.as_roles(kw))
    torch.testing.assert_close(got, ref.info_nce(q, k, negs, **kw), **TOL)


def test_ignoring_a_positive_changes_nothing() -> None:
    q, k = rand(5, 4, seed=11), rand(5, 4, seed=12)
    eye = torch.eye(5, dtype=torch.bool)
    plain = F.info_nce(q, k, temperature=0.1)
    torch.testing.assert_close(
        F.info_nce(q, k, temperature=0.1, roles=KeyRoles(ignore_mask=eye)), plain
    )
    torch.testing.assert_close(
        F.info_nce(
            q, k, temperature=0.1, roles=KeyRoles(ignore_mask=torch.zeros(5, 5, dtype=torch.bool))
        ),
        plain,
    )


def test_ignoring_negatives_lowers_the_loss() -> None:
    q, k = rand(5, 4, seed=13), rand(5, 4, seed=14)
    off_diag = ~torch.eye(5, dtype=torch.bool)
    assert (
        F.info_nce(q, k, temperature=0.5, roles=KeyRoles(ignore_mask=off_diag)) < 1e-12
    )  # only the positive left
    assert F.info_nce(
        q, k, temperature=0.5, roles=KeyRoles(ignore_mask=rand_mask(5, 5, seed=1))
    ) < F.info_nce(q, k, temperature=0.5)


def test_info_nce_analytic_values() -> None:
    b = 8
    eye = torch.eye(b, dtype=torch.float64)
    assert float(F.info_nce(eye, eye, temperature=0.01)) < 1e-30  # aligned, orthogonal pairs
    same = torch.ones(b, 3, dtype=torch.float64)
    assert float(F.info_nce(same, same, temperature=0.1)) == pytest.approx(math.log(b), rel=1e-12)
    negs = torch.ones(5, 3, dtype=torch.float64)
    assert float(F.info_nce(same, same, negs, temperature=0.1)) == pytest.approx(
        math.log(b + 5), rel=1e-12
    )
    assert float(F.info_nce(same, same, temperature=0.1, symmetric=True)) == pytest.approx(
        math.log(b), rel=1e-12
    )


def test_info_nce_equals_spec_cross_entropy() -> None:
    # The SPEC's in-batch form: cross-entropy over rows of q k^T / t with targets arange(B).
    q = F.normalize(rand(32, 16, seed=15))
    k = F.normalize(rand(32, 16, seed=16))
    logits = q @ k.T / 0.07
    targets = torch.arange(32)
    ce = torch.nn.functional.cross_entropy(logits, targets)
    torch.testing.assert_close(F.info_nce(q, k, temperature=0.07, metric="dot"), ce)
    sym = 0.5 * (ce + torch.nn.functional.cross_entropy(logits.T, targets))
    torch.testing.assert_close(F.info_nce(q, k, temperature=0.07, symmetric=True), sym)


def test_reductions_are_consistent() -> None:
    q, k = rand(7, 4, seed=17), rand(7, 4, seed=18)
    none = F.info_nce(q, k, temperature=0.2, reduction="none")
    assert none.shape == (7,)
    torch.testing.assert_close(F.info_nce(q, k, temperature=0.2, reduction="mean"), none.mean())
    torch.testing.assert_close(F.info_nce(q, k, temperature=0.2, reduction="sum"), none.sum())


def test_learnable_temperature_gets_a_gradient() -> None:
    t = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    F.info_nce(rand(4, 3, seed=1), rand(4, 3, seed=2), temperature=t).backward()
    assert t.grad is not None and torch.isfinite(t.grad)


# ---------------------------------------------------------------- nt_xent
@pytest.mark.parametrize("metric", METRICS)
def test_nt_xent_matches_reference(metric: str) -> None:
    z1, z2 = rand(5, 4, seed=19), rand(5, 4, seed=20)
    t = 0.5 if metric != "dot" else 3.0
    got = F.nt_xent(z1, z2, temperature=t, metric=metric, reduction="none")
    torch.testing.assert_close(got, ref.nt_xent(z1, z2, temperature=t, metric=metric), **TOL)


def test_nt_xent_analytic() -> None:
    same = torch.ones(6, 4, dtype=torch.float64)
    assert float(F.nt_xent(same, same, temperature=0.2)) == pytest.approx(math.log(11), rel=1e-12)
    e = torch.eye(6, 8, dtype=torch.float64)
    assert float(F.nt_xent(e, e, temperature=0.01)) < 1e-30


# ---------------------------------------------------------------- supervised_contrastive
@pytest.mark.parametrize("metric", METRICS)
def test_supcon_matches_reference(metric: str) -> None:
    z = rand(9, 4, seed=21)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 1])  # label 3 has no positive
    t = 0.3 if metric != "dot" else 2.0
    got = F.supervised_contrastive(z, labels, temperature=t, metric=metric, reduction="none")
    want, valid = ref.supervised_contrastive(z, labels, temperature=t, metric=metric)
    torch.testing.assert_close(got, want, **TOL)
    mean = F.supervised_contrastive(z, labels, temperature=t, metric=metric)
    torch.testing.assert_close(mean, want[valid].mean(), **TOL)


def test_supcon_views_share_labels() -> None:
    z = rand(4, 2, 5, seed=22)  # (B, V, D)
    labels = torch.tensor([0, 1, 1, 2])
    flat = torch.cat([z[:, 0], z[:, 1]])  # view-major
    want, valid = ref.supervised_contrastive(flat, labels.repeat(2), temperature=0.2)
    got = F.supervised_contrastive(z, labels, temperature=0.2)
    torch.testing.assert_close(got, want[valid].mean(), **TOL)
    assert bool(valid.all())  # label 0 and 2 get their positive from the other view


def test_supcon_one_positive_each_is_nt_xent() -> None:
    z1, z2 = rand(5, 4, seed=23), rand(5, 4, seed=24)
    z = torch.stack([z1, z2], dim=1)
    torch.testing.assert_close(
        F.supervised_contrastive(z, torch.arange(5), temperature=0.4),
        F.nt_xent(z1, z2, temperature=0.4),
    )


def test_supcon_without_any_positive_is_a_differentiable_zero() -> None:
    z = rand(4, 3, seed=25).requires_grad_()
    with pytest.warns(RuntimeWarning, match="no anchor has a positive"):
        loss = F.supervised_contrastive(z, torch.arange(4), temperature=0.1)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_supcon_analytic() -> None:
    same = torch.ones(6, 3, dtype=torch.float64)
    loss = F.supervised_contrastive(same, torch.tensor([0, 0, 0, 1, 1, 1]), temperature=0.1)
    assert float(loss) == pytest.approx(math.log(5), rel=1e-12)


# ---------------------------------------------------------------- sigmoid
@pytest.mark.parametrize("metric", METRICS)
def test_sigmoid_matches_reference(metric: str) -> None:
    a, b = rand(5, 4, seed=26), rand(5, 4, seed=27)
    t = 0.5 if metric != "dot" else 3.0
    got = F.sigmoid_contrastive(a, b, temperature=t, bias=-1.5, metric=metric)
    torch.testing.assert_close(
        got, ref.sigmoid_contrastive(a, b, temperature=t, bias=-1.5, metric=metric), **TOL
    )


def test_sigmoid_analytic() -> None:
    e = torch.eye(4, dtype=torch.float64)
    # diagonal logit 1/t + b, off-diagonal logit b
    t, b = 0.5, -1.0
    want = math.log1p(math.exp(-(1 / t + b))) + 3 * math.log1p(math.exp(b))
    assert float(F.sigmoid_contrastive(e, e, temperature=t, bias=b)) == pytest.approx(
        want, rel=1e-12
    )


# ---------------------------------------------------------------- triplet
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("mining", ["batch_hard", "batch_semihard", "batch_all"])
def test_triplet_margin_matches_reference(metric: str, mining: str) -> None:
    z = rand(10, 4, seed=28)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 3, 2])
    got = F.triplet_margin(z, labels, margin=0.3, metric=metric, mining=mining)
    want = ref.triplet_margin(z, labels, margin=0.3, metric=metric, mining=mining)
    torch.testing.assert_close(got, want, **TOL)


def test_triplet_margin_without_triplets_is_zero() -> None:
    z = rand(4, 3, seed=29).requires_grad_()
    for mining in ("batch_hard", "batch_semihard", "batch_all"):
        loss = F.triplet_margin(z, torch.arange(4), margin=0.2, mining=mining)
        assert float(loss.detach()) == 0.0
        loss.backward()


@pytest.mark.parametrize("metric", METRICS)
def test_triplet_loss_explicit(metric: str) -> None:
    a, p, n = rand(6, 3, seed=30), rand(6, 3, seed=31), rand(6, 3, seed=32)
    got = F.triplet_loss(a, p, n, margin=0.5, metric=metric, reduction="none")
    want = torch.stack(
        [
            torch.relu(ref.sim(a[i], n[i], metric) - ref.sim(a[i], p[i], metric) + 0.5)
            for i in range(6)
        ]
    )
    torch.testing.assert_close(got, want, **TOL)


def test_triplet_loss_equals_torch() -> None:
    a, p, n = rand(6, 3, seed=33), rand(6, 3, seed=34), rand(6, 3, seed=35)
    want = torch.nn.functional.triplet_margin_loss(a, p, n, margin=0.7, eps=0.0)
    torch.testing.assert_close(F.triplet_loss(a, p, n, margin=0.7), want)


# ---------------------------------------------------------------- pairwise, ranking, preference
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_contrastive_margin_matches_reference(metric: str) -> None:
    a, b = rand(8, 3, seed=36), rand(8, 3, seed=37) * 0.5
    is_pos = rand_mask(8, p=0.5, seed=38)
    got = F.contrastive_margin(a, b, is_pos, margin=1.5, metric=metric, reduction="none")
    torch.testing.assert_close(
        got, ref.contrastive_margin(a, b, is_pos, margin=1.5, metric=metric), **TOL
    )


def test_margin_ranking_equals_torch_and_broadcasts() -> None:
    pos, neg = rand(7, seed=39), rand(7, seed=40)
    want = torch.nn.functional.margin_ranking_loss(
        pos, neg, torch.ones(7, dtype=torch.float64), margin=0.4
    )
    torch.testing.assert_close(F.margin_ranking(pos, neg, margin=0.4), want)
    negs = rand(7, 3, seed=41)
    got = F.margin_ranking(pos, negs, margin=0.4, reduction="none")
    assert got.shape == (7, 3)
    torch.testing.assert_close(got[:, 1], torch.relu(0.4 - (pos - negs[:, 1])))


@pytest.mark.parametrize("kind", ["logistic", "hinge"])
def test_preference_matches_reference(kind: str) -> None:
    c, r = rand(9, seed=42), rand(9, seed=43)
    got = F.preference_loss(c, r, kind=kind, margin=0.25, reduction="none")
    torch.testing.assert_close(got, ref.preference(c, r, kind=kind, margin=0.25), **TOL)


def test_preference_hinge_is_margin_ranking() -> None:
    c, r = rand(9, seed=44), rand(9, seed=45)
    torch.testing.assert_close(
        F.preference_loss(c, r, kind="hinge", margin=0.5), F.margin_ranking(c, r, margin=0.5)
    )


# ---------------------------------------------------------------- gradcheck (float64)
GRADCHECK_CASES = {
    "info_nce": lambda q, k: F.info_nce(q, k, temperature=0.3),
    "info_nce_symmetric_masked": lambda q, k: F.info_nce(
        q,
        k,
        temperature=0.3,
        symmetric=True,
        roles=KeyRoles(positive_mask=rand_mask(5, 5, seed=1), ignore_mask=rand_mask(5, 5, seed=2)),
    ),
    "info_nce_euclidean": lambda q, k: F.info_nce(q, k, temperature=0.7, metric="euclidean"),
    "nt_xent": lambda q, k: F.nt_xent(q, k, temperature=0.3),
    "supcon": lambda q, k: F.supervised_contrastive(
        torch.cat([q, k]), torch.tensor([0, 1, 2, 0, 1] * 2), temperature=0.3
    ),
    "sigmoid": lambda q, k: F.sigmoid_contrastive(q, k, temperature=0.5, bias=-2.0),
    "triplet_hard": lambda q, k: F.triplet_margin(
        torch.cat([q, k]), torch.tensor([0, 1, 2, 0, 1] * 2), margin=5.0
    ),
    "triplet_semihard": lambda q, k: F.triplet_margin(
        torch.cat([q, k]), torch.tensor([0, 1, 2, 0, 1] * 2), margin=0.5, mining="batch_semihard"
    ),
    "contrastive_margin": lambda q, k: F.contrastive_margin(
        q, k, torch.tensor([True, False] * 2 + [True]), margin=10.0
    ),
    "preference": lambda q, k: F.preference_loss(q.sum(1), k.sum(1)),
}


@pytest.mark.parametrize("name", sorted(GRADCHECK_CASES))
def test_gradcheck(name: str) -> None:
    q = rand(5, 3, seed=46).requires_grad_()
    k = rand(5, 3, seed=47).requires_grad_()
    assert torch.autograd.gradcheck(GRADCHECK_CASES[name], (q, k))


# ---------------------------------------------------------------- half precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_small_temperature(dtype: torch.dtype) -> None:
    q32, k32 = rand(16, 8, seed=48, dtype=torch.float32), rand(16, 8, seed=49, dtype=torch.float32)
    q, k = q32.to(dtype).requires_grad_(), k32.to(dtype)
    for fn in (
        lambda a, b: F.info_nce(a, b, temperature=0.01, symmetric=True),
        lambda a, b: F.nt_xent(a, b, temperature=0.01),
        lambda a, b: F.supervised_contrastive(
            torch.cat([a, b]), torch.arange(16).repeat(2), temperature=0.01
        ),
        lambda a, b: F.sigmoid_contrastive(a, b, temperature=0.01, bias=-10.0),
    ):
        loss = fn(q, k)
        assert loss.dtype == torch.float32  # half inputs get a float32 loss (autocast-style)
        assert torch.isfinite(loss)
        want = fn(q.detach().float(), k.float())
        torch.testing.assert_close(loss.float(), want, rtol=3e-2, atol=3e-2)
        (grad,) = torch.autograd.grad(loss, q)
        assert torch.isfinite(grad).all()
