"""Similarity functions: larger always means more similar.

Shapes: ``a: (N, D)``, ``b: (M, D)``. ``similarity_matrix`` returns all pairs ``(N, M)``;
``paired_similarity`` returns row-wise ``(N,)``.

| metric        | s(a, b)                     | range          |
|---------------|-----------------------------|----------------|
| ``cosine``    | a.b / (|a| |b|)             | [-1, 1]        |
| ``dot``       | a.b                         | R              |
| ``euclidean`` | -|a - b|_2                  | (-inf, 0]      |

Cosine is safe for zero vectors: a zero row has similarity 0 to everything, and a finite
(zero) gradient, never NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit._checks import (
    check_embeddings,
    check_pair,
    check_reduction,
    check_temperature,
)

METRICS = ("cosine", "dot", "euclidean")
_EPS = 1e-8


def check_metric(metric: object) -> str:
    """Validate a metric name."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    return str(metric)


def normalize(x: Tensor) -> Tensor:
    """L2-normalise rows; zero rows stay zero (no NaN in value or gradient).

    >>> normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    tensor([[0.6000, 0.8000],
            [0.0000, 0.0000]])
    """
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    # Rows with (near) zero norm are divided by 1 instead of by eps: they stay ~0 and their
    # gradient stays finite, where x / max(|x|, eps) would give gradients of order 1 / eps.
    return x / torch.where(norm > _EPS, norm, torch.ones_like(norm))


class _NormalizeOver(torch.autograd.Function):
    """``x / (|x| * t)`` row-wise with a hand-written backward (one fused op for autograd).

    ``apply(x, temperature, dtype)`` with ``x: (..., D)``, a float or scalar tensor temperature
    and the result's dtype (``x``'s, or float32 for half ``x``); rows with ``|x| <= eps`` are
    divided by ``t`` only, like :func:`normalize`. With ``y = x / (|x| t)``:
    ``dx = (g - t^2 (y . g) y) / (|x| t)`` and ``dt = -sum(y . g) / t``. Upcast inputs save
    the half ``x`` and the (..., 1) scales and recompute ``y`` in the backward: saving the
    float32 ``y`` would keep a float32 copy of every half embedding beside the engine's half
    operands (+64 MiB at B = 65,536 x 256 for the two sides).
    """

    @staticmethod
    def forward(ctx, x, temperature, dtype):
        xc = x.to(dtype)
        norm = torch.linalg.vector_norm(xc, dim=-1, keepdim=True)
        unit = norm > _EPS
        scale = torch.where(unit, norm, torch.ones_like(norm)).mul_(temperature).reciprocal_()
        y = xc * scale
        ctx.recompute = xc is not x
        kept = x if ctx.recompute else y
        if isinstance(temperature, Tensor):  # kept as a tensor: no device sync
            ctx.save_for_backward(kept, scale, unit, temperature)
        else:
            ctx.save_for_backward(kept, scale, unit)
            ctx.t = temperature
        return y

    @staticmethod
    def backward(ctx, g):
        kept, scale, unit, *t_saved = ctx.saved_tensors
        t = t_saved[0] if t_saved else ctx.t
        y = kept.to(g.dtype) * scale if ctx.recompute else kept
        c = torch.linalg.vecdot(y, g, dim=-1).unsqueeze(-1)  # (..., 1)
        coef = torch.where(unit, c * (t * t), 0.0)
        dx = torch.addcmul(g, y, coef, value=-1.0).mul_(scale)
        dt = -c.sum() / t if ctx.needs_input_grad[1] else None
        return dx.to(kept.dtype), dt, None


