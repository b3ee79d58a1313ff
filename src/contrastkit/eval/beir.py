"""Retrieval evaluated the way BEIR and trec_eval evaluate it: graded judgements, nDCG@k, MAP@k.

Shapes: Q queries, N corpus documents, D embedding dim, K = max(k_values).

Inputs are BEIR's plain dictionaries (what :func:`contrastkit.data.beir.load_beir` returns):

* ``corpus``: document id -> ``{"title": str, "text": str}`` (or a plain string); a document is
  embedded as ``(title + " " + text).strip()``, as BEIR does;
* ``queries``: query id -> text;
* ``qrels``: query id -> {document id: integer grade}; grade >= 1 is relevant, 0 (or below) is
  judged non-relevant.

Two layers:

* :func:`search_corpus` embeds the corpus in chunks and streams each chunk's scores through a
  running top-K, so neither the (Q, N) score matrix nor all N document embeddings are held;
  it returns a *run* (query id -> {document id: score}, pytrec_eval's format).
* :func:`score_run` computes the metrics of a run against qrels with trec_eval's definitions;
  :func:`evaluate_retrieval` is the two in one call.

trec_eval conventions, followed exactly (the tests check every metric against ``pytrec_eval``
to 1e-6):

* a run is ranked by score descending, ties by document id *descending* (string order), which is
  what trec_eval does; :func:`search_corpus` keeps the same order when it cuts the ranking at K
  (ties are exact float ties: the scores of two duplicate documents embedded in different chunks
  can differ in the last bit of float32, and then the higher score wins);
* only queries that have judgements *and* a ranking are averaged; a query judged only with 0s
  counts (its metrics are 0);
* gains are the grades themselves (linear, ``ndcg_cut``), discounted by ``log2(rank + 1)``;
  the ideal ranking uses every judged-relevant document, including those missing from the
  corpus (they lower Recall and nDCG as trec_eval counts them);
* Precision@k divides by k even when fewer documents are retrieved.

Metric names -> pytrec_eval measures: ``nDCG@k`` = ``ndcg_cut.k``, ``MAP@k`` = ``map_cut.k``,
``Recall@k`` = ``recall.k``, ``P@k`` = ``P.k``, ``MRR@k`` = ``recip_rank`` of the run cut to
its top k.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from contrastkit.data.beir import Document, document_text
from contrastkit.functional.similarity import check_metric
from contrastkit.index.exact import chunked_topk

__all__ = ["METRIC_FAMILIES", "document_text", "evaluate_retrieval", "score_run", "search_corpus"]

METRIC_FAMILIES = ("nDCG", "MAP", "Recall", "P", "MRR")
DEFAULT_K = (1, 3, 5, 10, 100)
Encoder = Callable[[list[str]], Tensor]


def _check_k_values(k_values: object) -> tuple[int, ...]:
    if (
        not isinstance(k_values, Sequence)
        or isinstance(k_values, str)
        or not k_values
        or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in k_values)
    ):
        raise ValueError(
            f"k_values must be a non-empty sequence of positive ints (e.g. (1, 10, 100)), got "
            f"{k_values!r}."
        )
    return tuple(sorted(set(k_values)))


def _ranked(scores: Mapping[str, float]) -> list[str]:
    """Document ids by score descending, ties by document id descending (trec_eval's order)."""
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def _query_metrics(ranking: list[str], judged: Mapping[str, int], ks: tuple[int, ...]) -> dict:
    grades = [max(int(judged.get(d, 0)), 0) for d in ranking]
    relevant = [g >= 1 for g in grades]
    num_rel = sum(1 for g in judged.values() if g >= 1)
    ideal = sorted((g for g in judged.values() if g >= 1), reverse=True)
    out: dict[str, float] = {}
    for k in ks:
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(grades[:k]))
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
        found, ap = 0, 0.0
        for i, hit in enumerate(relevant[:k]):
            if hit:
                found += 1
                ap += found / (i + 1)
        first = next((i for i, hit in enumerate(relevant[:k]) if hit), None)
        out[f"nDCG@{k}"] = dcg / idcg if idcg > 0 else 0.0
        out[f"MAP@{k}"] = ap / num_rel if num_rel else 0.0
        out[f"Recall@{k}"] = found / num_rel if num_rel else 0.0
        out[f"P@{k}"] = found / k
        out[f"MRR@{k}"] = 1.0 / (first + 1) if first is not None else 0.0
    return out


