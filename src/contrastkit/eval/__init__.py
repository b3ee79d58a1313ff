"""Evaluation of embedding spaces: retrieval metrics, weighted kNN and the linear probe.

Shape notation: Q queries, N corpus, D embedding dim, K neighbours, C classes.
Functions are pure (``*_at_k`` take a ranked relevance matrix; ``retrieval_scores`` searches);
BEIR / trec_eval evaluation of a judged collection is :func:`evaluate_retrieval`
(:mod:`contrastkit.eval.beir`); the classes in :mod:`contrastkit.eval.metrics` and :class:`KNNAccuracy` accumulate over batches.
"""

from contrastkit.eval.beir import evaluate_retrieval, score_run, search_corpus
from contrastkit.eval.evaluate import evaluate_embeddings
from contrastkit.eval.knn import KNNAccuracy, knn_accuracy, knn_predict, knn_votes
from contrastkit.eval.linear_probe import LinearProbeResult, fit_logistic_regression, linear_probe
from contrastkit.eval.metrics import (
    HitRateAtK,
    MAPAtR,
    MRRAtK,
    NDCGAtK,
    PrecisionAtK,
    RecallAtK,
    RetrievalMetrics,
)
from contrastkit.eval.retrieval import (
    Relevance,
    SearchChunks,
    count_relevant,
    hit_rate_at_k,
    map_at_r,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    r_precision,
    recall_at_k,
    relevance_hits,
    retrieval_metrics,
    retrieval_scores,
    retrieve,
)

__all__ = [
    "HitRateAtK",
    "KNNAccuracy",
    "LinearProbeResult",
    "MAPAtR",
    "MRRAtK",
    "NDCGAtK",
    "PrecisionAtK",
    "RecallAtK",
    "Relevance",
    "RetrievalMetrics",
    "SearchChunks",
    "count_relevant",
    "evaluate_embeddings",
    "evaluate_retrieval",
    "fit_logistic_regression",
    "hit_rate_at_k",
    "knn_accuracy",
    "knn_predict",
    "knn_votes",
    "linear_probe",
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
    "score_run",
    "search_corpus",
]
