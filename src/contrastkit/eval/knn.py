"""Weighted k-nearest-neighbour classification of embeddings (Wu et al. 2018).

Shapes: ``query: (Q, D)``, ``corpus: (N, D)``, ``corpus_labels: (N,)``, votes ``(Q, C)``.

Each query takes its K most similar corpus items (exact chunked search, or an index) and each
neighbour votes for its label with weight ``exp(s_i / temperature)``:
``votes[q, c] = sum_{i in top-K(q), y_i = c} exp(s_i / temperature)``; the prediction is the
class with most votes (ties: the lower class index). Weights are computed as
``exp((s_i - s_1) / temperature)``, i.e. divided by the best neighbour's weight, which keeps them
finite and does not change the prediction.

Defaults ``k=20, temperature=0.07`` follow the kNN monitor used in self-supervised training
(e.g. DINO, Caron et al. 2021); Wu et al. used k=200, T=0.07. ``temperature`` -> infinity
gives a plain majority vote, -> 0 gives 1-NN.

Paper: Wu, Xiong, Yu & Lin, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", CVPR 2018, https://arxiv.org/abs/1805.01978.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from contrastkit._checks import check_embeddings, check_labels, check_temperature
from contrastkit.eval.retrieval import retrieve

if TYPE_CHECKING:
    from contrastkit.index.base import Index

__all__ = ["KNNAccuracy", "knn_accuracy", "knn_predict", "knn_votes", "votes_from_neighbours"]


def _num_classes(corpus_labels: Tensor, num_classes: int | None) -> int:
    if corpus_labels.numel() and int(corpus_labels.min()) < 0:
        raise ValueError(
            f"corpus_labels must be class indices >= 0, got min {int(corpus_labels.min())}."
        )
    inferred = int(corpus_labels.max()) + 1 if corpus_labels.numel() else 0
    if num_classes is None:
        return inferred
    if num_classes < inferred:
        raise ValueError(
            f"num_classes={num_classes} but corpus_labels contains class {inferred - 1}; "
            f"pass num_classes >= {inferred} (or None to infer it)."
        )
    return num_classes


def knn_votes(
    query: Tensor,
    corpus: Tensor | None,
    corpus_labels: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    metric: str | None = None,
    index: Index | None = None,
    num_classes: int | None = None,
    exclude: Tensor | None = None,
    chunk_size: int = 16384,
) -> Tensor:
    """Temperature-weighted class votes of each query's K nearest corpus items.

    Args:
        query: (Q, D) embeddings to classify.
        corpus: (N, D) labelled embeddings (exact search), or None with ``index``.
        corpus_labels: (N,) class indices in [0, C).
        k: neighbours per query (default 20).
        temperature: weight ``exp(s / temperature)`` (default 0.07, for cosine similarities).
        metric: similarity (default ``"cosine"``, or the index's).
        index: search this index instead of the exact product.
        num_classes: C (default ``max(corpus_labels) + 1``).
        exclude: (Q,) corpus position to leave out per query (leave-one-out), -1 for none.

    Returns:
        (Q, C) float32 votes, normalised to sum to 1 per query.

    >>> corpus = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> knn_votes(torch.tensor([[1.0, 0.2]]), corpus, torch.tensor([0, 0, 1]), k=3)
    tensor([[1.0000, 0.0000]])
    """
    check_embeddings("query", query)
    check_temperature(temperature)
    n = len(index) if index is not None else (corpus.shape[0] if corpus is not None else 0)
    corpus_labels = check_labels("corpus_labels", corpus_labels, n, what="the corpus").cpu()
    c = _num_classes(corpus_labels, num_classes)
    scores, indices = retrieve(
        query, corpus, k, metric=metric, index=index, exclude=exclude, chunk_size=chunk_size
    )
    return votes_from_neighbours(scores, indices, corpus_labels, temperature, c)


def votes_from_neighbours(
    scores: Tensor, indices: Tensor, corpus_labels: Tensor, temperature: float, num_classes: int
) -> Tensor:
    """(Q, C) normalised votes from already retrieved neighbours ``scores, indices: (Q, K)``.

    >>> votes_from_neighbours(torch.tensor([[0.9, 0.8]]), torch.tensor([[1, 0]]),
    ...                       torch.tensor([0, 1]), temperature=1.0, num_classes=2)
    tensor([[0.4750, 0.5250]])
    """
    scores, indices = scores.cpu().float(), indices.cpu()
    valid = indices >= 0
    # Relative weights exp((s - s_best) / T): finite for any scale of scores.
    best = scores[:, :1].masked_fill(~valid[:, :1], 0.0)
    weights = torch.exp((scores - best) / float(temperature)).masked_fill(~valid, 0.0)  # (Q, K)
    votes = torch.zeros(scores.shape[0], num_classes)
    votes.scatter_add_(1, corpus_labels.cpu()[indices.clamp_min(0)], weights)
    return votes / votes.sum(1, keepdim=True).clamp_min(1e-30)


def knn_predict(
    query: Tensor, corpus: Tensor | None, corpus_labels: Tensor, **kwargs: object
) -> Tensor:
    """(Q,) predicted class of each query: the argmax of :func:`knn_votes` (same arguments)."""
    return knn_votes(query, corpus, corpus_labels, **kwargs).argmax(1)  # type: ignore[arg-type]


def knn_accuracy(
    query: Tensor,
    query_labels: Tensor,
    corpus: Tensor | None,
    corpus_labels: Tensor,
    **kwargs: object,
) -> float:
    """Fraction of queries whose weighted kNN prediction equals ``query_labels: (Q,)``.

    Other arguments as in :func:`knn_votes`.

    >>> corpus = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> knn_accuracy(torch.tensor([[0.9, 0.2], [0.1, 1.0]]), torch.tensor([0, 1]),
    ...              corpus, torch.tensor([0, 1]), k=1)
    1.0
    """
    query_labels = check_labels("query_labels", query_labels, query.shape[0], what="query")
    if query.shape[0] == 0:
        return float("nan")
    pred = knn_predict(query, corpus, corpus_labels, **kwargs)
    return float((pred == query_labels.cpu()).float().mean())


class KNNAccuracy:
    """Streaming weighted-kNN accuracy against a fixed labelled corpus (``update``/``compute``/``reset``).

    Args:
        corpus: (N, D) labelled embeddings (e.g. the training set), or None with ``index``.
        corpus_labels: (N,).
        k, temperature, metric, index, num_classes: as in :func:`knn_votes`.

    >>> metric = KNNAccuracy(torch.eye(2), torch.tensor([0, 1]), k=1)
    >>> metric.update(torch.tensor([[1.0, 0.1]]), torch.tensor([0]))
    >>> metric.update(torch.tensor([[1.0, 0.1]]), torch.tensor([1]))
    >>> metric.compute()
    tensor(0.5000)
    """

    def __init__(
        self,
        corpus: Tensor | None,
        corpus_labels: Tensor,
        *,
        k: int = 20,
        temperature: float = 0.07,
        metric: str | None = None,
        index: Index | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.corpus = corpus
        self.corpus_labels = corpus_labels
        self.options = {
            "k": k,
            "temperature": temperature,
            "metric": metric,
            "index": index,
            "num_classes": num_classes,
        }
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, query: Tensor, query_labels: Tensor) -> None:
        """Classify a batch ``query: (B, D)`` with ``query_labels: (B,)`` and count the hits."""
        query_labels = check_labels("query_labels", query_labels, query.shape[0], what="query")
        pred = knn_predict(query, self.corpus, self.corpus_labels, **self.options)
        self.correct += int((pred == query_labels.cpu()).sum())
        self.total += int(query.shape[0])

    def compute(self) -> Tensor:
        """Scalar accuracy over every update since the last reset (NaN before any update)."""
        return torch.tensor(self.correct / self.total if self.total else float("nan"))
