"""N-way retrieval over held-out pairs: which rows form the evaluation, and its summary.

The corpus is one key per distinct id for ``corpus_size`` held-out ids drawn with a fixed seed
(so every run and its baseline search the same corpus; the first N would be biased: WordNet's
data files are ordered by lexicographer file). ``queries="first"`` asks one query per id, its
first row; ``"all"`` asks every held-out row of those ids. A key with the query's id is
relevant.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

EVAL_SEED = 0  # which held-out ids form the evaluation corpus: the same in every run


def heldout_rows(
    ids: Sequence[str], corpus_size: int | None, queries: str = "first"
) -> tuple[list[int], list[int], Tensor]:
    """The evaluation's rows of a held-out split whose row ``r`` has id ``ids[r]``.

    Returns:
        query rows (Q,), corpus rows (N,) and ``relevant: (Q,)``, the corpus position of each
        query's id.

    >>> heldout_rows(["a", "a", "b", "c"], None, "all")
    ([0, 1, 2, 3], [0, 2, 3], tensor([0, 0, 1, 2]))
    >>> heldout_rows(["a", "a", "b", "c"], None, "first")
    ([0, 2, 3], [0, 2, 3], tensor([0, 1, 2]))
    """
    if queries not in ("first", "all"):
        raise ValueError(f"queries must be 'first' or 'all', got {queries!r}.")
    first: dict[str, int] = {}
    for row, i in enumerate(ids):
        first.setdefault(i, row)
    chosen = list(first)
    if corpus_size is not None and corpus_size < len(chosen):
        g = torch.Generator().manual_seed(EVAL_SEED)
        picked = torch.randperm(len(chosen), generator=g)[:corpus_size].sort().values
        chosen = [chosen[p] for p in picked.tolist()]
    corpus_rows = [first[i] for i in chosen]
    position = {i: p for p, i in enumerate(chosen)}
    if queries == "first":
        query_rows = corpus_rows
    else:
        query_rows = [row for row, i in enumerate(ids) if i in position]
    relevant = torch.tensor([position[ids[r]] for r in query_rows], dtype=torch.long)
    return query_rows, corpus_rows, relevant


def recall_summary(
    query: Tensor, corpus: Tensor, relevant: Tensor, ks: Sequence[int]
) -> dict[str, float]:
    """``R@k`` for each k <= N (and k = 1) and ``MRR`` of ``query: (Q, D)`` against
    ``corpus: (N, D)`` (cosine), ``relevant: (Q,)`` the corpus position of each query's key.

    >>> x = torch.eye(3)
    >>> recall_summary(x, x, torch.arange(3), [1, 5])
    {'R@1': 1.0, 'MRR': 1.0}
    """
    from contrastkit.eval.retrieval import Relevance, retrieval_metrics

    ks = sorted({k for k in ks if k <= corpus.shape[0]} | {1})
    m = retrieval_metrics(
        query, corpus, Relevance(relevant=relevant), ks=tuple(ks), metric="cosine"
    )
    out = {f"R@{k}": m[f"recall@{k}"] for k in ks}
    out["MRR"] = m[f"mrr@{max(ks)}"]
    return out
