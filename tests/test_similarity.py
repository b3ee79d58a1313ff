from __future__ import annotations

import pytest
import torch

import reference as ref
from contrastkit.functional import METRICS, paired_similarity, similarity_matrix


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("metric", METRICS)
def test_matrix_matches_pairwise_reference(metric: str) -> None:
    a, b = _rand(5, 7, seed=1), _rand(4, 7, seed=2)
    got = similarity_matrix(a, b, metric)
    want = torch.stack([torch.stack([ref.sim(x, y, metric) for y in b]) for x in a])
    assert got.shape == (5, 4)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("metric", METRICS)
def test_paired_is_diagonal_of_matrix(metric: str) -> None:
    a, b = _rand(6, 3, seed=3), _rand(6, 3, seed=4)
    torch.testing.assert_close(
        paired_similarity(a, b, metric), similarity_matrix(a, b, metric).diagonal()
    )


def test_larger_is_more_similar_for_euclidean() -> None:
    a = torch.tensor([[0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [5.0, 0.0]])
    s = similarity_matrix(a, b, "euclidean")
    assert s[0, 0] > s[0, 1]


@pytest.mark.parametrize("metric", METRICS)
def test_zero_vectors_give_finite_values_and_gradients(metric: str) -> None:
    a = torch.zeros(3, 4, requires_grad=True)
    b = torch.cat([torch.zeros(1, 4), _rand(2, 4).float()]).requires_grad_(True)
    s = similarity_matrix(a, b, metric)
    s.sum().backward()
    assert torch.isfinite(s).all()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    if metric == "cosine":
        assert torch.equal(s, torch.zeros(3, 3))


@pytest.mark.parametrize("metric", METRICS)
def test_gradcheck(metric: str) -> None:
    a = _rand(4, 3, seed=5).requires_grad_()
    b = _rand(5, 3, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: similarity_matrix(x, y, metric), (a, b))


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((torch.randn(3, 4), torch.randn(3, 5)), ValueError, "same embedding dimension"),
        ((torch.randn(3), torch.randn(3, 4)), ValueError, "a must be 2-D"),
        ((torch.randn(3, 4), torch.randn(3, 4).double()), TypeError, "same dtype"),
        (
            (torch.ones(3, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.long)),
            TypeError,
            "floating",
        ),
        (([[1.0]], torch.randn(1, 1)), TypeError, "torch.Tensor"),
        ((torch.tensor([[float("nan"), 1.0]]), torch.randn(1, 2)), ValueError, "NaN"),
    ],
)
def test_bad_input_is_named(args, exc, match) -> None:
    with pytest.raises(exc, match=match):
        similarity_matrix(*args)


def test_unknown_metric() -> None:
    with pytest.raises(ValueError, match=r"metric must be one of .*got 'manhattan'"):
        similarity_matrix(torch.randn(2, 2), torch.randn(2, 2), metric="manhattan")


def test_normalize_over_matches_autograd_and_gradchecks() -> None:
    """The fused cosine preparation equals normalize(x) / t in value and gradient (x and a
    learnable t), zero rows included, and passes float64 gradcheck."""
    from contrastkit.functional.similarity import normalize, normalize_over

    x = _rand(6, 5, seed=50).requires_grad_()
    with torch.no_grad():
        x[2] = 0.0
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    upstream = _rand(6, 5, seed=51)
    fused = normalize_over(x, t)
    reference = normalize(x) / t
    torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad((fused * upstream).sum(), (x, t))
    ref_grads = torch.autograd.grad((reference * upstream).sum(), (x, t))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    smooth = _rand(6, 5, seed=52).requires_grad_()  # finite differences jump at a zero row
    assert torch.autograd.gradcheck(lambda a, b: normalize_over(a, b), (smooth, t))
    assert torch.autograd.gradcheck(lambda a: normalize_over(a, 0.7), (smooth,))
