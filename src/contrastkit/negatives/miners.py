"""Hard-negative mining: in the batch (online) and over a corpus through an index (offline).

Miners run under ``no_grad`` and return indices; the loss then receives the mined embeddings as
extra negatives, e.g. ``info_nce(q, k, key[idx])`` with per-query negatives (B, K, D).

Offline mining (as in sentence-transformers' ``mine_hard_negatives``, and the "positive-aware"
filtering of NV-Retriever, Moreira et al. 2024, https://arxiv.org/abs/2407.15831): search the
corpus for each query, skip the ``skip_top`` best ranks (often unlabeled positives), drop the known
positives, keep only candidates scoring below the positive by ``margin`` (or below
``max_score_ratio`` times the positive), and cap at ``num_negatives`` per query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from contrastkit._checks import check_embeddings, check_pair, check_positive_number
from contrastkit.functional.precision import own_precision
from contrastkit.functional.similarity import (
    check_metric,
    paired_similarity_unchecked,
    similarity_matrix_unchecked,
)
from contrastkit.index.exact import chunked_topk

__all__ = ["MinedNegatives", "exact_search", "hard_negatives_in_batch", "mine_hard_negatives"]


def _check_k(name: str, k: object) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"{name} must be an int > 0, got {k!r}.")
    return k


@torch.no_grad()
@own_precision("float32")
def hard_negatives_in_batch(
    query: Tensor,
    key: Tensor,
    k: int,
    *,
    metric: str = "cosine",
    ignore_mask: Tensor | None = None,
) -> Tensor:
    """The ``k`` keys most similar to each query, excluding its positive (online mining).

    Args:
        query: (B, D); key: (N, D) with N >= B, key i the positive of query i.
        k: negatives per query, 1 <= k <= N - 1.
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        ignore_mask: optional (B, N) bool of keys that may not be mined (known false negatives,
            e.g. :func:`contrastkit.negatives.mask_from_ids`).

    Returns:
        (B, k) long key indices, hardest first. Use ``key[idx]`` -> (B, k, D) as per-query
        negatives. If ignored keys leave fewer than k candidates for a row, its last columns
        are -1 (check before indexing).

    >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    >>> hard_negatives_in_batch(q, q, k=1).tolist()
    [[2], [2], [0]]
    """
    check_embeddings("query", query)
    check_embeddings("key", key)
    check_pair("query", query, "key", key, same_rows=False)
    metric = check_metric(metric)
    b, n = query.shape[0], key.shape[0]
    if n < b:
        raise ValueError(f"key must have at least B={b} rows (key i pairs with query i), got {n}.")
    k = _check_k("k", k)
    if k > n - 1:
        raise ValueError(f"k must be <= N - 1 = {n - 1} (all keys but the positive), got {k}.")
    scores = similarity_matrix_unchecked(query, key, metric).float()  # (B, N)
    blocked = torch.zeros(b, n, dtype=torch.bool, device=query.device)
    rows = torch.arange(b, device=query.device)
    blocked[rows, rows] = True
    if ignore_mask is not None:
        if ignore_mask.shape != (b, n) or ignore_mask.dtype != torch.bool:
            raise ValueError(
                f"ignore_mask must be a bool tensor of shape ({b}, {n}), got "
                f"{ignore_mask.dtype} {tuple(ignore_mask.shape)}."
            )
        blocked |= ignore_mask
    scores = scores.masked_fill(blocked, float("-inf"))
    top, idx = scores.topk(k, dim=1)  # (B, k)
    return torch.where(torch.isfinite(top), idx, torch.full_like(idx, -1))


@dataclass
class MinedNegatives:
    """Result of :func:`mine_hard_negatives`.

    Attributes:
        indices: (Q, K) long corpus positions, hardest first; -1 pads rows with fewer than K.
        scores: (Q, K) float similarities to the query (-inf in padded slots).
        positive_scores: (Q,) the similarity of each query to its (first) positive.
        positives: (Q,) long corpus row of each query's (first) positive.
    """

    indices: Tensor
    scores: Tensor
    positive_scores: Tensor
    positives: Tensor

    def counts(self) -> Tensor:
        """(Q,) number of negatives kept per query."""
        return (self.indices >= 0).sum(dim=1)

    def triplets(self) -> list[tuple[int, int, int]]:
        """Flat ``(query, positive, negative)`` triplets (query row, corpus rows) for a training
        file: one per kept negative, padding skipped."""
        out = []
        for qi, (pos, row) in enumerate(zip(self.positives.tolist(), self.indices.tolist())):
            out.extend((qi, pos, j) for j in row if j >= 0)
        return out


@torch.no_grad()
@own_precision("float32")
def exact_search(
    query: Tensor, corpus: Tensor, k: int, *, metric: str = "cosine", chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """Exact top-k by chunked similarity: ``(scores, indices)``, both (Q, min(k, N)).

    Memory is ``chunk_size * N`` scores at a time.

    >>> c = torch.eye(3)
    >>> exact_search(torch.tensor([[0.0, 1.0, 0.1]]), c, 2)[1].tolist()
    [[1, 2]]
    """
    metric = check_metric(metric)
    k = min(_check_k("k", k), corpus.shape[0])
    scores, indices = [], []
    for start in range(0, query.shape[0], chunk_size):
        s = similarity_matrix_unchecked(query[start : start + chunk_size], corpus, metric)
        top, idx = s.float().topk(k, dim=1)
        scores.append(top)
        indices.append(idx)
    return torch.cat(scores), torch.cat(indices)


def _search(index: Any, query: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Call ``index.search(query, k)``; accept a result with ``.scores``/``.indices`` or a tuple."""
    result = index.search(query, k)
    if hasattr(result, "scores") and hasattr(result, "indices"):
        scores, indices = result.scores, result.indices
    else:
        scores, indices = result
    return torch.as_tensor(scores).float(), torch.as_tensor(indices).long()