def score_run(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    k_values: Sequence[int] = DEFAULT_K,
) -> dict[str, float]:
    """trec_eval metrics of a run, averaged over the queries that have judgements and a ranking.

    Args:
        run: query id -> {document id: score}; ranked by score descending, ties by document id
            descending (trec_eval's order).
        qrels: query id -> {document id: grade}; grade >= 1 relevant, 0 judged non-relevant.
        k_values: cut-offs; every family in :data:`METRIC_FAMILIES` is reported at each.

    Returns:
        ``{"nDCG@10": ..., "MAP@10": ..., "Recall@10": ..., "P@10": ..., "MRR@10": ..., ...}``
        (0.0 for every metric when no query is evaluated).

    >>> qrels = {"q1": {"d1": 2, "d2": 0, "d3": 1}}
    >>> run = {"q1": {"d2": 0.9, "d1": 0.5, "d3": 0.5}}  # d3 > d1 in the tie: ranked d2, d3, d1
    >>> m = score_run(run, qrels, k_values=[2])
    >>> round(m["nDCG@2"], 4), m["P@2"], m["MRR@2"], m["Recall@2"]
    (0.2398, 0.5, 0.5, 0.5)
    """
    ks = _check_k_values(k_values)
    sums = dict.fromkeys((f"{f}@{k}" for k in ks for f in METRIC_FAMILIES), 0.0)
    evaluated = [q for q in qrels if q in run]
    for q in evaluated:
        for name, value in _query_metrics(_ranked(run[q]), qrels[q], ks).items():
            sums[name] += value
    n = len(evaluated)
    return {name: (total / n if n else 0.0) for name, total in sums.items()}


def _embed(encoder: Encoder, texts: list[str], name: str) -> Tensor:
    out = encoder(texts)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != len(texts):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"{name} must map a list of {len(texts)} strings to a ({len(texts)}, D) tensor, got "
            f"{got}; wrap your model as `lambda texts: model.encode(texts)`."
        )
    return out.detach().float().cpu()


def _merge(
    best: tuple[Tensor, Tensor] | None, new: tuple[Tensor, Tensor], k: int
) -> tuple[Tensor, Tensor]:
    """Running top-k: ``best`` holds earlier (lower-index) chunks, so a stable sort of
    [best, new] keeps ties in lower-index-first order. Scores/indices (Q, <=k) each."""
    if best is None:
        return new
    scores = torch.cat([best[0], new[0]], dim=1)  # (Q, K + k_c)
    index = torch.cat([best[1], new[1]], dim=1)
    order = scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), index.gather(1, order)


@torch.no_grad()
def search_corpus(
    query_encoder: Encoder,
    document_encoder: Encoder,
    corpus: Mapping[str, Document],
    queries: Mapping[str, str],
    k: int = 100,
    *,
    ignore_identical_ids: bool = True,
    metric: str = "cosine",
    batch_size: int = 4096,
) -> dict[str, dict[str, float]]:
    """The top-``k`` documents of every query: a run in pytrec_eval's format.

    Documents are embedded ``batch_size`` at a time; each chunk's (Q, chunk) scores are cut to
    their top-k (:func:`contrastkit.index.chunked_topk`) and merged into the running top-k, so
    memory is O(Q * (k + batch_size) + batch_size * D). The corpus is walked in document-id
    descending order and ties keep the earlier document, so the cut at k agrees with trec_eval's
    tie order (score descending, then document id descending).

    Args:
        query_encoder: ``list[str] -> (B, D)`` tensor.
        document_encoder: ``list[str] -> (B, D)`` tensor (may be the same callable).
        corpus: document id -> ``{"title", "text"}`` or a string.
        queries: query id -> text.
        k: documents kept per query (at most the corpus size).
        ignore_identical_ids: never return a document whose id is the query's id (BEIR's
            convention for sets where queries are also documents, e.g. Quora, ArguAna).
        metric: ``"cosine"`` or ``"dot"`` (or ``"euclidean"``: negative distance).
        batch_size: documents embedded per encoder call.

    Returns:
        query id -> {document id: score}, at most k entries each.

    >>> emb = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.7, 0.7]}
    >>> enc = lambda texts: torch.tensor([emb[t] for t in texts])
    >>> search_corpus(enc, enc, {"d1": "a", "d2": "b", "d3": "c"}, {"q": "a"}, k=2)
    {'q': {'d1': 1.0, 'd3': 0.7071067690849304}}
    """
    metric = check_metric(metric)
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"k must be a positive int (documents per query), got {k!r}.")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int (e.g. 4096), got {batch_size!r}.")
    if len(corpus) == 0:
        raise ValueError("corpus is empty; pass at least one document (id -> title/text).")
    if k > len(corpus):
        raise ValueError(
            f"k={k} is larger than the corpus ({len(corpus)} documents); lower k (or k_values) "
            f"to at most {len(corpus)}."
        )
    qids = list(queries)
    if not qids:
        return {}
    query_emb = _embed(query_encoder, [queries[q] for q in qids], "query_encoder")  # (Q, D)
    doc_ids = sorted(corpus, reverse=True)  # lower position = higher id: trec_eval's tie order
    position = {q: i for i, q in enumerate(qids)}
    best: tuple[Tensor, Tensor] | None = None
    for start in range(0, len(doc_ids), batch_size):
        chunk_ids = doc_ids[start : start + batch_size]
        chunk = _embed(
            document_encoder, [document_text(corpus[d]) for d in chunk_ids], "document_encoder"
        )
        if chunk.shape[1] != query_emb.shape[1]:
            raise ValueError(
                f"query and document embeddings must share D, got {query_emb.shape[1]} and "
                f"{chunk.shape[1]}; use encoders of one model."
            )
        exclude = None
        if ignore_identical_ids:
            exclude = torch.full((len(qids),), -1, dtype=torch.long)
            for j, d in enumerate(chunk_ids):
                if d in position:
                    exclude[position[d]] = j
        scores, index = chunked_topk(
            query_emb, chunk, min(k, len(chunk_ids)), metric=metric, exclude=exclude
        )  # (Q, k_c) each
        best = _merge(best, (scores, index + start), k)
    assert best is not None
    run: dict[str, dict[str, float]] = {}
    for qi, (row_scores, row_index) in enumerate(zip(best[0].tolist(), best[1].tolist())):
        run[qids[qi]] = {doc_ids[j]: s for s, j in zip(row_scores, row_index) if s != float("-inf")}
    return run


