"""False-negative masks: candidates that should not be pushed away from a query.

An in-batch "negative" may really be a positive: the same document twice in a batch, another
caption of the same image, an example of the same class, a near-duplicate. Each function here
returns a boolean ``ignore_mask`` ready for :func:`contrastkit.functional.info_nce` (as
``roles=KeyRoles(ignore_mask=mask)``; True removes a candidate from the softmax). The designated
positive (column ``i`` of row ``i``) is never True.

| source                   | function               | typical use                              |
|--------------------------|------------------------|------------------------------------------|
| ids / duplicate texts    | :func:`mask_from_ids`, :func:`mask_from_texts` | repeated documents |
| labels                   | :func:`mask_from_labels` | same class, when not used as positives |
| a similarity threshold   | :func:`mask_from_threshold` | near-duplicates by the model itself |
| a guide model            | :func:`mask_from_guide` | GISTEmbed (Solatorio 2024, https://arxiv.org/abs/2402.16829) |

Masks are (B, N) against the keys, or (B, N + M) when extra negatives are given: the layout of
``info_nce``'s candidates (keys first, then negatives). All run under ``no_grad``.

Related: the debiased objectives (:mod:`contrastkit.functional.debiased`) correct for false
negatives statistically instead of masking them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

from contrastkit._checks import check_embeddings, check_pair, check_positive_number
from contrastkit.functional.precision import own_precision
from contrastkit.functional.similarity import check_metric, similarity_matrix_unchecked

__all__ = [
    "mask_from_guide",
    "mask_from_ids",
    "mask_from_labels",
    "mask_from_texts",
    "mask_from_threshold",
]


def _check_ids(name: str, ids: object) -> Tensor:
    if not isinstance(ids, Tensor) or ids.ndim != 1 or ids.dtype.is_floating_point:
        raise TypeError(
            f"{name} must be a 1-D integer tensor, got "
            f"{getattr(ids, 'dtype', type(ids).__name__)} of shape {getattr(ids, 'shape', None)}."
        )
    return ids


def _drop_positive(mask: Tensor) -> Tensor:
    """Clear the designated positive (i, i) of each row."""
    b = mask.shape[0]
    rows = torch.arange(min(b, mask.shape[1]), device=mask.device)
    mask[rows, rows] = False
    return mask


@torch.no_grad()
def mask_from_ids(query_ids: Tensor, key_ids: Tensor, negative_ids: Tensor | None = None) -> Tensor:
    """Ignore candidates with the query's id (duplicates of its own item).

    Args:
        query_ids: (B,) integer ids of the items the queries belong to.
        key_ids: (N,) ids of the keys.
        negative_ids: optional (M,) ids of extra negatives (e.g. a queue's ``ids_in_order()``).

    Returns:
        (B, N) or (B, N + M) bool.

    >>> mask_from_ids(torch.tensor([1, 2, 1]), torch.tensor([1, 2, 1])).int().tolist()
    [[0, 0, 1], [0, 0, 0], [1, 0, 0]]
    """
    query_ids = _check_ids("query_ids", query_ids)
    ids = _check_ids("key_ids", key_ids)
    if negative_ids is not None:
        ids = torch.cat([ids, _check_ids("negative_ids", negative_ids).to(ids)])
    return _drop_positive(query_ids[:, None] == ids[None, :])


def _text_ids(texts: Sequence[Hashable], table: dict[Hashable, int]) -> Tensor:
    return torch.tensor([table.setdefault(t, len(table)) for t in texts], dtype=torch.long)


@torch.no_grad()
def mask_from_texts(
    query_texts: Sequence[Hashable],
    key_texts: Sequence[Hashable],
    negative_texts: Sequence[Hashable] | None = None,
) -> Tensor:
    """Ignore candidates whose text equals the *positive's* text (exact duplicates of it).

    A key whose text repeats key ``i``'s text is the same positive a second time and must not be
    a negative of query ``i``; a candidate equal to the query text itself is ignored too.

    >>> mask_from_texts(["q1", "q2"], ["a", "a"]).int().tolist()
    [[0, 1], [1, 0]]
    """
    if len(query_texts) != len(key_texts):
        raise ValueError(
            f"query_texts and key_texts must pair up, got {len(query_texts)} and {len(key_texts)}."
        )
    table: dict[Hashable, int] = {}
    k_ids = _text_ids(key_texts, table)
    cand = k_ids if negative_texts is None else torch.cat([k_ids, _text_ids(negative_texts, table)])
    q_ids = _text_ids(query_texts, table)
    mask = (k_ids[:, None] == cand[None, :]) | (q_ids[:, None] == cand[None, :])
    return _drop_positive(mask)


@torch.no_grad()
def mask_from_labels(query_labels: Tensor, key_labels: Tensor) -> Tensor:
    """Ignore keys of the query's class (when labels should not make extra positives).

    >>> mask_from_labels(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1])).int().tolist()
    [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    """
    q = _check_ids("query_labels", query_labels)
    k = _check_ids("key_labels", key_labels)
    return _drop_positive(q[:, None] == k[None, :])


@own_precision("float32")
def _candidate_scores(query: Tensor, key: Tensor, negatives: Tensor | None, metric: str) -> Tensor:
    check_embeddings("query", query)
    check_embeddings("key", key)
    check_pair("query", query, "key", key, same_rows=False)
    scores = similarity_matrix_unchecked(query, key, metric)  # (B, N)
    if negatives is not None:
        check_embeddings("negatives", negatives)
        check_pair("query", query, "negatives", negatives, same_rows=False)
        scores = torch.cat([scores, similarity_matrix_unchecked(query, negatives, metric)], 1)
    return scores  # (B, N + M)


@torch.no_grad()
def mask_from_threshold(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    threshold: float,
    metric: str = "cosine",
) -> Tensor:
    """Ignore candidates more similar to the query than ``threshold`` (near-duplicates).

    Args:
        query: (B, D); key: (N, D); negatives: optional (M, D).
        threshold: a similarity in the metric's range (e.g. 0.95 for cosine).
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.

    >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> mask_from_threshold(q, torch.tensor([[1.0, 0.0], [1.0, 0.01]]), threshold=0.9).tolist()
    [[False, True], [False, False]]
    """
    metric = check_metric(metric)
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        raise TypeError(f"threshold must be a float, got {type(threshold).__name__}.")
    scores = _candidate_scores(query, key, negatives, metric)
    return _drop_positive(scores > threshold)


@torch.no_grad()
def mask_from_guide(
    guide_query: Tensor,
    guide_key: Tensor,
    guide_negatives: Tensor | None = None,
    *,
    margin: float = 0.0,
    metric: str = "cosine",
) -> Tensor:
    """GISTEmbed's guided mask: ignore candidates a guide model scores above the positive.

    With guide similarities ``g``, candidate ``j`` of query ``i`` is ignored when
    ``g(q_i, c_j) > g(q_i, k_i) - margin`` (Solatorio 2024, https://arxiv.org/abs/2402.16829;
    sentence-transformers' ``GISTEmbedLoss`` with the absolute margin strategy). The guide is a
    stronger, frozen embedding model run on the same texts; pass its embeddings.

    Args:
        guide_query: (B, D') guide embeddings of the queries.
        guide_key: (N, D') of the keys, row i the positive of query i (N >= B).
        guide_negatives: optional (M, D') of extra negatives.
        margin: >= 0; larger ignores more (candidates close *below* the positive too).
        metric: the guide's similarity.

    Returns:
        (B, N) or (B, N + M) bool ignore mask.

    >>> g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    >>> mask_from_guide(g, g).int().tolist()  # nothing beats a perfect positive
    [[0, 0, 0], [0, 0, 0], [0, 0, 0]]
    >>> mask_from_guide(g, g, margin=0.1).int().tolist()  # 0 and 2 are near-duplicates
    [[0, 0, 1], [0, 0, 0], [1, 0, 0]]
    """
    metric = check_metric(metric)
    margin = check_positive_number("margin", margin, allow_zero=True)
    scores = _candidate_scores(guide_query, guide_key, guide_negatives, metric)  # (B, N + M)
    b = scores.shape[0]
    if guide_key.shape[0] < b:
        raise ValueError(
            f"guide_key must have at least as many rows as guide_query (row i is the positive of "
            f"query i), got {guide_key.shape[0]} keys for {b} queries."
        )
    positive = scores[torch.arange(b), torch.arange(b)]  # (B,)
    return _drop_positive(scores > (positive - margin)[:, None])


def stable_text_ids(texts: Sequence[str]) -> Tensor:
    """(N,) int64 ids that are equal exactly for equal texts, the same in every process (a
    64-bit BLAKE2 digest; Python's ``hash`` is salted per process), so duplicate texts can be
    compared across ranks through a gather of ids.

    >>> ids = stable_text_ids(["a", "b", "a"])
    >>> bool(ids[0] == ids[2]), bool(ids[0] == ids[1])
    (True, False)
    """
    import hashlib

    values = [
        int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little", signed=True)
        for t in texts
    ]
    return torch.tensor(values, dtype=torch.long)


def duplicate_mask(
    query_ids: Tensor | Sequence[Tensor],
    key_ids: Tensor | Sequence[Tensor],
    *,
    positive_offset: int = 0,
) -> Tensor:
    """(B, N) bool: candidate j is a false negative of query i when any id column matches.

    Each element of ``query_ids`` / ``key_ids`` is one relation ((B,) local ids and (N,) ids of
    the candidates, e.g. gathered from every rank): a group id, the query text's id, the key
    text's id (:func:`stable_text_ids`). Query i's positive (candidate ``i + positive_offset``)
    is never masked.

    >>> duplicate_mask([torch.tensor([0, 0, 1])], [torch.tensor([0, 0, 1])]).int().tolist()
    [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    """
    qs = [query_ids] if isinstance(query_ids, Tensor) else list(query_ids)
    ks = [key_ids] if isinstance(key_ids, Tensor) else list(key_ids)
    if len(qs) != len(ks) or not qs:
        raise ValueError(
            f"query_ids and key_ids need the same number (>= 1) of id columns, got {len(qs)} "
            f"and {len(ks)}."
        )
    mask = torch.zeros(qs[0].shape[0], ks[0].shape[0], dtype=torch.bool, device=qs[0].device)
    for q, k in zip(qs, ks):
        mask |= q[:, None] == k[None, :]
    rows = torch.arange(mask.shape[0], device=mask.device)
    mask[rows, rows + positive_offset] = False
    return mask
