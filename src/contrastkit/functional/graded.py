"""Graded similarity: losses that order pairs by a gold score (STS-style data).

Shapes: ``query: (B, D)``, ``key: (B, D)`` the two texts of B pairs, ``scores: (B,)`` their gold
similarity (any real scale: only the order of the scores matters).

Both losses are CoSENT's ranking of pairs: for every two pairs (i, j) and (k, l) of the batch
whose gold scores are ordered ``score_ij > score_kl``, the model's similarity of (i, j) should
be larger than that of (k, l)::

    loss = log(1 + sum_{score_ij > score_kl} exp((s(k, l) - s(i, j)) / temperature))

CoSENT (Su 2022, https://kexue.fm/archives/8847; Huang et al., TASLP 2024) takes ``s`` = cosine;
AnglE (Li & Li 2023, https://arxiv.org/abs/2309.12871) takes the absolute angle similarity of
:func:`paired_angle_similarity`, whose gradient does not vanish where the cosine saturates.
``temperature`` is sentence-transformers' ``1 / scale`` (their default scale 20 = 0.05 here).
Neighbours: InfoNCE (:func:`contrastkit.functional.info_nce`) needs only positive pairs;
these need a score per pair and never push two unrelated pairs apart.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit._checks import check_embeddings, check_pair, check_temperature, check_tensor
from contrastkit.functional.precision import own_precision
from contrastkit.functional.similarity import normalize

__all__ = ["angle_loss", "cosent_loss", "paired_angle_similarity", "ranked_pairs_loss"]


def paired_angle_similarity(a: Tensor, b: Tensor) -> Tensor:
    """AnglE's absolute angle similarity ``|cos(a, b) + sin(a, b)|`` row by row.

    The rows are L2-normalised and read as complex vectors ``u + i v`` (the first and the second
    half of D, D padded to even); the real part of ``a * conj(b)`` is the cosine, its imaginary
    part ``sum(v_a u_b - u_a v_b)`` the "sine" term (Li & Li 2023, eq. 5; sentence-transformers'
    ``pairwise_angle_sim``).

    Args:
        a: (N, D). b: (N, D).

    Returns:
        (N,) similarities in [0, sqrt(2)].

    >>> paired_angle_similarity(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    tensor([1.])
    """
    check_embeddings("a", a)
    check_embeddings("b", b)
    check_pair("a", a, "b", b)
    if a.shape[1] % 2:
        a = torch.nn.functional.pad(a, (0, 1))  # (N, D + 1)
        b = torch.nn.functional.pad(b, (0, 1))
    a, b = normalize(a), normalize(b)
    cos = (a * b).sum(-1)  # (N,)
    a_re, a_im = a.chunk(2, dim=1)  # (N, D/2) each
    b_re, b_im = b.chunk(2, dim=1)
    sin = (a_im * b_re - a_re * b_im).sum(-1)  # (N,)
    return (cos + sin).abs()


def ranked_pairs_loss(similarity: Tensor, scores: Tensor, temperature: float | Tensor) -> Tensor:
    """CoSENT's log-sum-exp over every ordered pair of pairs (module docstring).

    Args:
        similarity: (B,) the model's similarity of each pair.
        scores: (B,) gold scores; only their order is used (ties add nothing).
        temperature: > 0; the differences are divided by it.

    Returns:
        A scalar >= 0 (log 1 = 0 when no two pairs have different scores).

    >>> ranked_pairs_loss(torch.tensor([0.9, 0.1]), torch.tensor([1.0, 0.0]), 1.0)
    tensor(0.3711)
    """
    check_tensor("similarity", similarity, ndim=1)
    scores = check_tensor("scores", scores, ndim=1)
    if scores.shape != similarity.shape:
        raise ValueError(
            f"scores must have one gold score per pair, shape {tuple(similarity.shape)}, got "
            f"{tuple(scores.shape)}."
        )
    s = similarity / temperature  # (B,)
    diff = s[None, :] - s[:, None]  # (B, B): [i, j] = s_j - s_i
    ordered = scores.to(s.dtype)[:, None] > scores.to(s.dtype)[None, :]  # i graded above j
    diff = diff.masked_fill(~ordered, float("-inf"))
    zero = s.new_zeros(1)  # the "1 +" of the formula
    return torch.logsumexp(torch.cat([zero, diff.flatten()]), dim=0)


@own_precision("float32")
def cosent_loss(
    query: Tensor, key: Tensor, scores: Tensor, temperature: float | Tensor = 0.05
) -> Tensor:
    """CoSENT (Su 2022; Huang et al. 2024): rank the B pairs' cosines by their gold ``scores``.

    Args:
        query: (B, D). key: (B, D): pair i is (query[i], key[i]).
        scores: (B,) gold similarity of each pair.
        temperature: sentence-transformers' ``1 / scale`` (default scale 20).

    Returns:
        A scalar.

    >>> q = torch.tensor([[1.0, 0.0], [1.0, 0.0]]); k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> float(cosent_loss(q, k, torch.tensor([1.0, 0.0]))) < 1e-8  # right order, far apart
    True
    """
    check_embeddings("query", query)
    check_embeddings("key", key)
    check_pair("query", query, "key", key)
    check_temperature(temperature)
    similarity = (normalize(query) * normalize(key)).sum(-1)  # (B,)
    return ranked_pairs_loss(similarity, scores, temperature)


@own_precision("float32")
def angle_loss(
    query: Tensor, key: Tensor, scores: Tensor, temperature: float | Tensor = 0.05
) -> Tensor:
    """AnglE (Li & Li 2023, https://arxiv.org/abs/2309.12871): CoSENT's ranking on
    :func:`paired_angle_similarity` instead of the cosine.

    Args:
        query: (B, D). key: (B, D). scores: (B,). temperature: as :func:`cosent_loss`.

    Returns:
        A scalar.

    >>> q = torch.tensor([[1.0, 0.0], [1.0, 0.0]]); k = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    >>> float(angle_loss(q, k, torch.tensor([1.0, 0.0]))) < 1e-4
    True
    """
    check_temperature(temperature)
    return ranked_pairs_loss(paired_angle_similarity(query, key), scores, temperature)
