"""One call for periodic evaluation during training: kNN, linear probe and retrieval metrics."""

from __future__ import annotations

from torch import Tensor

from contrastkit.eval.knn import knn_accuracy
from contrastkit.eval.linear_probe import linear_probe
from contrastkit.eval.retrieval import retrieval_metrics

__all__ = ["evaluate_embeddings"]


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
        ks: retrieval cut-offs; label-based so ``precision@k`` and ``hit_rate@k`` are reported.
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
    out: dict[str, float] = {}
    out["knn_accuracy"] = knn_accuracy(
        test_emb,
        test_labels,
        train_emb,
        train_labels,
        k=knn_k,
        temperature=knn_temperature,
        metric=metric,
    )
    if with_linear_probe:
        probe = linear_probe(
            train_emb,
            train_labels,
            test_emb,
            test_labels,
            weight_decays=probe_weight_decays,
            max_iter=probe_max_iter,
        )
        out["linear_probe_accuracy"] = probe.accuracy
    retrieval = retrieval_metrics(
        test_emb,
        train_emb,
        query_labels=test_labels,
        corpus_labels=train_labels,
        ks=ks,
        metric=metric,
        with_map_at_r=with_map_at_r,
    )
    for k in ks:
        out[f"precision@{k}"] = retrieval[f"precision@{k}"]
        out[f"hit_rate@{k}"] = retrieval[f"hit_rate@{k}"]
    if with_map_at_r:
        out["map@r"] = retrieval["map@r"]
        out["r_precision"] = retrieval["r_precision"]
    return out
