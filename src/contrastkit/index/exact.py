"""Exact search: a chunked matrix product with a streaming top-K, and the exact index backend.

Shapes: ``query: (Q, D)``, ``corpus: (N, D)``, results ``(Q, K)`` with ``K = min(k, N)``.

The (Q, N) score matrix is never held: queries are processed in blocks of ``query_chunk_size``
rows and the corpus in chunks of ``chunk_size`` rows; each chunk's top-K is merged into a
running top-K. Peak memory is about ``query_chunk_size * (chunk_size + 2K)`` scores.

Ties are broken deterministically by the lower corpus index, whatever the chunk sizes, so the
chunked result equals the unchunked one whenever the scores themselves are equal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from contrastkit._checks import check_embeddings, check_pair
from contrastkit.functional.similarity import check_metric, pairwise_distance, prepare
from contrastkit.index.base import INDEXES, Index

__all__ = ["ExactIndex", "chunked_topk"]


def _scores(query: Tensor, chunk: Tensor, metric: str) -> Tensor:
    """(Q, C) scores of prepared queries against a raw corpus chunk."""
    if metric == "euclidean":
        return -pairwise_distance(query, chunk)
    return query @ prepare(chunk, metric).T


def _topk_lowest_index_ties(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of each row, sorted by score descending then column index ascending.

    ``torch.topk`` picks an arbitrary subset among equal scores at the cut-off. Taking k + 1
    values shows where that can happen (the k-th and (k+1)-th values are equal); only those rows
    are redone with a mask that keeps the lowest tied columns.
    """
    n = scores.shape[1]
    values, index = scores.topk(min(k + 1, n), dim=1)  # (Q, k + 1)
    if values.shape[1] > k:
        tied = (values[:, k - 1] == values[:, k]).nonzero().squeeze(1)
        values, index = values[:, :k].contiguous(), index[:, :k].contiguous()
        if tied.numel():
            rows, thr = scores[tied], values[tied, k - 1 :]  # (R, C), (R, 1)
            above, equal = rows > thr, rows == thr
            room = k - above.sum(1, keepdim=True)  # (R, 1) slots left for tied entries
            keep = above | (equal & (equal.cumsum(1) <= room))  # exactly k per row
            cols = keep.nonzero()[:, 1].view(-1, k)  # (R, k) ascending columns
            index[tied] = cols
            values[tied] = rows.gather(1, cols)
    # Order: by column ascending, then a stable sort by score descending keeps ties by column.
    index, perm = index.sort(dim=1)
    values = values.gather(1, perm)
    values, perm = values.sort(dim=1, descending=True, stable=True)
    return values, index.gather(1, perm)


def _topk_block(
    query: Tensor, corpus: Tensor, k: int, metric: str, chunk_size: int, exclude: Tensor | None
) -> tuple[Tensor, Tensor]:
    best_scores: Tensor | None = None
    best_index: Tensor | None = None
    n = corpus.shape[0]
    for start in range(0, n, chunk_size):
        chunk = corpus[start : start + chunk_size]
        scores = _scores(query, chunk, metric)  # (Qb, C)
        if exclude is not None:
            local = exclude - start
            rows = ((local >= 0) & (local < chunk.shape[0])).nonzero().squeeze(1)
            scores[rows, local[rows]] = float("-inf")
        values, index = _topk_lowest_index_ties(scores, min(k, chunk.shape[0]))
        index = index + start
        if best_scores is None or best_index is None:
            best_scores, best_index = values, index
            continue
        # Earlier chunks hold lower corpus indices and both parts are sorted with ties by index,
        # so a stable sort of [best, chunk] keeps ties by lower index.
        merged_scores = torch.cat([best_scores, values], dim=1)  # (Qb, K + k_c)
        merged_index = torch.cat([best_index, index], dim=1)
        order = merged_scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
        best_scores = merged_scores.gather(1, order)
        best_index = merged_index.gather(1, order)
    assert best_scores is not None and best_index is not None
    return best_scores, best_index.masked_fill(best_scores == float("-inf"), -1)


