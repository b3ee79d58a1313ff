"""CoSENT / AnglE and the distillation losses: a loop reference from the formula, analytic
values, and parity on values with sentence-transformers' losses."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from contrastkit.functional.distill import listwise_kl_distillation, margin_mse
from contrastkit.functional.graded import angle_loss, cosent_loss, paired_angle_similarity
from contrastkit.functional.rerank import (
    listwise_softmax_cross_entropy,
    pointwise_binary_cross_entropy,
)

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")


def _batch(seed: int, b: int = 9, d: int = 12, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g, dtype=dtype)
    k = torch.randn(b, d, generator=g, dtype=dtype)
    scores = torch.randint(0, 4, (b,), generator=g).to(dtype) / 3  # ties on purpose
    return q, k, scores


def _cosent_loop(sim: list[float], scores: list[float], temperature: float) -> float:
    total = 1.0
    for i, j in itertools.permutations(range(len(sim)), 2):
        if scores[i] > scores[j]:
            total += math.exp((sim[j] - sim[i]) / temperature)
    return math.log(total)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cosent_matches_a_loop_over_ordered_pairs(seed: int) -> None:
    q, k, s = _batch(seed)
    cos = torch.nn.functional.cosine_similarity(q, k).tolist()
    want = _cosent_loop(cos, s.tolist(), 0.05)
    assert float(cosent_loss(q, k, s, 0.05)) == pytest.approx(want, rel=1e-10)


def test_cosent_analytic_values() -> None:
    q = torch.eye(3, dtype=torch.float64)
    assert float(cosent_loss(q, q, torch.ones(3))) == 0.0  # all tied: log 1
    k = torch.stack([q[0], q[0], q[0]])  # cosines 1, 0, 0
    assert float(cosent_loss(q, k, torch.tensor([0.0, 1.0, 1.0]), 1.0)) == pytest.approx(
        math.log(1 + 2 * math.e)
    )


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_cosent_and_angle_equal_sentence_transformers(seed: int, temperature: float) -> None:
    q, k, s = _batch(seed, dtype=torch.float32)
    cosent = st_losses.CoSENTLoss(model=None, scale=1 / temperature)
    angle = st_losses.AnglELoss(model=None, scale=1 / temperature)
    torch.testing.assert_close(
        cosent_loss(q, k, s, temperature), cosent.compute_loss_from_embeddings([q, k], s)
    )
    torch.testing.assert_close(
        angle_loss(q, k, s, temperature), angle.compute_loss_from_embeddings([q, k], s)
    )


def test_angle_similarity_equals_sentence_transformers_odd_dim() -> None:
    from sentence_transformers.util import pairwise_angle_sim

    q, k, _ = _batch(3, d=7, dtype=torch.float32)
    torch.testing.assert_close(paired_angle_similarity(q, k), pairwise_angle_sim(q, k))


def _distill_batch(seed: int, b: int = 5, m: int = 3, d: int = 6):
    g = torch.Generator().manual_seed(seed)
    q, p = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    n = torch.randn(b, m, d, generator=g)
    t = torch.randn(b, 1 + m, generator=g) * 3
    return q, p, n, t


@pytest.mark.parametrize("seed", [0, 1])
def test_margin_mse_equals_sentence_transformers(seed: int) -> None:
    q, p, n, t = _distill_batch(seed)
    st = st_losses.MarginMSELoss(model=None)
    want = st.compute_loss_from_embeddings([q, p, *n.unbind(1)], t)
    torch.testing.assert_close(margin_mse(q, p, n, t), want)


@pytest.mark.parametrize("seed", [0, 1])
def test_listwise_kl_equals_sentence_transformers(seed: int) -> None:
    q, p, n, t = _distill_batch(seed)
    st = st_losses.DistillKLDivLoss(model=None, temperature=2.0)
    want = st.compute_loss_from_embeddings([q, p, *n.unbind(1)], t)
    got = listwise_kl_distillation(q, p, n, t, temperature=2.0, teacher_temperature=2.0)
    torch.testing.assert_close(got, want)


def test_distillation_mask_equals_dropping_the_padding() -> None:
    q, p, n, t = _distill_batch(4, b=1, m=3)
    mask = torch.tensor([[True, True, False]])
    padded = n.clone()
    padded[0, 2] = 99.0  # whatever sits in the padding
    for fn in (margin_mse, listwise_kl_distillation):
        torch.testing.assert_close(fn(q, p, padded, t, mask=mask), fn(q, p, n[:, :2], t[:, :3]))


def test_distillation_errors_name_the_argument() -> None:
    q, p, n, t = _distill_batch(0)
    with pytest.raises(ValueError, match="teacher_scores must be"):
        margin_mse(q, p, n, t[:, :2])
    with pytest.raises(ValueError, match="mask must be"):
        listwise_kl_distillation(q, p, n, t, mask=torch.ones(5, 3))


def test_reranker_losses() -> None:
    logits = torch.tensor([2.0, -1.0])
    want = -(math.log(1 / (1 + math.exp(-2.0))) + math.log(1 - 1 / (1 + math.exp(1.0)))) / 2
    assert float(pointwise_binary_cross_entropy(logits, torch.tensor([1.0, 0.0]))) == (
        pytest.approx(want)
    )
    z = torch.tensor([[3.0, 1.0, 0.0]])
    want = -math.log(math.exp(3) / (math.exp(3) + math.exp(1) + 1))
    assert float(listwise_softmax_cross_entropy(z)) == pytest.approx(want, rel=1e-6)
    masked = listwise_softmax_cross_entropy(z, torch.tensor([[True, False]]))
    assert float(masked) == pytest.approx(-math.log(math.exp(3) / (math.exp(3) + math.exp(1))))
