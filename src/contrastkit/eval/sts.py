"""Graded similarity (STS-style) evaluation: how well the cosine of two embeddings orders pairs
like their gold scores.

``spearman`` is the Pearson correlation of the ranks (ties get their average rank, as
``scipy.stats.spearmanr``); ``pearson`` the Pearson correlation of the values
(``scipy.stats.pearsonr``). SentEval / MTEB report the Spearman correlation of cosine
similarity as the STS figure.

Shapes: ``a: (N, D)``, ``b: (N, D)`` the two sides of N pairs, ``gold: (N,)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit._checks import check_embeddings, check_pair, check_tensor
from contrastkit.functional.similarity import paired_similarity

__all__ = ["average_ranks", "pearson", "spearman", "sts_correlations"]


def average_ranks(x: Tensor) -> Tensor:
    """(N,) float64 ranks 1..N of ``x`` (N,), ties sharing their average rank.

    >>> average_ranks(torch.tensor([3.0, 1.0, 3.0]))
    tensor([2.5000, 1.0000, 2.5000], dtype=torch.float64)
    """
    x = x.double()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    n = len(x)
    ranks = torch.empty(n, dtype=torch.float64)
    start = 0
    for stop in range(1, n + 1):  # runs of equal values share (first + last) / 2
        if stop == n or sorted_x[stop] != sorted_x[start]:
            ranks[order[start:stop]] = (start + stop + 1) / 2
            start = stop
    return ranks


def pearson(x: Tensor, y: Tensor) -> float:
    """Pearson correlation of two (N,) tensors (NaN when one is constant).

    >>> round(pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0])), 4)
    0.9934
    """
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = (x.norm() * y.norm()).item()
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation of two (N,) tensors.

    >>> round(spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0])), 6)
    1.0
    """
    return pearson(average_ranks(x), average_ranks(y))


def sts_correlations(a: Tensor, b: Tensor, gold: Tensor) -> dict[str, float]:
    """``{"spearman", "pearson"}`` of the cosine of each pair with its gold score.

    Args:
        a: (N, D). b: (N, D). gold: (N,) gold similarities, N >= 2.

    Returns:
        The two correlations (in [-1, 1]).

    >>> a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    >>> b = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> round(sts_correlations(a, b, torch.tensor([1.0, 0.5, 0.0]))["spearman"], 6)
    1.0
    """
    check_embeddings("a", a)
    check_embeddings("b", b)
    check_pair("a", a, "b", b)
    gold = check_tensor("gold", gold, ndim=1)
    if len(gold) != len(a) or len(a) < 2:
        raise ValueError(
            f"gold must hold one score per pair (N = {len(a)} >= 2), got shape {tuple(gold.shape)}."
        )
    cos = paired_similarity(a.float(), b.float())  # (N,)
    return {"spearman": spearman(cos, gold), "pearson": pearson(cos, gold)}