def chunked_topk(
    query: Tensor,
    corpus: Tensor,
    k: int,
    *,
    metric: str = "cosine",
    exclude: Tensor | None = None,
    chunk_size: int = 16384,
    query_chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Exact top-K neighbours of every query, without materialising the (Q, N) score matrix.

    Scores follow :func:`contrastkit.functional.similarity_matrix` (cosine, dot, or negative
    euclidean distance); they are computed in float32 (float64 inputs stay float64).

    Args:
        query: (Q, D) floating, finite.
        corpus: (N, D) floating, finite, same D and dtype.
        k: neighbours per query; K = min(k, N) columns are returned.
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        exclude: optional (Q,) long corpus index to leave out for each query (e.g. the query
            itself when the queries are the corpus), ``-1`` for none.
        chunk_size: corpus rows scored at once.
        query_chunk_size: query rows scored at once.

    Returns:
        ``(scores, indices)``, both (Q, K), sorted by score descending with ties broken by the
        lower corpus index; slots left empty by ``exclude`` have score ``-inf`` and index ``-1``.

    >>> corpus = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> scores, indices = chunked_topk(torch.tensor([[1.0, 0.1]]), corpus, k=2, chunk_size=1)
    >>> indices  # rows 0 and 2 tie: the lower index comes first
    tensor([[0, 2]])
    """
    check_embeddings("query", query)
    check_embeddings("corpus", corpus)
    check_pair("query", query, "corpus", corpus, same_rows=False)
    metric = check_metric(metric)
    for name, value in (
        ("k", k),
        ("chunk_size", chunk_size),
        ("query_chunk_size", query_chunk_size),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if corpus.shape[0] == 0:
        raise ValueError("corpus is empty (0 rows); search needs at least one corpus vector.")
    if exclude is not None:
        if not isinstance(exclude, Tensor) or exclude.dtype != torch.long:
            raise TypeError("exclude must be a long tensor of corpus indices (-1 for none).")
        if exclude.shape != (query.shape[0],):
            raise ValueError(
                f"exclude must have shape ({query.shape[0]},) like query, got {tuple(exclude.shape)}."
            )
        exclude = exclude.to(query.device)
    if query.dtype in (torch.float16, torch.bfloat16):
        query, corpus = query.float(), corpus.float()
    query = prepare(query, metric)
    k = min(k, corpus.shape[0])
    parts = [
        _topk_block(
            query[s : s + query_chunk_size],
            corpus,
            k,
            metric,
            chunk_size,
            None if exclude is None else exclude[s : s + query_chunk_size],
        )
        for s in range(0, query.shape[0], query_chunk_size)
    ]
    if not parts:
        return query.new_empty((0, k)), torch.empty((0, k), dtype=torch.long)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@INDEXES.register("exact")
class ExactIndex(Index):
    """Brute-force search with :func:`chunked_topk`: exact, deterministic ties (lower index first).

    The oracle the FAISS backends are tested against. Vectors are stored as float32 in memory.

    Args:
        dim: D.
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        chunk_size: corpus rows scored at once during search.

    >>> index = ExactIndex(dim=2, metric="euclidean")
    >>> index.add(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), ids=["origin", "far"])
    >>> result = index.search(torch.tensor([[3.0, 4.0]]), k=2)
    >>> result.ids, result.scores
    ([['far', 'origin']], tensor([[-0., -5.]]))
    """

    backend = "exact"

    def __init__(self, dim: int, metric: str = "cosine", chunk_size: int = 16384) -> None:
        super().__init__(dim, metric)
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
        self.chunk_size = chunk_size
        self._chunks: list[Tensor] = []
        self._vectors: Tensor | None = None

    def params(self) -> dict[str, Any]:
        return {"chunk_size": self.chunk_size}

    @property
    def vectors(self) -> Tensor:
        """(N, D) float32 stored vectors (L2-normalised for cosine)."""
        if self._vectors is None or self._vectors.shape[0] != len(self):
            self._vectors = torch.cat(self._chunks) if self._chunks else torch.empty((0, self.dim))
            self._chunks = [self._vectors]
        return self._vectors

    def _add_vectors(self, vectors: np.ndarray) -> None:
        self._chunks.append(torch.from_numpy(vectors.copy()))

    def _search_vectors(self, query: np.ndarray, k: int) -> tuple[Tensor, Tensor]:
        # Stored vectors are already normalised for cosine, so the inner product is enough.
        metric = "dot" if self.metric == "cosine" else self.metric
        return chunked_topk(
            torch.from_numpy(query), self.vectors, k, metric=metric, chunk_size=self.chunk_size
        )

    def _search_among(
        self, query: np.ndarray, k: int, positions: np.ndarray
    ) -> tuple[Tensor, Tensor]:
        # only the P rows at `positions` are scored; sorted positions keep ties by lower index
        metric = "dot" if self.metric == "cosine" else self.metric
        among = torch.from_numpy(positions)  # (P,)
        scores, local = chunked_topk(
            torch.from_numpy(query), self.vectors[among], k, metric=metric,
            chunk_size=self.chunk_size,
        )  # fmt: skip
        return scores, among[local]  # (Q, k) positions in the index

    def _payload(self) -> bytes | memoryview:
        return memoryview(self.vectors.numpy().astype("<f4", copy=False)).cast("B")

    def _restore(self, payload: bytes, count: int) -> None:
        if len(payload) != count * self.dim * 4:
            raise ValueError(
                f"{len(payload)} bytes of vectors, expected {count} x {self.dim} float32"
            )
        arr = np.frombuffer(payload, dtype="<f4").reshape(count, self.dim)
        self._chunks = [torch.from_numpy(arr.astype(np.float32, copy=True))]
        self._vectors = None
