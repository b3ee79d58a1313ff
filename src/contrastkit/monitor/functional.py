"""Embedding-health statistics on one batch (pure functions, no gradient).

Shape notation: N embeddings, D dim. ``query``/``key`` are positive pairs (row i with row i).
The streaming, distributed versions are in :mod:`contrastkit.monitor.streaming`; each one equals
the function here when fed the same rows.

| statistic                  | healthy                         | collapsed                      |
|----------------------------|---------------------------------|--------------------------------|
| :func:`embedding_std`      | about 1/sqrt(D) per dimension   | 0 (all rows equal)             |
| :func:`effective_rank`     | a sizeable fraction of min(N, D)| 1 (a point or a line), k       |
| :func:`uniformity`         | <= -1.6 (circle), about -4 high D| 0 (all rows equal)            |
| :func:`alignment`          | small (positives close)         | 0 as well: read with the above |
| :func:`similarity_stats`   | positive >> negative            | both near 1, gap near 0        |
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from contrastkit._checks import check_embeddings, check_pair, check_positive_number
from contrastkit.functional.similarity import normalize

__all__ = [
    "SimilarityStats",
    "alignment",
    "effective_rank",
    "embedding_std",
    "similarity_stats",
    "spectral_effective_rank",
    "uniformity",
]


@torch.no_grad()
def alignment(query: Tensor, key: Tensor, *, alpha: float = 2.0) -> Tensor:
    """Alignment (Wang & Isola 2020, https://arxiv.org/abs/2005.10242).

    ``E_i |q_i/|q_i| - k_i/|k_i||^alpha`` over positive pairs; in [0, 2^alpha]. Lower is better,
    but a collapsed encoder also reaches 0: read it together with :func:`uniformity`.

    Args:
        query: (N, D) embeddings of one view.
        key: (N, D) embeddings of the other view, row i the positive of query row i.
        alpha: exponent (2 in the paper).

    >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> alignment(q, -q)
    tensor(4.)
    """
    check_embeddings("query", query)
    check_embeddings("key", key)
    check_pair("query", query, "key", key)
    check_positive_number("alpha", alpha)
    return (normalize(query) - normalize(key)).norm(dim=-1).pow(alpha).mean()


@torch.no_grad()
def uniformity(embeddings: Tensor, *, t: float = 2.0) -> Tensor:
    """Uniformity (Wang & Isola 2020, https://arxiv.org/abs/2005.10242).

    ``log mean_{i < j} exp(-t |x_i - x_j|^2)`` over l2-normalised rows: the log of the mean
    Gaussian potential. 0 when every row is the same point; about ``-2t`` for uniform points in
    high dimension (-4 at t = 2), -1.6 uniform on a circle, -2.08 uniform on the 2-sphere.

    Args:
        embeddings: (N, D), N >= 2.
        t: kernel scale (2 in the paper).

    >>> round(float(uniformity(torch.ones(5, 3))), 6)
    0.0
    """
    check_embeddings("embeddings", embeddings)
    check_positive_number("t", t)
    n = embeddings.shape[0]
    if n < 2:
        raise ValueError(
            f"embeddings needs at least 2 rows for pairs, got shape {tuple(embeddings.shape)}."
        )
    x = normalize(embeddings.to(torch.float64))
    sq_dist = (2.0 - 2.0 * x @ x.T).clamp_min(0.0)  # (N, N)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)
    return torch.logsumexp(-t * sq_dist[upper], dim=0) - math.log(n * (n - 1) / 2)


def spectral_effective_rank(singular_values: Tensor) -> Tensor:
    """``exp`` of the entropy of the normalised singular values (Roy & Vetterli 2007).

    ``p_k = s_k / sum_j s_j``; ``erank = exp(-sum_k p_k log p_k)``, between 1 and the number of
    non-zero values (equal to it for a flat spectrum); 0 for an all-zero spectrum.

    Args:
        singular_values: (R,) non-negative.

    >>> round(float(spectral_effective_rank(torch.tensor([2.0, 2.0, 2.0, 0.0]))), 6)
    3.0
    """
    s = singular_values.to(torch.float64).clamp_min(0.0)
    total = s.sum()
    if float(total) == 0.0:
        return total
    p = s / total
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum())


@torch.no_grad()
def effective_rank(embeddings: Tensor, *, centered: bool = False) -> Tensor:
    """RankMe (Garrido et al. 2023, https://arxiv.org/abs/2210.02885).

    :func:`spectral_effective_rank` of the singular values of the (N, D) embedding matrix
    (``centered=False``, as in RankMe), or of its centred version (``centered=True``: the
    effective rank of the covariance's square root). Healthy encoders keep a sizeable fraction of
    ``min(N, D)``; complete collapse gives 1 (uncentred) or 0 (centred), collapse to a k-dim
    subspace about k.

    Args:
        embeddings: (N, D) raw (not normalised) embeddings.
        centered: subtract the mean row first.

    >>> g = torch.Generator().manual_seed(0)
    >>> line = torch.randn(100, 1, generator=g) * torch.randn(1, 8, generator=g)  # rank 1
    >>> round(float(effective_rank(line)), 4)
    1.0
    """
    check_embeddings("embeddings", embeddings)
    x = embeddings.to(torch.float64)
    if centered:
        x = x - x.mean(dim=0)
    return spectral_effective_rank(torch.linalg.svdvals(x))


@torch.no_grad()
def embedding_std(embeddings: Tensor) -> Tensor:
    """Per-dimension std of the l2-normalised embeddings (SimSiam, Chen & He 2021, fig. 2).

    For rows spread isotropically on the sphere each dimension has std about ``1/sqrt(D)``; a
    collapsed encoder gives 0. Population std (divides by N).

    Args:
        embeddings: (N, D).

    Returns:
        (D,) standard deviations.

    >>> embedding_std(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    tensor([1., 0.])
    """
    check_embeddings("embeddings", embeddings)
    return normalize(embeddings).std(dim=0, correction=0)


class SimilarityStats(NamedTuple):
    """Mean cosine of positive pairs, of negative pairs (i != j), and their difference."""

    positive: Tensor
    negative: Tensor
    gap: Tensor


@torch.no_grad()
def similarity_stats(query: Tensor, key: Tensor) -> SimilarityStats:
    """Mean positive vs mean negative cosine similarity and the gap between them.

    ``positive = mean_i cos(q_i, k_i)``; ``negative = mean_{i != j} cos(q_i, k_j)``;
    ``gap = positive - negative``. Healthy training drives the gap up; a collapsed encoder has both
    near 1 and a gap near 0.

    Args:
        query: (N, D), N >= 2.
        key: (N, D), row i the positive of query row i.

    >>> q = torch.eye(3)
    >>> similarity_stats(q, q)
    SimilarityStats(positive=tensor(1.), negative=tensor(0.), gap=tensor(1.))
    """
    check_embeddings("query", query)
    check_embeddings("key", key)
    check_pair("query", query, "key", key)
    n = query.shape[0]
    if n < 2:
        raise ValueError(
            f"query needs at least 2 rows for negatives, got shape {tuple(query.shape)}."
        )
    sim = normalize(query) @ normalize(key).T  # (N, N)
    positive = torch.diagonal(sim).mean()
    negative = (sim.sum() - torch.diagonal(sim).sum()) / (n * (n - 1))
    return SimilarityStats(positive, negative, positive - negative)


@torch.no_grad()
def positive_negative_similarities(
    query: Tensor, key: Tensor, max_negatives: int = 20000, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Cosine similarities of matched pairs (B,) and of a sample of mismatched pairs (<= M,),
    for histograms (``query: (B, D)``, ``key: (B, D)``, row i the pair of row i).

    >>> pos, neg = positive_negative_similarities(torch.eye(3), torch.eye(3))
    >>> pos.tolist(), neg.tolist()
    ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    """
    qn = torch.nn.functional.normalize(query.float(), dim=-1)
    kn = torch.nn.functional.normalize(key.float(), dim=-1)
    sim = qn @ kn.T  # (B, B)
    pos = sim.diag()
    off = sim[~torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)]
    if off.numel() > max_negatives:
        g = torch.Generator().manual_seed(seed)
        off = off[torch.randperm(off.numel(), generator=g)[:max_negatives].to(off.device)]
    return pos, off
