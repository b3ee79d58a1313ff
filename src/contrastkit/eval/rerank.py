"""Second-stage reranking of a retrieval run: a cross-encoder rescores each query's top
candidates of a first-stage run, and the reranked run is scored with the same trec_eval
conventions (:func:`contrastkit.eval.beir.score_run`), so the two sets of figures compare.

A run is pytrec_eval's ``{query id: {document id: score}}``. The first ``top`` documents of a
query (by first-stage score) take the cross-encoder's scores; the rest keep their first-stage
order below them, so cut-offs beyond ``top`` are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from contrastkit.data.beir import Document, document_text

__all__ = ["rerank_run"]

Scorer = Callable[[str, list[str]], list[float]]


def rerank_run(
    run: Mapping[str, Mapping[str, float]],
    score: Scorer,
    corpus: Mapping[str, Document],
    queries: Mapping[str, str],
    top: int = 100,
) -> dict[str, dict[str, float]]:
    """The run with each query's first ``top`` documents rescored by ``score(query, texts)``.

    Args:
        run: first-stage scores, query id -> {document id: score}.
        score: ``(query text, N document texts) -> N scores`` (e.g. a bound
            :func:`contrastkit.encoders.cross_encoder.score_pairs`).
        corpus: document id -> ``{"title", "text"}`` or a string.
        queries: query id -> text.
        top: documents reranked per query (>= 1).

    Returns:
        A new run: the reranked documents first (by the new score), then the others.

    >>> run = {"q": {"a": 0.9, "b": 0.8, "c": 0.1}}
    >>> new = rerank_run(run, lambda q, ts: [len(t) for t in ts], {"a": "x", "b": "xyz", "c": "xy"},
    ...                  {"q": "?"}, top=2)
    >>> sorted(new["q"], key=new["q"].get, reverse=True)
    ['b', 'a', 'c']
    """
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ValueError(f"top must be an int >= 1 (documents reranked per query), got {top!r}.")
    out: dict[str, dict[str, float]] = {}
    for qid, scores in run.items():
        ranked = sorted(scores, key=lambda d: (scores[d], d), reverse=True)
        head, tail = ranked[:top], ranked[top:]
        new = score(queries[qid], [document_text(corpus[d]) for d in head]) if head else []
        floor = min(new, default=0.0)
        reranked = {d: float(s) for d, s in zip(head, new)}
        for i, d in enumerate(tail):  # below every reranked document, in first-stage order
            reranked[d] = floor - 1.0 - i
        out[qid] = reranked
    return out
