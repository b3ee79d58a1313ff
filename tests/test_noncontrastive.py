"""Objectives without negatives: loop references from the formulas (float64), gradcheck, known
values, stop-gradient semantics, modules and errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from contrastkit.encoders import PredictionHead
from contrastkit.encoders.momentum import MomentumEncoder, cosine_momentum
from contrastkit.functional.noncontrastive import (
    barlow_twins_loss,
    byol_loss,
    cross_correlation,
    dino_loss,
    negative_cosine,
    simsiam_loss,
    sinkhorn_knopp,
    swapped_prediction,
    swav_loss,
    vicreg_covariance,
    vicreg_invariance,
    vicreg_loss,
    vicreg_variance,
)
from contrastkit.losses import (
    BarlowTwinsLoss,
    BYOLLoss,
    DINOLoss,
    SimSiamLoss,
    SwAVLoss,
    VICRegLoss,
    create_loss,
    list_losses,
)

D64 = torch.float64


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D64)


def leaf(*shape: int, seed: int = 0) -> torch.Tensor:
    return randn(*shape, seed=seed).requires_grad_()


# ----------------------------------------------------------------- loop references (formulas)


def ref_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.norm() * b.norm())


def ref_simsiam(p1, p2, z1, z2) -> torch.Tensor:
    b = p1.shape[0]
    d1 = sum(-ref_cos(p1[i], z2[i]) for i in range(b)) / b
    d2 = sum(-ref_cos(p2[i], z1[i]) for i in range(b)) / b
    return 0.5 * d1 + 0.5 * d2


def ref_std(x: torch.Tensor, j: int) -> torch.Tensor:
    col = [x[i, j] for i in range(x.shape[0])]
    mean = sum(col) / len(col)
    return sum((c - mean) ** 2 for c in col) / (len(col) - 1)


def ref_vicreg(z1, z2, lam=25.0, mu=25.0, nu=1.0, eps=1e-4) -> dict[str, torch.Tensor]:
    b, d = z1.shape
    inv = sum((z1[i, j] - z2[i, j]) ** 2 for i in range(b) for j in range(d)) / (b * d)

    def var(x):
        return sum(max(0.0, 1.0 - math.sqrt(float(ref_std(x, j)) + eps)) for j in range(d)) / d

    def cov(x):
        mean = [sum(x[i, j] for i in range(b)) / b for j in range(d)]
        total = 0.0
        for j in range(d):
            for k in range(d):
                if j != k:
                    c = sum((x[i, j] - mean[j]) * (x[i, k] - mean[k]) for i in range(b)) / (b - 1)
                    total += float(c) ** 2
        return total / d

    v = 0.5 * (var(z1) + var(z2))
    c = cov(z1) + cov(z2)
    return {"inv": inv, "var": v, "cov": c, "total": lam * inv + mu * v + nu * c}


def ref_barlow(z1, z2, lam=5.1e-3, eps=1e-5) -> torch.Tensor:
    b, d = z1.shape

    def standardise(x):
        out = torch.empty_like(x)
        for j in range(d):
            col = x[:, j]
            mean = sum(col) / b
            var = sum((c - mean) ** 2 for c in col) / b
            out[:, j] = (col - mean) / math.sqrt(float(var) + eps)
        return out

    a, c = standardise(z1), standardise(z2)
    total = 0.0
    for i in range(d):
        for j in range(d):
            cij = sum(a[n, i] * c[n, j] for n in range(b)) / b
            total += float((1 - cij) ** 2) if i == j else lam * float(cij**2)
    return torch.tensor(total, dtype=D64)


def ref_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    # SwAV's reference code (distributed_sinkhorn on one process), without the max shift.
    q = torch.exp(scores / epsilon).T  # (K, B)
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T


def ref_dino(student, teacher, center, ts, tt) -> torch.Tensor:
    # official DINO loop: for each teacher crop iq, every student crop v != iq
    total, n = 0.0, 0
    for iq in range(teacher.shape[0]):
        q = torch.softmax((teacher[iq] - center) / tt, dim=-1)
        for v in range(student.shape[0]):
            if v == iq:
                continue
            total = total + (-q * torch.log_softmax(student[v] / ts, dim=-1)).sum(dim=-1).mean()
            n += 1
    return total / n


def test_simsiam_and_byol_match_the_loop_reference() -> None:
    p1, p2, z1, z2 = (randn(6, 5, seed=s) for s in range(4))
    ref = ref_simsiam(p1, p2, z1, z2)
    torch.testing.assert_close(simsiam_loss(p1, p2, z1, z2), ref)
    torch.testing.assert_close(byol_loss(p1, p2, z1, z2), 2 + 2 * ref)
    # BYOL's normalised squared error form: |p/|p| - z/|z||^2 = 2 - 2 cos
    direct = 0.5 * (
        ((p1 / p1.norm(dim=1, keepdim=True) - z2 / z2.norm(dim=1, keepdim=True)) ** 2).sum(1).mean()
        + ((p2 / p2.norm(dim=1, keepdim=True) - z1 / z1.norm(dim=1, keepdim=True)) ** 2)
        .sum(1)
        .mean()
    )
    torch.testing.assert_close(byol_loss(p1, p2, z1, z2), direct)


def test_vicreg_parts_and_sum_match_the_loop_reference() -> None:
    z1, z2 = randn(7, 4, seed=1) * 0.8, randn(7, 4, seed=2) * 1.3
    ref = ref_vicreg(z1, z2)
    torch.testing.assert_close(vicreg_invariance(z1, z2), ref["inv"])
    v = 0.5 * (vicreg_variance(z1) + vicreg_variance(z2))
    assert float(v) == pytest.approx(ref["var"], rel=1e-12)
    c = vicreg_covariance(z1) + vicreg_covariance(z2)
    assert float(c) == pytest.approx(ref["cov"], rel=1e-12)
    assert float(vicreg_loss(z1, z2)) == pytest.approx(float(ref["total"]), rel=1e-12)
    parts = VICRegLoss().parts(z1, z2)
    assert float(parts["variance"]) == pytest.approx(ref["var"], rel=1e-12)


def test_barlow_twins_matches_the_loop_reference() -> None:
    z1, z2 = randn(9, 5, seed=3), randn(9, 5, seed=4)
    torch.testing.assert_close(barlow_twins_loss(z1, z2), ref_barlow(z1, z2))


def test_sinkhorn_matches_swav_reference_code() -> None:
    scores = torch.rand(10, 6, generator=torch.Generator().manual_seed(0), dtype=D64) * 2 - 1
    torch.testing.assert_close(sinkhorn_knopp(scores), ref_sinkhorn(scores, 0.05, 3))


def test_swav_matches_reference_with_reference_codes() -> None:
    z1, z2, c = randn(10, 4, seed=5), randn(10, 4, seed=6), randn(5, 4, seed=7)
    cn = c / c.norm(dim=1, keepdim=True)
    s1 = (z1 / z1.norm(dim=1, keepdim=True)) @ cn.T
    s2 = (z2 / z2.norm(dim=1, keepdim=True)) @ cn.T
    q1, q2 = ref_sinkhorn(s1, 0.05, 3), ref_sinkhorn(s2, 0.05, 3)
    ref = 0.0
    for i in range(10):
        ref += -(q2[i] * torch.log_softmax(s1[i] / 0.1, 0)).sum()
        ref += -(q1[i] * torch.log_softmax(s2[i] / 0.1, 0)).sum()
    torch.testing.assert_close(swav_loss(z1, z2, c), ref / 20)


def test_sinkhorn_and_swav_take_a_process_group_like_the_softmax_losses() -> None:
    # group=None is this batch alone (the 2-rank run is tests/monitor/test_distributed.py); the
    # old distributed: bool switch is gone, as gather_distributed is from the functional losses.
    scores = torch.rand(10, 6, generator=torch.Generator().manual_seed(0), dtype=D64) * 2 - 1
    torch.testing.assert_close(sinkhorn_knopp(scores, group=None), ref_sinkhorn(scores, 0.05, 3))
    z1, z2, c = randn(10, 4, seed=5), randn(10, 4, seed=6), randn(5, 4, seed=7)
    assert float(swav_loss(z1, z2, c, group=None)) == float(swav_loss(z1, z2, c))
    module = SwAVLoss(dim=4, num_prototypes=5, gather_distributed=True).double()
    with torch.no_grad():
        module.prototypes.copy_(c)
    assert float(module(z1, z2).detach()) == float(swav_loss(z1, z2, c))  # one process: same
    with pytest.raises(TypeError, match="distributed"):
        sinkhorn_knopp(scores, distributed=True)
    with pytest.raises(TypeError, match="distributed"):
        swav_loss(z1, z2, c, distributed=True)


@pytest.mark.parametrize("crops", [None, (2, 4)])
def test_dino_matches_the_official_loop(crops) -> None:
    if crops is None:
        # (B, K) inputs are two different views: the single pair (teacher view, student view)
        s, t = randn(6, 7, seed=8), randn(6, 7, seed=9)
        target = torch.softmax((t - randn(7, seed=10)) / 0.04, dim=-1)
        expected = (-target * torch.log_softmax(s / 0.1, dim=-1)).sum(-1).mean()
    else:
        t_crops, s_crops = crops
        s, t = randn(s_crops, 6, 7, seed=8), randn(t_crops, 6, 7, seed=9)
        expected = ref_dino(s, t, randn(7, seed=10), 0.1, 0.04)
    got = dino_loss(s, t, randn(7, seed=10), student_temperature=0.1, teacher_temperature=0.04)
    torch.testing.assert_close(got, expected)


# ----------------------------------------------------------------- gradcheck (float64)


def test_gradcheck_differentiable_objectives() -> None:
    z1, z2 = leaf(6, 4, seed=0), leaf(6, 4, seed=1)
    assert torch.autograd.gradcheck(lambda a, b: vicreg_loss(a, b), (z1, z2))
    assert torch.autograd.gradcheck(lambda a, b: barlow_twins_loss(a, b), (z1, z2))
    p1, p2 = leaf(6, 4, seed=2), leaf(6, 4, seed=3)
    targets = (randn(6, 4, seed=4), randn(6, 4, seed=5))  # held fixed: behind the stop-gradient
    assert torch.autograd.gradcheck(lambda a, b: simsiam_loss(a, b, *targets), (p1, p2))
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: simsiam_loss(a, b, c, d, stop_gradient=False), (p1, p2, z1, z2)
    )


def test_gradcheck_swav_prediction_path_with_codes_fixed() -> None:
    s1, s2 = leaf(6, 5, seed=0), leaf(6, 5, seed=1)
    q1, q2 = sinkhorn_knopp(s1.detach()), sinkhorn_knopp(s2.detach())
    assert torch.autograd.gradcheck(
        lambda a, b: swapped_prediction(a, b, q1, q2, temperature=0.1), (s1, s2)
    )


def test_gradcheck_dino_student_with_teacher_fixed() -> None:
    s = leaf(3, 4, 5, seed=0)
    t, c = randn(2, 4, 5, seed=1), randn(5, seed=2)
    assert torch.autograd.gradcheck(lambda a: dino_loss(a, t, c), (s,))


# ----------------------------------------------------------------- known values


def test_identical_views_have_zero_invariance_and_minimal_negative_cosine() -> None:
    z = randn(8, 16)
    assert float(vicreg_invariance(z, z)) == 0.0
    assert float(simsiam_loss(z, z, z, z)) == pytest.approx(-1.0)
    assert float(byol_loss(z, z, z, z)) == pytest.approx(0.0, abs=1e-12)


def test_vicreg_variance_known_values() -> None:
    collapsed = torch.ones(8, 4, dtype=D64)
    assert float(vicreg_variance(collapsed)) == pytest.approx(1 - math.sqrt(1e-4))
    wide = torch.tensor([[3.0, -3.0], [-3.0, 3.0]], dtype=D64)  # std 4.24 > 1 in both dims
    assert float(vicreg_variance(wide)) == 0.0


def test_barlow_twins_on_decorrelated_whitened_inputs() -> None:
    # Columns of a Hadamard matrix: zero mean, unit variance, mutually orthogonal.
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=D64)
    h8 = torch.kron(torch.kron(h2, h2), h2)  # (8, 8)
    z = h8[:, 1:5]  # (8, 4), drop the constant column
    c = cross_correlation(z, z, eps=1e-12)
    off = c - torch.diag(torch.diagonal(c))
    assert off.abs().max() < 1e-12
    torch.testing.assert_close(torch.diagonal(c), torch.ones(4, dtype=D64))
    assert float(barlow_twins_loss(z, z, eps=1e-12)) == pytest.approx(0.0, abs=1e-10)
    # a collapsed (rank-1) pair of views is penalised by the redundancy term
    line = z[:, :1].repeat(1, 4)
    assert float(barlow_twins_loss(line, line, eps=1e-12)) == pytest.approx(5.1e-3 * 12)


def test_sinkhorn_output_is_doubly_stochastic() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(12, 12, generator=g, dtype=D64) * 2 - 1
    q = sinkhorn_knopp(scores, epsilon=0.1, iterations=500)
    ones = torch.ones(12, dtype=D64)
    torch.testing.assert_close(q.sum(dim=1), ones)
    torch.testing.assert_close(q.sum(dim=0), ones, atol=1e-8, rtol=0)
    assert (q >= 0).all()
    # rectangular: each of K prototypes receives B / K of the batch
    q = sinkhorn_knopp(torch.rand(12, 4, generator=g, dtype=D64), epsilon=0.1, iterations=500)
    torch.testing.assert_close(q.sum(dim=0), torch.full((4,), 3.0, dtype=D64), atol=1e-8, rtol=0)


def test_sinkhorn_spreads_a_batch_that_prefers_one_prototype() -> None:
    scores = torch.zeros(8, 4, dtype=D64)
    scores[:, 0] = 1.0  # every example prefers prototype 0
    q = sinkhorn_knopp(scores, iterations=100)
    torch.testing.assert_close(q.sum(dim=0), torch.full((4,), 2.0, dtype=D64), atol=1e-6, rtol=0)
    assert not torch.isnan(sinkhorn_knopp(torch.full((4, 3), 50.0))).any()  # large scores


def test_sinkhorn_float32_matches_float64_and_survives_a_wide_range() -> None:
    g = torch.Generator().manual_seed(1)
    cosines = torch.rand(16, 8, generator=g, dtype=D64) * 2 - 1
    torch.testing.assert_close(
        sinkhorn_knopp(cosines.float()), sinkhorn_knopp(cosines).float(), atol=1e-5, rtol=1e-4
    )
    wide = 10.0 * torch.randn(16, 8, generator=g)  # exp(scores / 0.05) underflows float32
    q = sinkhorn_knopp(wide)
    assert q.dtype == torch.float32 and torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(16))


def test_dino_centering_and_sharpening() -> None:
    t = torch.tensor([[10.0, 0.0, 0.0]] * 4, dtype=D64)
    # without the center the teacher target is one-hot on dim 0; the center removes it
    no_center = dino_loss(t, t)
    centred = dino_loss(t, t, t.mean(0))
    assert float(centred) == pytest.approx(float(dino_loss(t, torch.zeros_like(t))))
    assert float(no_center) < float(centred)


def test_dino_center_update_is_an_ema_and_loads_lazily() -> None:
    loss = DINOLoss(center_momentum=0.5)
    assert loss.center.numel() == 0
    t1, t2 = randn(3, 4, 5, seed=0), randn(3, 4, 5, seed=1)
    loss.update_center(t1)
    loss.update_center(t2)
    expected = 0.5 * (0.5 * t1.reshape(-1, 5).mean(0)) + 0.5 * t2.reshape(-1, 5).mean(0)
    torch.testing.assert_close(loss.center, expected)
    fresh = DINOLoss()
    fresh.load_state_dict(loss.state_dict())
    torch.testing.assert_close(fresh.center, expected)
    with pytest.raises(ValueError, match="center has 5"):
        loss.update_center(randn(4, 6))


# ----------------------------------------------------------------- stop-gradient semantics


def test_stop_gradient_blocks_the_target_branch() -> None:
    p1, p2, z1, z2 = (leaf(4, 3, seed=s) for s in range(4))
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None and p1.grad.abs().sum() > 0
    simsiam_loss(p1, p2, z1, z2, stop_gradient=False).backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0
    s, t = leaf(4, 5, seed=0), leaf(4, 5, seed=1)
    DINOLoss()(s, t).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def test_swav_gradients_reach_embeddings_and_prototypes_only_through_the_prediction() -> None:
    swav = SwAVLoss(dim=4, num_prototypes=3).double()
    z1, z2 = leaf(6, 4, seed=0), leaf(6, 4, seed=1)
    swav(z1, z2).backward()
    assert swav.prototypes.grad is not None and swav.prototypes.grad.abs().sum() > 0
    assert z1.grad.abs().sum() > 0


def test_byol_step_with_the_momentum_teacher() -> None:
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    predictor = PredictionHead(4, 8)
    teacher = MomentumEncoder(online, momentum=0.9)
    opt = torch.optim.SGD([*online.parameters(), *predictor.parameters()], lr=0.1)
    x1, x2 = torch.randn(16, 6), torch.randn(16, 6)
    before = [p.clone() for p in teacher.parameters()]
    loss = BYOLLoss()(predictor(online(x1)), predictor(online(x2)), teacher(x1), teacher(x2))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    opt.step()
    teacher.update(online, cosine_momentum(0, 10, base=0.9))
    for b, t, o in zip(before, teacher.parameters(), online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o.detach())


# ----------------------------------------------------------------- registry and errors


def test_all_objectives_are_registered() -> None:
    assert {"simsiam", "byol", "vicreg", "barlow_twins", "swav", "dino"} <= set(list_losses())
    assert isinstance(create_loss("barlow_twins"), BarlowTwinsLoss)
    assert isinstance(create_loss("simsiam"), SimSiamLoss)


def test_errors_name_the_argument_and_the_fix() -> None:
    z = randn(4, 3)
    with pytest.raises(
        ValueError, match="prediction and target must have the same embedding dimension"
    ):
        negative_cosine(z, randn(4, 5))
    with pytest.raises(ValueError, match=r"embeddings needs at least 2 rows"):
        vicreg_variance(randn(1, 3))
    with pytest.raises(ValueError, match="iterations must be an int >= 1"):
        sinkhorn_knopp(z, iterations=0)
    with pytest.raises(ValueError, match=r"prototypes must have shape \(K, 3\)"):
        swav_loss(z, z, randn(5, 4))
    with pytest.raises(ValueError, match="teacher_temperature must be a finite number > 0"):
        dino_loss(z, z, teacher_temperature=0.0)
    with pytest.raises(ValueError, match="nothing to predict"):
        dino_loss(randn(1, 4, 3), randn(1, 4, 3))
    with pytest.raises(ValueError, match="invariance_weight must be >= 0"):
        VICRegLoss(invariance_weight=-1.0)
    with pytest.raises(ValueError, match="hidden_features must be an int >= 1"):
        PredictionHead(4, 0)