def normalize_over(
    x: Tensor, temperature: float | Tensor, dtype: torch.dtype | None = None
) -> Tensor:
    """Row-wise ``normalize(x) / temperature`` for ``x: (..., D)``, in one autograd node.

    The chunked engine's cosine inputs: the same value and gradients as the two-step form with
    one backward node instead of three (gradients flow to a tensor temperature too). ``dtype``:
    the result's (default ``x``'s); the engine passes float32 for half ``x``, which is then
    upcast inside the node (the backward keeps ``x``, not a float32 copy).

    >>> torch.allclose(normalize_over(torch.tensor([[3.0, 4.0]]), 0.5), torch.tensor([[1.2, 1.6]]))
    True
    """
    dtype = x.dtype if dtype is None else dtype
    if isinstance(temperature, Tensor):
        temperature = temperature.reshape(()).to(dtype)
    return _NormalizeOver.apply(x, temperature, dtype)


def prepare(x: Tensor, metric: str) -> Tensor:
    """What a metric does to each side before the inner product (normalise for cosine)."""
    return normalize(x) if metric == "cosine" else x


def _safe_sqrt(x: Tensor) -> Tensor:
    # sqrt with a zero (not infinite) gradient at 0, so identical points do not yield NaN.
    positive = x > 0
    return torch.where(
        positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x)
    )


def similarity_matrix(a: Tensor, b: Tensor, metric: str = "cosine") -> Tensor:
    """All-pairs similarity.

    Args:
        a: (N, D) embeddings.
        b: (M, D) embeddings.
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"`` (negative L2 distance).

    Returns:
        (N, M) similarities; entry (i, j) compares ``a[i]`` with ``b[j]``.

    >>> a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> similarity_matrix(a, a)
    tensor([[1., 0.],
            [0., 1.]])
    >>> similarity_matrix(a, a, metric="euclidean")
    tensor([[-0.0000, -2.2361],
            [-2.2361, -0.0000]])
    """
    check_embeddings("a", a)
    check_embeddings("b", b)
    check_pair("a", a, "b", b, same_rows=False)
    return similarity_matrix_unchecked(a, b, check_metric(metric))


def similarity_matrix_unchecked(a: Tensor, b: Tensor, metric: str) -> Tensor:
    """``similarity_matrix`` without input checks, for inner loops that already checked."""
    if metric == "euclidean":
        return -pairwise_distance(a, b)
    return prepare(a, metric) @ prepare(b, metric).T


def pairwise_distance(a: Tensor, b: Tensor) -> Tensor:
    """(N, M) Euclidean distances through |a|^2 + |b|^2 - 2 a.b, clamped at 0 before the root."""
    sq = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1)[None, :] - 2.0 * (a @ b.T)
    return _safe_sqrt(sq.clamp_min(0.0))


def paired_similarity(a: Tensor, b: Tensor, metric: str = "cosine") -> Tensor:
    """Row-wise similarity: ``out[i] = s(a[i], b[i])``.

    Args:
        a: (N, D) embeddings.
        b: (N, D) embeddings.
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.

    Returns:
        (N,) similarities.

    >>> paired_similarity(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]]), "euclidean")
    tensor([-3.1623])
    """
    check_embeddings("a", a)
    check_embeddings("b", b)
    check_pair("a", a, "b", b)
    return paired_similarity_unchecked(a, b, check_metric(metric))


def paired_similarity_unchecked(a: Tensor, b: Tensor, metric: str) -> Tensor:
    if metric == "euclidean":
        return -_safe_sqrt(((a - b) ** 2).sum(-1))
    return (prepare(a, metric) * prepare(b, metric)).sum(-1)


def check_paired_loss_inputs(
    name_a: str,
    a: object,
    name_b: str,
    b: object,
    *,
    temperature: object,
    metric: object,
    reduction: object,
) -> tuple[str, str]:
    """The checks every paired loss starts with: two (B, D) embedding batches that pair row by
    row, a valid temperature, metric and reduction. Returns ``(metric, reduction)``."""
    check_embeddings(name_a, a)
    check_embeddings(name_b, b)
    check_pair(name_a, a, name_b, b)  # type: ignore[arg-type]
    check_temperature(temperature)
    return check_metric(metric), check_reduction(reduction)
