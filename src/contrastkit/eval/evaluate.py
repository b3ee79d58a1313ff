"""One call for periodic evaluation during training: kNN, linear probe and retrieval metrics,
and the names they are logged under.

The names returned here are the ones every run writes (``metrics.jsonl``, ``eval.json``, the
report): ``knn_accuracy``, ``linear_probe_accuracy``; a Matryoshka width ``d`` adds
``"<name> @<d>d"``. Runs written before this vocabulary used ``knn`` and ``probe``;
:func:`current_metric_names` reads them in today's names.

>>> current_metric_names({"knn": 0.8, "probe": 0.9, "knn @8d": 0.7, "R@1": 0.5})
{'knn_accuracy': 0.8, 'linear_probe_accuracy': 0.9, 'knn_accuracy @8d': 0.7, 'R@1': 0.5}
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from contrastkit._checks import check_embeddings, check_labels, check_pair, check_temperature
from contrastkit.eval.knn import votes_from_neighbours
from contrastkit.eval.linear_probe import linear_probe
from contrastkit.eval.retrieval import (
    Relevance,
    hit_rate_at_k,
    precision_at_k,
    relevance_hits,
    retrieval_scores,
    retrieve,
    summarize,
)

__all__ = [
    "KNN_ACCURACY",
    "LINEAR_PROBE_ACCURACY",
    "current_metric_name",
    "current_metric_names",
    "evaluate_embeddings",
]

KNN_ACCURACY = "knn_accuracy"
LINEAR_PROBE_ACCURACY = "linear_probe_accuracy"
# names of runs written before one vocabulary (the image tasks logged these)
LEGACY_METRIC_NAMES = {"knn": KNN_ACCURACY, "probe": LINEAR_PROBE_ACCURACY}


def current_metric_name(name: str) -> str:
    """Today's name of a logged metric ``name`` (a legacy name, optionally followed by a
    Matryoshka width suffix such as ``" @8d"``); any other name is returned unchanged."""
    base, sep, suffix = name.partition(" @")
    return LEGACY_METRIC_NAMES.get(base, base) + sep + suffix


def current_metric_names(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` (as read from an old or new run) keyed by today's names, order kept."""
    return {current_metric_name(k): v for k, v in metrics.items()}


def evaluate_embeddings(
    train_emb: Tensor,
    train_labels: Tensor,
    test_emb: Tensor,
    test_labels: Tensor,
    *,
    metric: str = "cosine",
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    with_linear_probe: bool = True,
    probe_weight_decays: tuple[float, ...] = (1e-4,),
    probe_max_iter: int = 100,
    ks: tuple[int, ...] = (1, 10),
    with_map_at_r: bool = False,
) -> dict[str, float]:
    """Quality of a labelled embedding space, as flat ``{name: float}`` ready for logging.

    Test embeddings are the queries; training embeddings are the kNN / retrieval corpus and the
    probe's training set.

    Args:
        train_emb: (N, D), train_labels: (N,) class indices.
        test_emb: (Q, D), test_labels: (Q,).
        metric: similarity for kNN and retrieval.
        knn_k, knn_temperature: weighted kNN (Wu et al. 2018) settings.
        with_linear_probe: fit the L-BFGS logistic-regression probe (the slowest part).
        probe_weight_decays: one value (default; no selection, fastest) or several (chosen on a
            held-out 10% of the training set).
        ks: retrieval cut-offs; label-based so ``precision@k`` and ``hit_rate@k`` are reported
            (``()``: kNN and probe only).
        with_map_at_r: also MAP@R and R-Precision (retrieves up to the largest class size per
            query: slower on large corpora).

    Returns:
        ``knn_accuracy``, ``linear_probe_accuracy`` (if enabled), ``precision@k``,
        ``hit_rate@k`` for each k, and ``map@r`` / ``r_precision`` if enabled.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> labels = torch.arange(2).repeat(30)
    >>> emb = torch.tensor([[3.0, 0.0], [0.0, 3.0]])[labels] + torch.randn(60, 2, generator=g)
    >>> out = evaluate_embeddings(emb[:40], labels[:40], emb[40:], labels[40:], knn_k=5)
    >>> out["knn_accuracy"], out["linear_probe_accuracy"], out["precision@1"]
    (1.0, 1.0, 1.0)
    """
    check_embeddings("train_emb", train_emb)
    check_embeddings("test_emb", test_emb)
    check_pair("train_emb", train_emb, "test_emb", test_emb, same_rows=False)
    train_labels = check_labels("train_labels", train_labels, train_emb.shape[0], what="train_emb")
    test_labels = check_labels("test_labels", test_labels, test_emb.shape[0], what="test_emb")
    check_temperature(knn_temperature)
    out: dict[str, float] = {}
    if with_linear_probe:
        probe = linear_probe(
            train_emb,
            train_labels,
            test_emb,
            test_labels,
            weight_decays=probe_weight_decays,
            max_iter=probe_max_iter,
        )
        out[LINEAR_PROBE_ACCURACY] = float(probe.accuracy)
    train_labels, test_labels = train_labels.cpu(), test_labels.cpu()
    num_classes = int(max(int(train_labels.max()), int(test_labels.max())) + 1)
    # One exact search serves both the kNN vote and the retrieval metrics.
    scores, indices = retrieve(test_emb, train_emb, max((knn_k, *ks)), metric=metric)
    votes = votes_from_neighbours(
        scores[:, :knn_k], indices[:, :knn_k], train_labels, knn_temperature, num_classes
    )
    out[KNN_ACCURACY] = float((votes.argmax(1) == test_labels).float().mean())
    if not ks and not with_map_at_r:
        return {KNN_ACCURACY: out.pop(KNN_ACCURACY), **out}
    hits, num_relevant = relevance_hits(
        indices.cpu(), query_labels=test_labels, corpus_labels=train_labels
    )
    per_query = {}
    for k in ks:
        per_query[f"precision@{k}"] = precision_at_k(hits, num_relevant, k)
        per_query[f"hit_rate@{k}"] = hit_rate_at_k(hits, num_relevant, k)
    if with_map_at_r:
        full = retrieval_scores(
            test_emb,
            train_emb,
            Relevance(test_labels, train_labels),
            ks=ks,
            metric=metric,
            with_map_at_r=True,
        )
        per_query["map@r"], per_query["r_precision"] = full["map@r"], full["r_precision"]
    summary = summarize(per_query)
    out.update({name: summary[name] for name in per_query})
    return {KNN_ACCURACY: out.pop(KNN_ACCURACY), **out}
