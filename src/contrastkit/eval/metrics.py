"""Stateful retrieval metrics (``update`` / ``compute`` / ``reset``) against a fixed corpus.

The corpus (or an index over it) is given once; each ``update`` searches a batch of queries and
adds the per-query values of :func:`~contrastkit.eval.retrieval.retrieval_scores` to running
sums, so memory does not grow with the number of queries (no list of predictions is kept).
Queries without any relevant item are skipped, as in the functional form.

>>> corpus = torch.eye(3)
>>> recall = RecallAtK(corpus, corpus_labels=torch.tensor([0, 1, 2]), k=1)
>>> recall.update(torch.tensor([[1.0, 0.1, 0.0]]), query_labels=torch.tensor([0]))
>>> recall.update(torch.tensor([[1.0, 0.1, 0.0]]), query_labels=torch.tensor([1]))
>>> recall.compute()
tensor(0.5000)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from contrastkit.eval.retrieval import Relevance, SearchChunks, retrieval_scores

if TYPE_CHECKING:
    from contrastkit.index.base import Index

__all__ = [
    "HitRateAtK",
    "MAPAtR",
    "MRRAtK",
    "NDCGAtK",
    "PrecisionAtK",
    "RecallAtK",
    "RetrievalMetrics",
]


class RetrievalMetrics:
    """Several retrieval metrics from one search per update.

    Args:
        corpus: (N, D) corpus embeddings, or None with ``index``.
        corpus_labels: (N,) labels (relevance by label); None when updates pass ``relevant``.
        ks: cut-offs (see :func:`~contrastkit.eval.retrieval.retrieval_scores` for the keys).
        metric: similarity (default ``"cosine"``, or the index's).
        index: search this :class:`~contrastkit.index.Index` instead of the exact product.
        with_map_at_r: also track ``map@r`` and ``r_precision``.

    ``compute()`` returns ``{name: float}`` plus ``"skipped_queries"``.
    """

    def __init__(
        self,
        corpus: Tensor | None = None,
        corpus_labels: Tensor | None = None,
        *,
        ks: Sequence[int] = (1, 5, 10),
        metric: str | None = None,
        index: Index | None = None,
        with_map_at_r: bool = False,
        chunk_size: int = 16384,
    ) -> None:
        self.corpus = corpus
        self.index = index
        self.corpus_labels = corpus_labels
        self.options: dict[str, Any] = {
            "ks": tuple(ks),
            "metric": metric,
            "with_map_at_r": with_map_at_r,
            "chunks": SearchChunks(corpus=chunk_size),
        }
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.skipped = 0

    def update(
        self,
        query: Tensor,
        query_labels: Tensor | None = None,
        *,
        relevant: Tensor | None = None,
        exclude: Tensor | None = None,
    ) -> None:
        """Search a batch ``query: (B, D)`` and accumulate its metrics.

        Args:
            query_labels: (B,) labels, with ``corpus_labels`` given at construction.
            relevant: (B,) or (B, R) relevant corpus indices (-1 padded), instead of labels.
            exclude: (B,) corpus position to leave out per query (-1: none).
        """
        if (self.corpus is None) == (self.index is None):
            raise ValueError("pass exactly one of corpus (exact search) or index (index search).")
        relevance = Relevance(
            query_labels=query_labels,
            corpus_labels=self.corpus_labels if relevant is None else None,
            relevant=relevant,
            exclude=exclude,
        )
        searched = self.corpus if self.index is None else self.index
        scores = retrieval_scores(query, searched, relevance, **self.options)
        for name, values in scores.items():
            defined = ~torch.isnan(values)
            self.sums[name] = self.sums.get(name, 0.0) + float(values[defined].double().sum())
            self.counts[name] = self.counts.get(name, 0) + int(defined.sum())
        # Every metric is NaN for the same queries (those without a relevant item).
        first = next(iter(scores.values()))
        self.skipped += int(torch.isnan(first).sum())

    def compute(self) -> dict[str, float]:
        """Means over all queries seen since the last reset (NaN before any update)."""
        out = {
            name: self.sums[name] / self.counts[name] if self.counts[name] else math.nan
            for name in self.sums
        }
        out["skipped_queries"] = float(self.skipped)
        return out


class _SingleMetric(RetrievalMetrics):
    key = ""

    def __init__(
        self,
        corpus: Tensor | None = None,
        corpus_labels: Tensor | None = None,
        *,
        k: int = 10,
        metric: str | None = None,
        index: Index | None = None,
        chunk_size: int = 16384,
    ) -> None:
        self.k = k
        super().__init__(
            corpus,
            corpus_labels,
            ks=(k,),
            metric=metric,
            index=index,
            with_map_at_r=self.key == "map@r",
            chunk_size=chunk_size,
        )

    def compute(self) -> Tensor:  # type: ignore[override]
        """Scalar mean over the queries seen since the last reset."""
        name = self.key if self.key == "map@r" else f"{self.key}@{self.k}"
        count = self.counts.get(name, 0)
        return torch.tensor(self.sums[name] / count if count else math.nan, dtype=torch.float32)


class RecallAtK(_SingleMetric):
    """Streaming :func:`~contrastkit.eval.retrieval.recall_at_k`; ``compute()`` is a scalar."""

    key = "recall"


class HitRateAtK(_SingleMetric):
    """Streaming :func:`~contrastkit.eval.retrieval.hit_rate_at_k`; ``compute()`` is a scalar."""

    key = "hit_rate"


class PrecisionAtK(_SingleMetric):
    """Streaming :func:`~contrastkit.eval.retrieval.precision_at_k`; ``compute()`` is a scalar."""

    key = "precision"


class MRRAtK(_SingleMetric):
    """Streaming :func:`~contrastkit.eval.retrieval.mrr_at_k`; ``compute()`` is a scalar."""

    key = "mrr"


class NDCGAtK(_SingleMetric):
    """Streaming :func:`~contrastkit.eval.retrieval.ndcg_at_k`; ``compute()`` is a scalar."""

    key = "ndcg"


class MAPAtR(_SingleMetric):
    """Streaming :func:`~contrastkit.eval.retrieval.map_at_r` (``k`` is unused); scalar ``compute()``."""

    key = "map@r"