@torch.no_grad()
def mine_hard_negatives(
    query: Tensor,
    corpus: Tensor,
    positives: Tensor | Sequence[Sequence[int]],
    *,
    num_negatives: int = 5,
    skip_top: int = 0,
    max_rank: int | None = None,
    margin: float | None = None,
    max_score_ratio: float | None = None,
    corpus_groups: Tensor | None = None,
    index: Any = None,
    search_k: int | None = None,
    metric: str = "cosine",
) -> MinedNegatives:
    """Offline hard negatives for every query from a corpus.

    For each query: retrieve the ``search_k`` nearest corpus rows (through ``index.search`` if an
    index is given, else exact chunked top-k), drop its positives, drop the first ``skip_top``
    remaining ranks and every rank from ``max_rank`` on (the window ``[skip_top, max_rank)``,
    ranks counted after removing the positives, as sentence-transformers' ``range_min`` /
    ``range_max``), keep candidates with ``score < positive_score - margin`` (and
    ``score < max_score_ratio * positive_score``), with ``corpus_groups`` drop candidates that
    duplicate a positive or an already kept negative, and keep the best ``num_negatives``.

    Args:
        query: (Q, D) query embeddings.
        corpus: (N, D) corpus embeddings (the same rows the index was built from).
        positives: (Q,) long corpus row of each query's positive, or a list of lists (several
            positives; the first sets ``positive_score``).
        num_negatives: cap per query (K).
        skip_top: ranks skipped after removing positives (likely unlabeled positives).
        max_rank: candidates ranked ``max_rank`` or lower (0-based, after removing positives)
            are never taken; None: no limit. Must exceed ``skip_top``.
        margin: absolute margin below the positive's score, or None for no margin filter.
        max_score_ratio: relative filter (NV-Retriever's "TopK-PercPos", e.g. 0.95), or None.
        corpus_groups: optional (N,) long; rows with equal values are duplicates (e.g.
            :func:`contrastkit.data.group_ids` of the corpus texts): a candidate in a positive's
            group or in the group of a negative already kept is skipped.
        index: optional object with ``search(query, k)`` returning ``(scores, indices)`` or an
            object with ``.scores``/``.indices`` (e.g. :mod:`contrastkit.index`); its rows must be
            the corpus rows in order. Scores must use ``metric``.
        search_k: candidates retrieved per query (default ``skip_top + num_negatives + 10 +``
            the largest number of positives, or ``max_rank +`` that number when smaller).
        metric: similarity for the positive scores and the exact search.

    Returns:
        :class:`MinedNegatives` with (Q, K) indices (-1 padded) and scores.

    >>> corpus = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0]])
    >>> q = torch.tensor([[1.0, 0.0]])
    >>> mine_hard_negatives(q, corpus, torch.tensor([0]), num_negatives=2).indices.tolist()
    [[1, 2]]
    >>> mined = mine_hard_negatives(q, corpus, torch.tensor([0]), num_negatives=2, skip_top=1,
    ...                             margin=0.0)
    >>> mined.indices.tolist(), mined.triplets()
    ([[2, 3]], [(0, 0, 2), (0, 0, 3)])
    """
    check_embeddings("query", query)
    check_embeddings("corpus", corpus)
    check_pair("query", query, "corpus", corpus, same_rows=False)
    metric = check_metric(metric)
    num_negatives = _check_k("num_negatives", num_negatives)
    if not isinstance(skip_top, int) or isinstance(skip_top, bool) or skip_top < 0:
        raise ValueError(f"skip_top must be an int >= 0, got {skip_top!r}.")
    if max_rank is not None and (
        not isinstance(max_rank, int) or isinstance(max_rank, bool) or max_rank <= skip_top
    ):
        raise ValueError(
            f"max_rank must be an int > skip_top={skip_top} (the end of the rank window) or "
            f"None, got {max_rank!r}."
        )
    if margin is not None:
        margin = check_positive_number("margin", margin, allow_zero=True)
    if max_score_ratio is not None:
        max_score_ratio = check_positive_number("max_score_ratio", max_score_ratio)
    q = query.shape[0]
    if isinstance(positives, Tensor):
        if positives.shape != (q,) or positives.dtype.is_floating_point:
            raise ValueError(
                f"positives must be a (Q,) = ({q},) integer tensor of corpus rows, got "
                f"{positives.dtype} {tuple(positives.shape)}; pass a list of lists for several."
            )
        pos_lists = [[int(p)] for p in positives.tolist()]
    else:
        pos_lists = [list(map(int, p)) for p in positives]
        if len(pos_lists) != q or any(len(p) == 0 for p in pos_lists):
            raise ValueError(
                f"positives must hold one non-empty list of corpus rows per query ({q}), got "
                f"{len(pos_lists)} lists."
            )
    n = corpus.shape[0]
    if any(not 0 <= p < n for ps in pos_lists for p in ps):
        raise ValueError(f"positives must be corpus rows in [0, {n}), got out-of-range rows.")
    groups: list[int] | None = None
    if corpus_groups is not None:
        if not isinstance(corpus_groups, Tensor) or corpus_groups.shape != (n,):
            got = tuple(corpus_groups.shape) if isinstance(corpus_groups, Tensor) else corpus_groups
            raise ValueError(
                f"corpus_groups must be a (N,) = ({n},) long tensor (one group per corpus row, "
                f"e.g. group_ids(texts)), got {got!r}."
            )
        groups = corpus_groups.tolist()
    first = torch.tensor([p[0] for p in pos_lists], device=corpus.device)
    positive_scores = paired_similarity_unchecked(query, corpus[first], metric).float().cpu()
    max_pos = max(len(p) for p in pos_lists)
    default_k = skip_top + num_negatives + 10
    if max_rank is not None:
        default_k = min(default_k, max_rank)
    k = min(search_k or (default_k + max_pos), n)
    if index is None:
        scores, indices = chunked_topk(query, corpus, k, metric=metric)
    else:
        scores, indices = _search(index, query, k)
    scores, indices = scores.cpu(), indices.cpu()
    out_idx = torch.full((q, num_negatives), -1, dtype=torch.long)
    out_scores = torch.full((q, num_negatives), float("-inf"))
    for i in range(q):
        pos = set(pos_lists[i])
        kept = [
            (s, j)
            for s, j in zip(scores[i].tolist(), indices[i].tolist())
            if j >= 0 and j not in pos
        ]
        kept = kept[skip_top:max_rank]
        bound = positive_scores[i].item()
        if margin is not None:
            kept = [(s, j) for s, j in kept if s < bound - margin]
        if max_score_ratio is not None:
            kept = [(s, j) for s, j in kept if s < bound * max_score_ratio]
        if groups is not None:
            seen = {groups[p] for p in pos}
            unique = []
            for s_j, j in kept:
                if groups[j] not in seen:
                    seen.add(groups[j])
                    unique.append((s_j, j))
            kept = unique
        kept = kept[:num_negatives]
        if kept:
            out_scores[i, : len(kept)] = torch.tensor([s for s, _ in kept])
            out_idx[i, : len(kept)] = torch.tensor([j for _, j in kept])
    return MinedNegatives(out_idx, out_scores, positive_scores, first.cpu())