def evaluate_retrieval(
    query_encoder: Encoder,
    document_encoder: Encoder,
    corpus: Mapping[str, Document],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    k_values: Sequence[int] = DEFAULT_K,
    *,
    ignore_identical_ids: bool = True,
    metric: str = "cosine",
    batch_size: int = 4096,
) -> dict[str, float]:
    """nDCG / MAP / Recall / P / MRR at every k of ``k_values``, trec_eval's definitions.

    Only the queries with judgements are embedded and searched (:func:`search_corpus`, top
    ``max(k_values)``); the run is scored by :func:`score_run` (see the module docstring for
    the conventions and the pytrec_eval measure of each key).

    Args:
        query_encoder: ``list[str] -> (B, D)``; document_encoder: the same for documents.
        corpus: document id -> ``{"title", "text"}`` or a string.
        queries: query id -> text (queries without judgements are ignored).
        qrels: query id -> {document id: grade}.
        k_values: cut-offs, each at most the corpus size (default (1, 3, 5, 10, 100)).
        ignore_identical_ids: never retrieve the document that has the query's own id.
        metric: similarity of the search (``"cosine"``, ``"dot"``, ``"euclidean"``).
        batch_size: documents embedded per encoder call.

    Returns:
        ``{"nDCG@10": ..., "MAP@100": ..., "Recall@100": ..., "P@10": ..., "MRR@10": ..., ...}``.

    >>> emb = {"cat": [1.0, 0.0], "feline": [0.9, 0.1], "car": [0.0, 1.0]}
    >>> enc = lambda texts: torch.tensor([emb[t] for t in texts])
    >>> m = evaluate_retrieval(enc, enc, {"d1": "feline", "d2": "car"}, {"q1": "cat"},
    ...                        {"q1": {"d1": 1}}, k_values=[1, 2])
    >>> m["nDCG@1"], m["P@2"], m["MRR@2"]
    (1.0, 0.5, 1.0)
    """
    ks = _check_k_values(k_values)
    if len(corpus) == 0:
        raise ValueError("corpus is empty; pass at least one document (id -> title/text).")
    if ks[-1] > len(corpus):
        raise ValueError(
            f"k_values has k={ks[-1]} but the corpus holds {len(corpus)} documents; pass "
            f"k_values no larger than {len(corpus)}."
        )
    judged = {q: queries[q] for q in qrels if q in queries}
    run = search_corpus(
        query_encoder,
        document_encoder,
        corpus,
        judged,
        ks[-1],
        ignore_identical_ids=ignore_identical_ids,
        metric=metric,
        batch_size=batch_size,
    )
    return score_run(run, qrels, ks)
