"""Offline hard negatives for text data: embed queries and corpus, mine, write a pairs file.

The mining itself is :func:`contrastkit.negatives.mine_hard_negatives` (one search, the filters);
this module turns a BEIR split or a pairs file into its inputs and its output into the pairs
JSONL that :func:`contrastkit.data.files.load_pairs` reads (``query``, ``positive``,
``negatives``, ``id``).

Against false negatives every document judged relevant to the query (any grade >= 1, or the
positive of any row of the same ``id`` group in a pairs file) is never mined, whatever
``min_score`` picks as positives, and ``dedup`` drops candidates whose text equals a positive's
or an already kept negative's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from contrastkit.data._common import TextPairs, atomic_write_bytes, group_ids
from contrastkit.data.beir import BeirData, document_text
from contrastkit.negatives.miners import mine_hard_negatives

__all__ = [
    "MiningRows",
    "mine_text_negatives",
    "rescore_with_teacher",
    "rows_from_beir",
    "rows_from_pairs",
    "write_pairs",
]

Encoder = Callable[[list[str]], Tensor]


@dataclass
class MiningRows:
    """What to mine: R (query, positive) rows over a corpus of N texts.

    Attributes:
        query: R query texts.
        ids: R group ids (the BEIR query id; rows of one id are one concept).
        corpus: N document texts.
        positives: R lists of corpus rows judged relevant; the first is the row's positive.
    """

    query: list[str]
    ids: list[str]
    corpus: list[str]
    positives: list[list[int]]


def rows_from_beir(data: BeirData, min_score: int = 1) -> MiningRows:
    """One row per judgement ``>= min_score`` of a corpus document; every document judged >= 1
    for the query is listed as relevant (never mined).

    >>> data = BeirData({"d1": {"title": "", "text": "a dog"}, "d2": {"title": "", "text": "a cat"}},
    ...                 {"q": "dog"}, {"q": {"d1": 2, "d2": 0}})
    >>> rows = rows_from_beir(data)
    >>> rows.query, rows.corpus, rows.positives
    (['dog'], ['a dog', 'a cat'], [[0]])
    """
    doc_ids = list(data.corpus)
    row_of = {d: i for i, d in enumerate(doc_ids)}
    query, ids, positives = [], [], []
    for qid, judged in data.qrels.items():
        relevant = [row_of[d] for d, g in judged.items() if g >= 1 and d in row_of]
        for did, grade in judged.items():
            if grade >= min_score and did in row_of:
                own = row_of[did]
                query.append(data.queries[qid])
                ids.append(qid)
                positives.append([own, *(r for r in relevant if r != own)])
    if not query:
        raise ValueError(
            f"no judgement >= min_score={min_score} names a corpus document; lower min_score or "
            "check the split."
        )
    return MiningRows(query, ids, [document_text(data.corpus[d]) for d in doc_ids], positives)


def rows_from_pairs(pairs: TextPairs) -> MiningRows:
    """Rows of a pairs file; the corpus is its distinct positives and negatives, and the
    positives of every row sharing a row's group are relevant to it.

    >>> rows = rows_from_pairs(TextPairs(["dog", "puppy"], ["a canine", "a young dog"],
    ...                                  groups=torch.tensor([0, 0])))
    >>> rows.corpus, rows.positives
    (['a canine', 'a young dog'], [[0, 1], [1, 0]])
    """
    texts = list(pairs.positive)
    for negs in pairs.negatives or []:
        texts.extend(negs)
    corpus = list(dict.fromkeys(texts))
    row_of = {t: i for i, t in enumerate(corpus)}
    by_group: dict[int, list[int]] = {}
    for g, text in zip(pairs.groups.tolist(), pairs.positive):
        by_group.setdefault(g, []).append(row_of[text])
    positives = []
    for g, text in zip(pairs.groups.tolist(), pairs.positive):
        own = row_of[text]
        positives.append([own, *dict.fromkeys(r for r in by_group[g] if r != own)])
    return MiningRows(list(pairs.query), list(pairs.ids), corpus, positives)


def _encode(encoder: Encoder, texts: list[str], batch_size: int, name: str) -> Tensor:
    parts = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        out = encoder(chunk)
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != len(chunk):
            raise ValueError(f"{name} must map {len(chunk)} strings to a ({len(chunk)}, D) tensor.")
        parts.append(out.detach().float().cpu())
    return torch.cat(parts)  # (len(texts), D)


@torch.no_grad()
def mine_text_negatives(
    query_encoder: Encoder,
    document_encoder: Encoder,
    rows: MiningRows,
    *,
    num_negatives: int = 5,
    skip_top: int = 0,
    max_rank: int | None = None,
    margin: float | None = None,
    max_score_ratio: float | None = None,
    dedup: bool = True,
    batch_size: int = 1024,
    metric: str = "cosine",
) -> list[dict]:
    """Mine negatives for every row: a pairs-file row ``{"query", "positive", "negatives", "id"}``.

    Args:
        query_encoder, document_encoder: ``list[str] -> (B, D)`` tensors (one model's two sides).
        rows: from :func:`rows_from_beir` or :func:`rows_from_pairs`.
        num_negatives, skip_top, max_rank, margin, max_score_ratio: the filters of
            :func:`~contrastkit.negatives.mine_hard_negatives` (margins are below the row's
            own positive's score); ``num_negatives=0`` writes the rows without mining (the
            baseline training file) and calls no encoder.
        dedup: never keep a candidate whose text (stripped, case-folded) equals a positive's or
            an already kept negative's.
        batch_size: texts per encoder call.
        metric: similarity of the search.

    Returns:
        R dicts; a row keeps fewer than ``num_negatives`` negatives when the filters leave fewer.

    >>> emb = {"dog": [1.0, 0.0], "a dog": [1.0, 0.1], "a wolf": [0.9, 0.3], "a car": [0.0, 1.0]}
    >>> enc = lambda texts: torch.tensor([emb[t] for t in texts])
    >>> rows = MiningRows(["dog"], ["q"], ["a dog", "a wolf", "a car"], [[0]])
    >>> mine_text_negatives(enc, enc, rows, num_negatives=1)
    [{'query': 'dog', 'positive': 'a dog', 'negatives': ['a wolf'], 'id': 'q'}]
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int (e.g. 1024), got {batch_size!r}.")
    if num_negatives == 0:  # the rows as a plain pairs file: nothing to embed
        return [
            {"query": q, "positive": rows.corpus[p[0]], "negatives": [], "id": i}
            for q, p, i in zip(rows.query, rows.positives, rows.ids)
        ]
    distinct = list(dict.fromkeys(rows.query))
    where = {t: i for i, t in enumerate(distinct)}
    query_emb = _encode(query_encoder, distinct, batch_size, "query_encoder")  # (Q, D)
    query_emb = query_emb[torch.tensor([where[t] for t in rows.query])]  # (R, D)
    corpus_emb = _encode(document_encoder, rows.corpus, batch_size, "document_encoder")  # (N, D)
    groups = group_ids([t.strip().casefold() for t in rows.corpus]) if dedup else None
    mined = mine_hard_negatives(
        query_emb,
        corpus_emb,
        rows.positives,
        num_negatives=num_negatives,
        skip_top=skip_top,
        max_rank=max_rank,
        margin=margin,
        max_score_ratio=max_score_ratio,
        corpus_groups=groups,
        metric=metric,
    )
    out = []
    for i, negs in enumerate(mined.indices.tolist()):
        out.append(
            {
                "query": rows.query[i],
                "positive": rows.corpus[rows.positives[i][0]],
                "negatives": [rows.corpus[j] for j in negs if j >= 0],
                "id": rows.ids[i],
            }
        )
    return out


def rescore_with_teacher(
    rows: list[dict],
    score: Callable[[str, list[str]], list[float]],
    *,
    num_negatives: int,
    max_ratio: float = 0.95,
) -> list[dict]:
    """A teacher (a cross-encoder) rescores mined rows: likely false negatives leave, and the
    teacher's scores are written for distillation.

    A candidate is dropped when ``sigmoid(t_n) > max_ratio * sigmoid(t_p)`` (the teacher finds
    it nearly as relevant as the positive: NV-Retriever's "TopK-PercPos" filter, Moreira et al.
    2024, https://arxiv.org/abs/2407.15831, on the teacher's probability, which is positive
    whatever the sign of its logits); the first ``num_negatives`` survivors, in mining order,
    are kept. Each row gains ``scores``: the teacher's raw score of the positive, then of each
    kept negative (what :func:`contrastkit.data.files.load_pairs` reads and the distillation
    losses take).

    Args:
        rows: pairs rows with ``query``, ``positive``, ``negatives`` (from
            :func:`mine_text_negatives`).
        score: ``(query, N texts) -> N scores``.
        num_negatives: negatives kept per row.
        max_ratio: in (0, 1].

    Returns:
        New rows (the input is not changed).

    >>> teacher = {"a dog": 3.0, "a wolf": 2.9, "a car": -2.0, "a cup": -1.0}
    >>> rows = [{"query": "dog", "positive": "a dog", "negatives": ["a wolf", "a car", "a cup"]}]
    >>> out = rescore_with_teacher(rows, lambda q, ts: [teacher[t] for t in ts], num_negatives=1)
    >>> out[0]["negatives"], out[0]["scores"]
    (['a car'], [3.0, -2.0])
    """
    if not 0 < max_ratio <= 1:
        raise ValueError(f"max_ratio must be in (0, 1], got {max_ratio!r}.")
    out = []
    for row in rows:
        texts = [row["positive"], *row["negatives"]]
        teacher = [float(s) for s in score(row["query"], texts)]
        prob = torch.sigmoid(torch.tensor(teacher, dtype=torch.float64)).tolist()
        keep = [i for i in range(1, len(texts)) if prob[i] <= max_ratio * prob[0]]
        keep = keep[:num_negatives]
        out.append(
            {
                **row,
                "negatives": [texts[i] for i in keep],
                "scores": [teacher[0], *(teacher[i] for i in keep)],
            }
        )
    return out


def write_pairs(rows: list[dict], path: str | Path) -> Path:
    """Write rows as a pairs JSONL file (atomically: readers never see half a file)."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise ValueError(f"path must end in .jsonl (a pairs file), got {str(path)!r}.")
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(path, payload.encode("utf-8"))
    return path
