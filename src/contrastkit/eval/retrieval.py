"""Retrieval metrics: Recall@k, HitRate@k, Precision@k, MRR@k, nDCG@k, MAP@R and R-Precision.

Shapes: ``query: (Q, D)``, ``corpus: (N, D)``, ``hits: (Q, K)``, per-query values ``(Q,)``.

Two layers, in the torchmetrics spirit:

* per-query functions on a ranked relevance matrix ``hits: (Q, K) bool`` (``hits[q, j]`` is
  True when the j-th retrieved item of query q is relevant) and ``num_relevant: (Q,)`` (how many
  relevant items exist in the whole corpus): :func:`recall_at_k`, :func:`hit_rate_at_k`,
  :func:`precision_at_k`, :func:`mrr_at_k`, :func:`ndcg_at_k`, :func:`map_at_r`,
  :func:`r_precision`;
* :func:`retrieval_scores` / :func:`retrieval_metrics`, which search the corpus (exact chunked
  top-K over an (N, D) tensor, or an :class:`~contrastkit.index.Index`), derive ``hits`` from a
  :class:`Relevance` (labels or explicit relevant indices, and what to leave out) and apply the
  functions above, query block by query block (:class:`SearchChunks`), so neither the (Q, N)
  score matrix nor a (Q, N) relevance matrix is ever built.

Conventions:

* ranking ties are broken by the lower corpus index (exact search);
* a query with no relevant item in the corpus has no defined score: its per-query value is NaN
  for every metric and the means skip it (``retrieval_metrics`` reports how many in
  ``"skipped_queries"``);
* with ``k`` larger than the corpus, the ranking holds all N items; Precision@k still divides
  by k.

Recall@k here is the IR definition (fraction of the relevant items found in the top k). The
metric-learning "Recall@k" of Oh Song et al. 2016 (https://arxiv.org/abs/1511.06452), "is at
least one relevant item in the top k", is :func:`hit_rate_at_k`; the two agree when each query
has one relevant item.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from contrastkit._checks import check_embeddings, check_labels, check_pair
from contrastkit.functional.similarity import check_metric
from contrastkit.index.base import Index
from contrastkit.index.exact import chunked_topk

__all__ = [
    "Relevance",
    "SearchChunks",
    "count_relevant",
    "hit_rate_at_k",
    "map_at_r",
    "mrr_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "r_precision",
    "recall_at_k",
    "relevance_hits",
    "retrieval_metrics",
    "retrieval_scores",
    "retrieve",
]


def _check_hits(hits: object, num_relevant: object) -> tuple[Tensor, Tensor]:
    if not isinstance(hits, Tensor) or hits.dtype != torch.bool or hits.ndim != 2:
        raise TypeError(
            "hits must be a (Q, K) bool tensor (True where the j-th retrieved item is relevant), "
            f"got {type(hits).__name__}"
            + (f" {hits.dtype} {tuple(hits.shape)}" if isinstance(hits, Tensor) else "")
            + "."
        )
    if not isinstance(num_relevant, Tensor) or num_relevant.shape != (hits.shape[0],):
        raise ValueError(
            f"num_relevant must be a ({hits.shape[0]},) tensor (relevant items per query), got "
            f"{tuple(num_relevant.shape) if isinstance(num_relevant, Tensor) else type(num_relevant).__name__}."
        )
    if num_relevant.dtype.is_floating_point or num_relevant.dtype == torch.bool:
        raise TypeError(f"num_relevant must be an integer tensor, got {num_relevant.dtype}.")
    found = hits.sum(1)
    if bool((found > num_relevant).any()):
        raise ValueError(
            "hits has more relevant items in a row than num_relevant allows; num_relevant must "
            "count every relevant item in the corpus."
        )
    return hits, num_relevant


def _check_k(k: object) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}.")
    return k


def _undefined(values: Tensor, num_relevant: Tensor) -> Tensor:
    return values.masked_fill(num_relevant == 0, float("nan"))


def recall_at_k(hits: Tensor, num_relevant: Tensor, k: int) -> Tensor:
    """Fraction of a query's relevant items found in its top k: ``|rel ∩ top_k| / |rel|``.

    Args:
        hits: (Q, K) bool ranked relevance, best first.
        num_relevant: (Q,) number of relevant items in the corpus for each query.
        k: cut-off (uses the first ``min(k, K)`` columns).

    Returns:
        (Q,) float values in [0, 1]; NaN for queries with no relevant item.

    >>> hits = torch.tensor([[False, True, True], [False, False, False]])
    >>> recall_at_k(hits, torch.tensor([4, 1]), k=2)
    tensor([0.2500, 0.0000])
    """
    hits, num_relevant = _check_hits(hits, num_relevant)
    found = hits[:, : _check_k(k)].sum(1).float()
    return _undefined(found / num_relevant.clamp_min(1), num_relevant)


def hit_rate_at_k(hits: Tensor, num_relevant: Tensor, k: int) -> Tensor:
    """1 if any relevant item is in the top k, else 0 (the metric-learning "Recall@k").

    >>> hit_rate_at_k(torch.tensor([[False, True], [False, False]]), torch.tensor([3, 2]), k=2)
    tensor([1., 0.])
    """
    hits, num_relevant = _check_hits(hits, num_relevant)
    return _undefined(hits[:, : _check_k(k)].any(1).float(), num_relevant)


def precision_at_k(hits: Tensor, num_relevant: Tensor, k: int) -> Tensor:
    """Fraction of the top k that is relevant: ``|rel ∩ top_k| / k`` (k, even if k > N).

    >>> precision_at_k(torch.tensor([[True, False, True]]), torch.tensor([5]), k=2)
    tensor([0.5000])
    """
    hits, num_relevant = _check_hits(hits, num_relevant)
    k = _check_k(k)
    return _undefined(hits[:, :k].sum(1).float() / k, num_relevant)


def mrr_at_k(hits: Tensor, num_relevant: Tensor, k: int) -> Tensor:
    """Reciprocal rank of the first relevant item within the top k (0 if none there).

    Mean over queries is the MRR (Voorhees, TREC-8 QA track, 1999).

    >>> mrr_at_k(torch.tensor([[False, False, True], [False, True, False]]), torch.tensor([1, 1]), k=2)
    tensor([0.0000, 0.5000])
    """
    hits, num_relevant = _check_hits(hits, num_relevant)
    top = hits[:, : _check_k(k)]
    ranks = torch.arange(1, top.shape[1] + 1, dtype=torch.float32)
    first = torch.where(top, ranks, torch.full_like(ranks, math.inf)).min(1).values
    if top.shape[1] == 0:
        first = torch.full((hits.shape[0],), math.inf)
    return _undefined(1.0 / first, num_relevant)


def ndcg_at_k(hits: Tensor, num_relevant: Tensor, k: int) -> Tensor:
    """Normalised discounted cumulative gain with binary relevance (Järvelin & Kekäläinen 2002).

    ``DCG@k = sum_{i<=k} rel_i / log2(i + 1)``, divided by the DCG of an ideal ranking that puts
    ``min(|rel|, k)`` relevant items first.

    >>> ndcg_at_k(torch.tensor([[False, True]]), torch.tensor([1]), k=2)  # 1/log2(3)
    tensor([0.6309])
    """
    hits, num_relevant = _check_hits(hits, num_relevant)
    k = _check_k(k)
    top = hits[:, :k].float()
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float32))  # (k,)
    dcg = (top * discount[: top.shape[1]]).sum(1)
    ideal_cum = torch.cat([torch.zeros(1), discount.cumsum(0)])  # (k + 1,)
    idcg = ideal_cum[num_relevant.clamp(0, k)]
    return _undefined(dcg / idcg.clamp_min(1e-12), num_relevant)


def _precision_curve(hits: Tensor, num_relevant: Tensor) -> tuple[Tensor, Tensor]:
    r_max = int(num_relevant.max()) if num_relevant.numel() else 0
    if hits.shape[1] < r_max:
        raise ValueError(
            f"MAP@R / R-Precision need the top R retrieved items of every query (R up to {r_max}), "
            f"but hits has only {hits.shape[1]} columns; retrieve k >= R."
        )
    top = hits[:, :r_max].float()  # (Q, R_max)
    ranks = torch.arange(1, r_max + 1, dtype=torch.float32)
    within = ranks[None, :] <= num_relevant[:, None]  # (Q, R_max): rank i <= R of the query
    return top * within, ranks


def map_at_r(hits: Tensor, num_relevant: Tensor) -> Tensor:
    """Mean average precision at R (Musgrave, Belongie & Lim 2020, https://arxiv.org/abs/2003.08505).

    With R = number of relevant items of the query,
    ``MAP@R = (1/R) * sum_{i<=R} P(i) * rel_i`` where ``P(i)`` is the precision of the top i.
    It rewards putting *all* relevant items first, unlike Precision@1.

    Args:
        hits: (Q, K) ranked relevance with K >= max R.
        num_relevant: (Q,) R of each query.

    >>> hits = torch.tensor([[True, False, True, False]])  # R = 2: (1/1 + 0) / 2
    >>> map_at_r(hits, torch.tensor([2]))
    tensor([0.5000])
    """
    hits, num_relevant = _check_hits(hits, num_relevant)
    rel, ranks = _precision_curve(hits, num_relevant)
    precision = rel.cumsum(1) / ranks  # (Q, R_max)
    ap = (precision * rel).sum(1) / num_relevant.clamp_min(1)
    return _undefined(ap, num_relevant)


def r_precision(hits: Tensor, num_relevant: Tensor) -> Tensor:
    """Precision of the top R, R = number of relevant items of the query (Musgrave et al. 2020).

    >>> r_precision(torch.tensor([[True, False, True, False]]), torch.tensor([2]))
    tensor([0.5000])
    """
    hits, num_relevant = _check_hits(hits, num_relevant)
    rel, _ = _precision_curve(hits, num_relevant)
    return _undefined(rel.sum(1) / num_relevant.clamp_min(1), num_relevant)


def retrieve(
    query: Tensor,
    corpus: Tensor | None = None,
    k: int = 10,
    *,
    metric: str | None = None,
    index: Index | None = None,
    exclude: Tensor | None = None,
    chunk_size: int = 16384,
) -> tuple[Tensor, Tensor]:
    """Top-K corpus positions of each query: exact chunked search, or an index's search.

    Args:
        query: (Q, D).
        corpus: (N, D), for exact search; leave None when ``index`` is given.
        k: neighbours per query.
        metric: similarity; default ``"cosine"`` for exact search and the index's own metric
            with an index (if given it must match the index's metric).
        index: an :class:`~contrastkit.index.Index` to search instead of the exact product.
        exclude: optional (Q,) long corpus position to leave out per query (-1: none).

    Returns:
        ``(scores, indices)``: (Q, K) each, best first, ``-1`` where no neighbour was found.
        With ``exclude`` the width is ``min(k, N)`` for exact search and may be one less than
        that for index search (the search asks the index for k + 1 and drops the excluded item,
        or the last one).
    """
    if (corpus is None) == (index is None):
        raise ValueError("pass exactly one of corpus (exact search) or index (index search).")
    if index is None:
        assert corpus is not None
        return chunked_topk(
            query, corpus, k, metric=metric or "cosine", exclude=exclude, chunk_size=chunk_size
        )
    extra = 0 if exclude is None else 1
    result = index.search(query, min(k + extra, len(index)), metric=metric)
    scores, indices = result.scores, result.indices
    if exclude is None:
        return scores, indices
    exclude = exclude.to(indices.device)
    drop = indices == exclude[:, None]  # (Q, K + 1)
    missing = ~drop.any(1)
    drop[missing, -1] = True  # excluded item not returned: drop the last one instead
    keep = ~drop
    width = indices.shape[1] - 1
    return scores[keep].view(-1, width), indices[keep].view(-1, width)


def _check_relevant(relevant: Tensor, q: int) -> Tensor:
    if not isinstance(relevant, Tensor) or relevant.dtype != torch.long:
        raise TypeError(
            "relevant must be a long tensor of corpus indices, shape (Q,) or (Q, R) padded with -1."
        )
    if relevant.ndim == 1:
        relevant = relevant[:, None]
    if relevant.ndim != 2 or relevant.shape[0] != q:
        raise ValueError(
            f"relevant must have shape ({q},) or ({q}, R) like query, got {tuple(relevant.shape)}."
        )
    ordered = relevant.sort(1).values
    if bool(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any()):
        raise ValueError("relevant repeats a corpus index within a row; list each item once.")
    return relevant


def count_relevant(
    *,
    query_labels: Tensor | None = None,
    corpus_labels: Tensor | None = None,
    relevant: Tensor | None = None,
    exclude: Tensor | None = None,
) -> Tensor:
    """(Q,) number of relevant corpus items per query (see :func:`relevance_hits`).

    >>> count_relevant(query_labels=torch.tensor([7, 5]), corpus_labels=torch.tensor([7, 3, 7]))
    tensor([2, 0])
    """
    if relevant is None:
        if query_labels is None or corpus_labels is None:
            raise ValueError(
                "give relevance as query_labels and corpus_labels, or as relevant corpus indices."
            )
        classes, counts = torch.unique(corpus_labels, return_counts=True)
        if classes.numel() == 0:  # empty corpus: nothing is relevant
            return torch.zeros(query_labels.shape[0], dtype=torch.long)
        pos = torch.searchsorted(classes, query_labels).clamp_max(classes.numel() - 1)
        num_relevant = torch.where(classes[pos] == query_labels, counts[pos], 0)
        if exclude is not None:
            self_relevant = (exclude >= 0) & (corpus_labels[exclude.clamp_min(0)] == query_labels)
            num_relevant = num_relevant - self_relevant.long()
        return num_relevant
    if query_labels is not None or corpus_labels is not None:
        raise ValueError("give relevance either by labels or by relevant indices, not both.")
    relevant = _check_relevant(relevant, relevant.shape[0] if isinstance(relevant, Tensor) else 0)
    num_relevant = (relevant >= 0).sum(1)
    if exclude is not None:
        self_relevant = ((relevant == exclude[:, None]) & (exclude[:, None] >= 0)).any(1)
        num_relevant = num_relevant - self_relevant.long()
    return num_relevant


def relevance_hits(
    indices: Tensor,
    *,
    query_labels: Tensor | None = None,
    corpus_labels: Tensor | None = None,
    relevant: Tensor | None = None,
    exclude: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Ranked relevance of retrieved positions, and the number of relevant items per query.

    Relevance is given either by labels (corpus item j is relevant to query q when
    ``corpus_labels[j] == query_labels[q]``) or by ``relevant: (Q, R)`` corpus indices padded
    with -1 (one or many relevant items per query; a (Q,) tensor means one each).

    Args:
        indices: (Q, K) retrieved corpus positions, ``-1`` for empty slots.
        exclude: (Q,) corpus position left out of each query's ranking (-1 for none); it is
            also removed from the relevant count.

    Returns:
        ``(hits, num_relevant)``: (Q, K) bool and (Q,) long.

    >>> relevance_hits(torch.tensor([[2, 0, 1]]), query_labels=torch.tensor([7]),
    ...                corpus_labels=torch.tensor([7, 3, 7]))
    (tensor([[ True,  True, False]]), tensor([2]))
    """
    q = indices.shape[0]
    valid = indices >= 0
    safe = indices.clamp_min(0)
    num_relevant = count_relevant(
        query_labels=query_labels, corpus_labels=corpus_labels, relevant=relevant, exclude=exclude
    )
    if relevant is None:
        assert query_labels is not None and corpus_labels is not None
        hits = (corpus_labels[safe] == query_labels[:, None]) & valid
    else:
        relevant = _check_relevant(relevant, q)
        hits = (safe[:, :, None] == relevant[:, None, :]).any(-1) & valid  # (Q, K)
    return hits, num_relevant


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    if isinstance(ks, int):
        ks = (ks,)
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k <= 0 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}.")
    return ks


@dataclass(frozen=True)
class Relevance:
    """Which corpus items are relevant to each query, and which one to leave out of its ranking.

    Relevance is given by labels (corpus item j is relevant to query q when
    ``corpus_labels[j] == query_labels[q]``) or by explicit corpus indices, not both.

    Args:
        query_labels, corpus_labels: (Q,), (N,) integer labels; same label = relevant.
        relevant: alternatively (Q,) or (Q, R) long relevant corpus indices, -1 padded.
        exclude: (Q,) long corpus position to leave out per query (-1: none), or ``"self"``
            when the queries are the corpus (leave-one-out: ``exclude = arange(Q)``).

    >>> labels = torch.tensor([0, 1, 0])
    >>> Relevance(labels, labels, exclude="self").exclude
    'self'
    """

    query_labels: Tensor | None = None
    corpus_labels: Tensor | None = None
    relevant: Tensor | None = None
    exclude: Tensor | str | None = None

    def __post_init__(self) -> None:
        by_labels = self.query_labels is not None or self.corpus_labels is not None
        if by_labels and self.relevant is not None:
            raise ValueError("give relevance either by labels or by relevant indices, not both.")
        if self.relevant is None and (self.query_labels is None or self.corpus_labels is None):
            raise ValueError(
                "give relevance as query_labels and corpus_labels, or as relevant corpus indices."
            )
        if isinstance(self.exclude, str) and self.exclude != "self":
            raise ValueError(
                f"exclude must be a (Q,) long tensor of corpus positions or 'self', "
                f"got {self.exclude!r}."
            )


@dataclass(frozen=True)
class SearchChunks:
    """How much of the exact search is held at once: ``corpus`` rows scored per block and
    ``query`` rows per block (peak memory about ``query * (corpus + 2K)`` scores). The values do
    not change the results."""

    corpus: int = 16384
    query: int = 1024

    def __post_init__(self) -> None:
        for name, value in (("corpus", self.corpus), ("query", self.query)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SearchChunks.{name} must be a positive int, got {value!r}.")


def retrieval_scores(
    query: Tensor,
    corpus: Tensor | Index,
    relevance: Relevance,
    *,
    ks: Sequence[int] = (1, 5, 10),
    metric: str | None = None,
    with_map_at_r: bool = False,
    chunks: SearchChunks | None = None,
) -> dict[str, Tensor]:
    """Per-query retrieval metrics from one search of the corpus.

    Args:
        query: (Q, D) query embeddings.
        corpus: (N, D) corpus embeddings (exact chunked search), or an
            :class:`~contrastkit.index.Index` whose positions match the relevance.
        relevance: which corpus items are relevant to each query (:class:`Relevance`).
        ks: cut-offs; for each k the keys ``recall@k``, ``hit_rate@k``, ``precision@k``,
            ``mrr@k`` and ``ndcg@k`` are returned.
        metric: similarity; default ``"cosine"``, or the index's metric when ``corpus`` is an
            index (an explicit metric must match it).
        with_map_at_r: also ``map@r`` and ``r_precision`` (retrieves max R items per query).
        chunks: block sizes of the exact search (:class:`SearchChunks`; default 16384 corpus
            rows, 1024 queries).

    Returns:
        ``{name: (Q,) tensor}``; NaN for queries without a relevant item.

    >>> corpus = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    >>> labels = torch.tensor([0, 1, 0])
    >>> out = retrieval_scores(corpus, corpus, Relevance(labels, labels, exclude="self"), ks=(1,))
    >>> out["hit_rate@1"]  # item 1 is the only one of its class
    tensor([1., nan, 1.])
    """
    check_embeddings("query", query)
    if not isinstance(relevance, Relevance):
        raise TypeError(
            f"relevance must be a Relevance, got {type(relevance).__name__}; e.g. "
            "Relevance(query_labels, corpus_labels) or Relevance(relevant=indices)."
        )
    if metric is not None:
        metric = check_metric(metric)
    ks = _check_ks(ks)
    chunks = chunks or SearchChunks()
    n = _corpus_size(query, corpus)
    exact, index = (corpus, None) if isinstance(corpus, Tensor) else (None, corpus)
    q = query.shape[0]
    query_labels, corpus_labels = relevance.query_labels, relevance.corpus_labels
    relevant, exclude = relevance.relevant, relevance.exclude
    if query_labels is not None:
        query_labels = check_labels("query_labels", query_labels, q, what="query").cpu()
    if corpus_labels is not None:
        corpus_labels = check_labels("corpus_labels", corpus_labels, n, what="the corpus").cpu()
    if relevant is not None:
        relevant = _check_relevant(relevant, q).cpu()
    if isinstance(exclude, str):  # "self" (Relevance checks the word)
        if q != n:
            raise ValueError(
                f"exclude='self' needs the queries to be the corpus (Q == N), got Q={q}, N={n}."
            )
        exclude = torch.arange(q)
    if exclude is not None and (
        not isinstance(exclude, Tensor) or exclude.dtype != torch.long or exclude.shape != (q,)
    ):
        raise ValueError(f"exclude must be a ({q},) long tensor of corpus positions (-1: none).")
    if exclude is not None:
        exclude = exclude.cpu()
    names = [f"{m}@{k}" for k in ks for m in ("recall", "hit_rate", "precision", "mrr", "ndcg")]
    if with_map_at_r:
        names += ["map@r", "r_precision"]
    parts: dict[str, list[Tensor]] = {name: [] for name in names}
    for s in range(0, q, chunks.query):
        block = slice(s, s + chunks.query)
        ex = None if exclude is None else exclude[block]
        labels_kw = {
            "query_labels": None if query_labels is None else query_labels[block],
            "corpus_labels": corpus_labels,
            "relevant": None if relevant is None else relevant[block],
        }
        # The count of relevant items does not depend on the ranking: compute it first so that
        # MAP@R can ask for exactly max R neighbours.
        num_relevant = count_relevant(exclude=ex, **labels_kw)
        k_needed = max(ks)
        if with_map_at_r and num_relevant.numel():
            k_needed = max(k_needed, int(num_relevant.max()))
        _, indices = retrieve(
            query[block],
            exact,
            k_needed,
            metric=metric,
            index=index,
            exclude=ex,
            chunk_size=chunks.corpus,
        )
        hits, _ = relevance_hits(indices.cpu(), exclude=ex, **labels_kw)
        for k in ks:
            parts[f"recall@{k}"].append(recall_at_k(hits, num_relevant, k))
            parts[f"hit_rate@{k}"].append(hit_rate_at_k(hits, num_relevant, k))
            parts[f"precision@{k}"].append(precision_at_k(hits, num_relevant, k))
            parts[f"mrr@{k}"].append(mrr_at_k(hits, num_relevant, k))
            parts[f"ndcg@{k}"].append(ndcg_at_k(hits, num_relevant, k))
        if with_map_at_r:
            parts["map@r"].append(map_at_r(hits, num_relevant))
            parts["r_precision"].append(r_precision(hits, num_relevant))
    return {name: torch.cat(values) if values else torch.empty(0) for name, values in parts.items()}


def _corpus_size(query: Tensor, corpus: object) -> int:
    if isinstance(corpus, Tensor):
        check_embeddings("corpus", corpus)
        check_pair("query", query, "corpus", corpus, same_rows=False)
        return int(corpus.shape[0])
    if isinstance(corpus, Index):
        return len(corpus)
    raise TypeError(
        f"corpus must be an (N, D) tensor (exact search) or a contrastkit.index.Index (index "
        f"search), got {type(corpus).__name__}."
    )


def retrieval_metrics(
    query: Tensor,
    corpus: Tensor | Index,
    relevance: Relevance,
    **kwargs: object,
) -> dict[str, float]:
    """Mean of :func:`retrieval_scores` over the queries that have a relevant item.

    Takes the same arguments; adds ``"skipped_queries"`` (queries without any relevant item).

    >>> corpus = torch.eye(3)
    >>> metrics = retrieval_metrics(corpus + 0.1, corpus, Relevance(relevant=torch.arange(3)), ks=(1,))
    >>> metrics["recall@1"], metrics["mrr@1"], metrics["skipped_queries"]
    (1.0, 1.0, 0.0)
    """
    scores = retrieval_scores(query, corpus, relevance, **kwargs)  # type: ignore[arg-type]
    return summarize(scores)


def summarize(scores: dict[str, Tensor]) -> dict[str, float]:
    """Means of per-query values ignoring NaN (queries without relevant items), plus a count."""
    out: dict[str, float] = {}
    for name, values in scores.items():
        defined = ~torch.isnan(values)
        out[name] = float(values[defined].mean()) if bool(defined.any()) else math.nan
    # Every metric is NaN for the same queries (those without a relevant item).
    first = next(iter(scores.values()), torch.empty(0))
    out["skipped_queries"] = float(torch.isnan(first).sum())
    return out
