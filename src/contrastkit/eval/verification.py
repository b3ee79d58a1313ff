"""Verification (same / different identity) and open-set identification, as face recognition
evaluates them: ROC, AUC, EER, TAR at FAR, the LFW 10-fold protocol, rank-1 and DIR at FAR.

Shape notation: N pairs, U distinct embeddings, D embedding dim, G gallery, P probes, F folds.

A pair ``i`` has a score ``scores[i]`` (higher: more alike, e.g. the cosine of two embeddings)
and a label ``same[i]`` (True: same identity, a *genuine* pair; False: different, an *impostor*
pair). A threshold ``t`` **accepts** a pair when ``scores[i] >= t``. Then

* TAR (true accept rate, TPR) = accepted genuine / genuine pairs,
* FAR (false accept rate, FPR) = accepted impostor / impostor pairs, FRR = 1 - TAR.

Conventions (each function says which it uses):

* :func:`roc_curve` is ``sklearn.metrics.roc_curve``: one point per distinct score (accept
  ``>= threshold``), descending thresholds starting at ``+inf`` (the (0, 0) point); with
  ``drop_intermediate=True`` (its default) collinear points are dropped exactly as sklearn
  drops them. Metrics below read the full curve (``drop_intermediate=False``), so that they
  do not depend on which points were dropped.
* **TAR at FAR = f** is the largest TPR over the ROC points whose FPR <= f, with the highest
  threshold that reaches it: an operating point a real threshold attains, never an interpolation (so it is
  conservative). With I impostor pairs, a target f < 1/I allows no false accept at all.
* **EER** is where FRR = FAR on the ROC drawn with straight segments between its points (linear
  interpolation along the segment where FRR - FAR changes sign; what
  ``brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)`` solves). Its threshold is the
  first ROC point's (highest threshold) at which FRR <= FAR.
* **LFW accuracy** (:func:`lfw_accuracy`): for each fold, the threshold that maximises the
  accuracy on the other folds (candidates: reject all, accept all, and the midpoints between
  consecutive distinct scores; ties go to the highest threshold) is applied to that fold; the
  result is the mean and the population standard deviation (``np.std``, as insightface and
  facenet report) of the fold accuracies.
* **Open-set identification** (:func:`open_set_identification`): each probe's best gallery
  match (cosine, rank 1). Rank-1 accuracy is over the *mated* probes (identity enrolled in
  the gallery). DIR at FAR = f (detection and identification rate; FAR here is the false
  positive identification rate, FPIR, over the *non-mated* probes) is the largest share of
  mated probes whose best match is correct and scores ``>= t`` over the thresholds t that
  accept at most a share f of non-mated probes (the TAR at FAR convention above).

Nothing here stores a score matrix: paired scores are computed in chunks of rows
(:func:`indexed_pair_scores` gathers the two sides of 10^6 pairs from U distinct embeddings
chunk by chunk), the ROC is a sort of the N scores, and the gallery search keeps the top match
per probe (:func:`contrastkit.index.exact.chunked_topk`).

>>> scores = torch.tensor([0.9, 0.8, 0.7, 0.4, 0.3, 0.1])
>>> same = torch.tensor([True, True, False, True, False, False])
>>> m = verification_metrics(scores, same, far_targets=(0.5,))
>>> round(m["auc"], 4), round(m["eer"], 4), m["tar@far=0.5"]
(0.8889, 0.3333, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from contrastkit._checks import check_embeddings, check_pair, check_tensor

__all__ = [
    "FAR_TARGETS",
    "LFWResult",
    "OpenSetMetrics",
    "VerificationMetrics",
    "best_threshold",
    "eer",
    "far_key",
    "indexed_pair_scores",
    "lfw_accuracy",
    "open_set_identification",
    "open_set_metrics",
    "paired_cosine_scores",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
    "verification_metrics",
]

FAR_TARGETS = (1e-1, 1e-2, 1e-3, 1e-4)


# -- input checks ---------------------------------------------------------------------------


def _check_labels01(name: str, labels: object, n: int) -> Tensor:
    """(n,) bool or integer 0/1 labels as bool."""
    if not isinstance(labels, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of bools (True: same identity), got "
            f"{type(labels).__name__}."
        )
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},) to match scores, got {tuple(labels.shape)}."
        )
    if labels.dtype == torch.bool:
        return labels
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise TypeError(f"{name} must be bool or integer 0/1, got {labels.dtype}.")
    if n and not ((labels == 0) | (labels == 1)).all():
        bad = labels[(labels != 0) & (labels != 1)][0].item()
        raise ValueError(f"{name} must hold 0/1 (or bools), got the value {bad}.")
    return labels.bool()


def _check_scores(scores: object, same: object, *, both: bool = True) -> tuple[Tensor, Tensor]:
    """float64 scores (N,) and bool labels (N,), with at least one pair of each kind."""
    scores = check_tensor("scores", scores, ndim=1)
    labels = _check_labels01("same", same, scores.shape[0])
    if both:
        genuine = int(labels.sum())
        if genuine == 0 or genuine == labels.shape[0]:
            kind = "different-identity" if genuine else "same-identity"
            raise ValueError(
                f"same holds no {kind} pair ({labels.shape[0]} pairs, {genuine} same); the ROC "
                "needs both kinds: evaluate a pairs file with same and different pairs."
            )
    return scores.detach().double().cpu(), labels.cpu()


def _check_chunk(chunk_size: object) -> int:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1 (e.g. 8192), got {chunk_size!r}.")
    return chunk_size


def _check_fars(far_targets: Sequence[float]) -> tuple[float, ...]:
    fars = tuple(far_targets)
    for far in fars:
        if isinstance(far, bool) or not isinstance(far, (int, float)) or not 0.0 < far <= 1.0:
            raise ValueError(
                f"far_targets must be rates in (0, 1] (e.g. (1e-1, 1e-2, 1e-3)), got {far!r}."
            )
    return fars


def far_key(far: float) -> str:
    """The metric name of a FAR target: ``far_key(1e-3) == "far=0.001"``."""
    return f"far={far:g}"


# -- scores ---------------------------------------------------------------------------------


def paired_cosine_scores(query: Tensor, key: Tensor, *, chunk_size: int = 8192) -> Tensor:
    """Cosine of each row pair, ``out[i] = cos(query[i], key[i])``, ``chunk_size`` rows at a time
    (the normalised copies of both sides are never made whole).

    Args:
        query: (N, D) embeddings.
        key: (N, D) embeddings, row i pairs with ``query[i]``.

    Returns:
        (N,) float32 (float64 for float64 inputs).

    >>> paired_cosine_scores(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    tensor([1.0000, 0.7071])
    """
    check_embeddings("query", query)
    check_embeddings("key", key)
    check_pair("query", query, "key", key)
    chunk_size = _check_chunk(chunk_size)
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    out = torch.empty(query.shape[0], dtype=dtype, device=query.device)  # (N,)
    with torch.no_grad():
        for s in range(0, query.shape[0], chunk_size):
            a = torch.nn.functional.normalize(query[s : s + chunk_size].to(dtype), dim=-1)
            b = torch.nn.functional.normalize(key[s : s + chunk_size].to(dtype), dim=-1)
            out[s : s + chunk_size] = (a * b).sum(-1)  # (chunk,)
    return out


def indexed_pair_scores(
    embeddings: Tensor, index_a: Tensor, index_b: Tensor, *, chunk_size: int = 8192
) -> Tensor:
    """Cosine of pairs of rows of one embedding table: ``out[i] = cos(e[index_a[i]],
    e[index_b[i]])``. A pairs file names each image many times; embed the U distinct images
    once and score the N pairs here, ``chunk_size`` pairs at a time: extra memory is
    O(U D + chunk_size D), never (N, D).

    Args:
        embeddings: (U, D) one row per distinct image.
        index_a: (N,) long row of each pair's first image.
        index_b: (N,) long row of each pair's second image.

    Returns:
        (N,) float32 (float64 for float64 embeddings).

    >>> e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> indexed_pair_scores(e, torch.tensor([0, 0, 2]), torch.tensor([0, 1, 1]), chunk_size=2)
    tensor([1.0000, 0.0000, 0.7071])
    """
    check_embeddings("embeddings", embeddings)
    chunk_size = _check_chunk(chunk_size)
    u = embeddings.shape[0]
    for name, index in (("index_a", index_a), ("index_b", index_b)):
        if not isinstance(index, Tensor) or index.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be a long tensor of embedding rows, got {index!r:.60}.")
        if index.ndim != 1 or index.shape != index_a.shape:
            raise ValueError(
                f"index_a and index_b must both have shape (N,), got {tuple(index_a.shape)} and "
                f"{tuple(index_b.shape)}."
            )
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= u):
            raise ValueError(
                f"{name} must hold rows of embeddings in [0, {u}), got values in "
                f"[{int(index.min())}, {int(index.max())}]."
            )
    dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        table = torch.nn.functional.normalize(embeddings.to(dtype), dim=-1)  # (U, D)
        out = torch.empty(index_a.shape[0], dtype=dtype, device=embeddings.device)  # (N,)
        for s in range(0, index_a.shape[0], chunk_size):
            ia = index_a[s : s + chunk_size].to(embeddings.device)
            ib = index_b[s : s + chunk_size].to(embeddings.device)
            out[s : s + chunk_size] = (table[ia] * table[ib]).sum(-1)  # (chunk,)
    return out


# -- the ROC and its figures ----------------------------------------------------------------


def _binary_clf_curve(scores: Tensor, same: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cumulative false / true positives (long) at each distinct score, descending: accepting
    ``scores >= thresholds[k]`` accepts ``tps[k]`` genuine and ``fps[k]`` impostor pairs."""
    order = torch.sort(scores, descending=True, stable=True).indices  # (N,)
    s = scores[order]  # (N,)
    y = same[order].long()  # (N,)
    last = torch.nonzero(s[1:] != s[:-1]).flatten()  # last position of each distinct value
    idx = torch.cat([last, torch.tensor([s.shape[0] - 1])])  # (T,)
    tps = torch.cumsum(y, 0)[idx]  # (T,)
    fps = idx + 1 - tps  # (T,)
    return fps, tps, s[idx]


def roc_curve(
    scores: Tensor, same: Tensor, *, drop_intermediate: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """The ROC curve, equal to ``sklearn.metrics.roc_curve(same, scores, drop_intermediate=...)``.

    Args:
        scores: (N,) pair scores (higher: more alike).
        same: (N,) bool (or 0/1) labels, True for a same-identity pair; both kinds must occur.
        drop_intermediate: drop the points sklearn drops (collinear ones); False keeps one point
            per distinct score.

    Returns:
        ``(fpr, tpr, thresholds)``, each (T + 1,) float64: thresholds descending from ``+inf``;
        point k accepts the pairs with ``scores >= thresholds[k]``.

    >>> fpr, tpr, thr = roc_curve(torch.tensor([0.9, 0.8, 0.4, 0.1]), torch.tensor([1, 0, 1, 0]))
    >>> fpr.tolist(), tpr.tolist(), thr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0], [inf, 0.9, 0.8, 0.4, 0.1])
    """
    scores, same = _check_scores(scores, same)
    return _roc(scores, same, drop_intermediate)


def _roc(scores: Tensor, same: Tensor, drop_intermediate: bool) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`roc_curve` on checked float64 scores (which may hold -inf) and bool labels."""
    fps, tps, thresholds = _binary_clf_curve(scores, same)
    if drop_intermediate and fps.shape[0] > 2:
        # sklearn: keep the ends and every point where the curve bends
        bend = (torch.diff(fps, n=2) != 0) | (torch.diff(tps, n=2) != 0)  # (T - 2,)
        keep = torch.cat([torch.tensor([True]), bend, torch.tensor([True])]).nonzero().flatten()
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    zero = torch.zeros(1, dtype=torch.long)
    fps, tps = torch.cat([zero, fps]), torch.cat([zero, tps])  # (T + 1,)
    thresholds = torch.cat([torch.tensor([math.inf], dtype=torch.float64), thresholds])
    return fps.double() / fps[-1].double(), tps.double() / tps[-1].double(), thresholds


def roc_auc(fpr: Tensor, tpr: Tensor) -> float:
    """Area under the ROC (trapezoids; ``sklearn.metrics.roc_auc_score`` on the same pairs).

    Args:
        fpr, tpr: (T,) from :func:`roc_curve`.

    >>> roc_auc(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.0, 1.0, 1.0]))
    0.75
    """
    return float(torch.trapezoid(tpr.double(), fpr.double()))


def eer(fpr: Tensor, tpr: Tensor, thresholds: Tensor) -> tuple[float, float]:
    """Equal error rate: where FRR (1 - TPR) equals FAR on the ROC with straight segments.

    Args:
        fpr, tpr, thresholds: (T,) from :func:`roc_curve` (increasing FPR, from (0, 0) to (1, 1)).

    Returns:
        ``(eer, threshold)``: the rate at the crossing (interpolated along the segment where
        FRR - FAR changes sign) and the threshold of that segment's end, the first ROC point
        (highest threshold) with FRR <= FAR.

    >>> eer(torch.tensor([0.0, 0.0, 0.5, 1.0]), torch.tensor([0.0, 0.5, 1.0, 1.0]),
    ...     torch.tensor([math.inf, 0.9, 0.5, 0.1]))
    (0.25, 0.5)
    """
    fpr, tpr = fpr.double(), tpr.double()
    gap = (1.0 - tpr) - fpr  # (T,) FRR - FAR, from 1 down to -1
    i = int(torch.nonzero(gap <= 0)[0])
    if gap[i] == 0 or i == 0:
        rate = float(fpr[i])
    else:
        t = gap[i - 1] / (gap[i - 1] - gap[i])  # where the segment crosses FRR = FAR
        rate = float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))
    return rate, float(thresholds[i])


def tar_at_far(fpr: Tensor, tpr: Tensor, thresholds: Tensor, far: float) -> tuple[float, float]:
    """TAR at FAR = ``far``: the largest TPR among the ROC points with FPR <= ``far`` (no
    interpolation), and the threshold of the first (highest-threshold) point with that TPR.

    Args:
        fpr, tpr, thresholds: (T,) from :func:`roc_curve` (``drop_intermediate=False`` for the
            exact value: sklearn's dropped points can hold it).
        far: target false accept rate in (0, 1].

    >>> fpr, tpr, thr = roc_curve(torch.tensor([0.9, 0.8, 0.4, 0.1]), torch.tensor([1, 0, 1, 0]))
    >>> tar_at_far(fpr, tpr, thr, 0.1), tar_at_far(fpr, tpr, thr, 0.5)
    ((0.5, 0.9), (1.0, 0.4))
    """
    (far,) = _check_fars((far,))
    i = int(torch.searchsorted(fpr.double().contiguous(), far, right=True)) - 1  # fpr[0] == 0
    # the first point reaching that TPR: the highest threshold, the fewest false accepts
    j = int(torch.searchsorted(tpr.double().contiguous(), tpr[i].double(), right=False))
    return float(tpr[i]), float(thresholds[j])


def verification_metrics(
    scores: Tensor,
    same: Tensor,
    *,
    far_targets: Sequence[float] = FAR_TARGETS,
    folds: Tensor | None = None,
) -> dict[str, float]:
    """The verification figures of N scored pairs.

    Args:
        scores: (N,) pair scores; same: (N,) bool labels (see :func:`roc_curve`).
        far_targets: the FARs to report TAR at.
        folds: (N,) fold id of each pair, to add the LFW protocol's ``accuracy`` and
            ``accuracy_std`` (:func:`lfw_accuracy`).

    Returns:
        ``{"auc", "eer", "eer_threshold", "tar@far=<f>", "threshold@far=<f>" for each target,
        "pairs_same", "pairs_different"}`` (+ ``"accuracy"``, ``"accuracy_std"``), floats.
    """
    far_targets = _check_fars(far_targets)
    scores, same = _check_scores(scores, same)
    fpr, tpr, thresholds = roc_curve(scores, same, drop_intermediate=False)
    rate, at = eer(fpr, tpr, thresholds)
    out = {"auc": roc_auc(fpr, tpr), "eer": rate, "eer_threshold": at}
    for far in far_targets:
        tar, threshold = tar_at_far(fpr, tpr, thresholds, far)
        out[f"tar@{far_key(far)}"] = tar
        out[f"threshold@{far_key(far)}"] = threshold
    out["pairs_same"] = float(same.sum())
    out["pairs_different"] = float((~same).sum())
    if folds is not None:
        lfw = lfw_accuracy(scores, same, folds)
        out["accuracy"], out["accuracy_std"] = lfw.mean, lfw.std
    return out


# -- the LFW protocol -----------------------------------------------------------------------


def best_threshold(scores: Tensor, same: Tensor) -> tuple[float, float]:
    """The threshold with the highest accuracy on these pairs (accept ``scores >= t``).

    Candidates: ``+inf`` (reject all), the midpoints between consecutive distinct scores, and
    ``-inf`` (accept all); among equally accurate ones the highest wins.

    Args:
        scores: (N,) pair scores; same: (N,) bool labels.

    Returns:
        ``(threshold, accuracy)``.

    >>> best_threshold(torch.tensor([0.9, 0.7, 0.5, 0.1]), torch.tensor([1, 1, 0, 0]))
    (0.6, 1.0)
    """
    scores, same = _check_scores(scores, same, both=False)
    if scores.shape[0] == 0:
        raise ValueError("scores is empty; the threshold is chosen on at least one pair.")
    fps, tps, thresholds = _binary_clf_curve(scores, same)
    negatives = int((~same).sum())
    # correct decisions when accepting the top k distinct scores, k = 0 (reject all) .. T
    correct = torch.cat([torch.tensor([negatives]), tps + (negatives - fps)])  # (T + 1,)
    k = int(torch.argmax(correct))  # the first maximum: the highest threshold
    if k == 0:
        threshold = math.inf
    elif k == thresholds.shape[0]:
        threshold = -math.inf
    else:
        threshold = float((thresholds[k - 1] + thresholds[k]) / 2)
    return threshold, float(correct[k]) / scores.shape[0]


@dataclass
class LFWResult:
    """The LFW protocol's outcome.

    Attributes:
        mean: mean of the fold accuracies.
        std: their population standard deviation (``np.std``).
        accuracies: (F,) accuracy on each fold, in sorted fold-id order.
        thresholds: (F,) the threshold chosen on the other folds for each fold.
        folds: (F,) the fold ids.
    """

    mean: float
    std: float
    accuracies: Tensor
    thresholds: Tensor
    folds: Tensor


def lfw_accuracy(scores: Tensor, same: Tensor, folds: Tensor) -> LFWResult:
    """The LFW protocol: for each fold, choose the threshold on the other folds
    (:func:`best_threshold`), measure the accuracy on this fold; mean and std over folds.

    Args:
        scores: (N,) pair scores; same: (N,) bool labels.
        folds: (N,) integer fold id of each pair (LFW: 10 folds of 300 same + 300 different
            pairs, :attr:`contrastkit.data.identity.IdentityPairs.folds`); at least 2 folds.

    >>> scores = torch.tensor([0.9, 0.2, 0.8, 0.3, 0.7, 0.6], dtype=torch.float64)
    >>> r = lfw_accuracy(scores, torch.tensor([1, 0, 1, 0, 1, 0]), torch.tensor([0, 0, 1, 1, 2, 2]))
    >>> r.accuracies.tolist(), r.thresholds.tolist(), r.mean
    ([1.0, 1.0, 0.5], [0.65, 0.65, 0.55], 0.8333...)
    """
    scores, same = _check_scores(scores, same, both=False)
    if not isinstance(folds, Tensor) or folds.dtype.is_floating_point or folds.dtype == torch.bool:
        raise TypeError(f"folds must be an integer tensor of fold ids, got {folds!r:.60}.")
    if folds.shape != scores.shape:
        raise ValueError(
            f"folds must have shape {tuple(scores.shape)} (one fold id per pair), got "
            f"{tuple(folds.shape)}."
        )
    folds = folds.cpu()
    ids = torch.unique(folds)  # (F,) sorted
    if ids.shape[0] < 2:
        raise ValueError(
            f"folds holds {ids.shape[0]} fold id(s); the protocol needs at least 2 (LFW: 10): "
            "pass the pairs file's folds."
        )
    accuracies, thresholds = [], []
    for fold in ids.tolist():
        test = folds == fold
        t, _ = best_threshold(scores[~test], same[~test])
        accuracies.append(float(((scores[test] >= t) == same[test]).double().mean()))
        thresholds.append(t)
    acc = torch.tensor(accuracies, dtype=torch.float64)
    return LFWResult(
        float(acc.mean()),
        float(acc.std(correction=0)),
        acc,
        torch.tensor(thresholds, dtype=torch.float64),
        ids,
    )


# -- open-set identification ----------------------------------------------------------------


def open_set_metrics(
    top_scores: Tensor,
    correct: Tensor,
    mated: Tensor,
    *,
    far_targets: Sequence[float] = FAR_TARGETS,
) -> dict[str, float]:
    """Rank-1 and DIR at FAR from each probe's best gallery match.

    Args:
        top_scores: (P,) score of each probe's best match.
        correct: (P,) bool, the best match has the probe's identity.
        mated: (P,) bool, the probe's identity is enrolled in the gallery.
        far_targets: the FPIRs to report DIR at.

    Returns:
        ``{"rank1", "dir@far=<f>", "threshold@far=<f>", "probes_mated", "probes_nonmated"}``;
        ``rank1`` is NaN without mated probes, the DIR figures without non-mated ones.

    >>> open_set_metrics(torch.tensor([0.9, 0.8, 0.5, 0.7]), torch.tensor([1, 0, 1, 0]),
    ...                  torch.tensor([1, 1, 1, 0]), far_targets=(0.5,))["dir@far=0.5"]
    0.3333...
    """
    far_targets = _check_fars(far_targets)
    check_tensor("top_scores", top_scores, ndim=1)
    n = top_scores.shape[0]
    correct = _check_labels01("correct", correct, n).cpu()
    mated = _check_labels01("mated", mated, n).cpu()
    top = top_scores.detach().double().cpu()
    m, nm = int(mated.sum()), int((~mated).sum())
    out = {"rank1": float(correct[mated].double().mean()) if m else math.nan}
    if m and nm:
        # a mated probe counts only when its best match is right: a wrong one is never accepted
        genuine = torch.where(correct[mated], top[mated], torch.full_like(top[mated], -math.inf))
        scores = torch.cat([genuine, top[~mated]])
        labels = torch.cat([torch.ones(m, dtype=torch.bool), torch.zeros(nm, dtype=torch.bool)])
        fpr, tpr, thresholds = _roc(scores, labels, drop_intermediate=False)
    for far in far_targets:
        dir_, threshold = tar_at_far(fpr, tpr, thresholds, far) if m and nm else (math.nan,) * 2
        out[f"dir@{far_key(far)}"], out[f"threshold@{far_key(far)}"] = dir_, threshold
    out["probes_mated"], out["probes_nonmated"] = float(m), float(nm)
    return out


def _gallery_search(
    gallery: Tensor,
    gallery_ids: Tensor,
    probes: Tensor,
    probe_ids: Tensor,
    chunk_size: int,
    query_chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """(top score, correct, mated), each (P,), of each probe's best gallery match."""
    from contrastkit.index.exact import chunked_topk

    check_embeddings("gallery", gallery)
    check_embeddings("probes", probes)
    check_pair("gallery", gallery, "probes", probes, same_rows=False)
    for name, ids, n in (("gallery_ids", gallery_ids, gallery.shape[0]),
                         ("probe_ids", probe_ids, probes.shape[0])):  # fmt: skip
        if not isinstance(ids, Tensor) or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor of identities, got {ids!r:.60}.")
        if ids.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(ids.shape)}.")
    if gallery.shape[0] == 0:
        raise ValueError("gallery is empty; enrol at least one identity.")
    scores, index = chunked_topk(
        probes,
        gallery,
        1,
        metric="cosine",
        chunk_size=chunk_size,
        query_chunk_size=query_chunk_size,
    )  # (P, 1) each
    best = gallery_ids.cpu()[index[:, 0].cpu()]  # (P,)
    probe_ids = probe_ids.cpu()
    mated = torch.isin(probe_ids, gallery_ids.cpu())
    return scores[:, 0].detach().cpu(), best == probe_ids, mated


def open_set_identification(
    gallery: Tensor,
    gallery_ids: Tensor,
    probes: Tensor,
    probe_ids: Tensor,
    *,
    far_targets: Sequence[float] = FAR_TARGETS,
    chunk_size: int = 16384,
    query_chunk_size: int = 1024,
) -> dict[str, float]:
    """Open-set identification of probes against an enrolled gallery (cosine, rank 1).

    Args:
        gallery: (G, D) enrolled embeddings (an identity may have several).
        gallery_ids: (G,) integer identity of each.
        probes: (P, D) probe embeddings.
        probe_ids: (P,) integer identity of each; a probe whose identity is not in
            ``gallery_ids`` is non-mated (an impostor to reject).
        far_targets: the FPIRs to report DIR at (see :func:`open_set_metrics`).
        chunk_size, query_chunk_size: gallery rows and probe rows scored at once: extra memory
            is one (query_chunk_size, chunk_size) block, never (P, G).

    >>> g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> p = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.7]])
    >>> m = open_set_identification(g, torch.tensor([0, 1]), p, torch.tensor([0, 1, 5]), far_targets=(0.5,))
    >>> m["rank1"], m["dir@far=0.5"], m["probes_nonmated"]
    (1.0, 1.0, 1.0)
    """
    top, correct, mated = _gallery_search(
        gallery, gallery_ids, probes, probe_ids, _check_chunk(chunk_size), query_chunk_size
    )
    return open_set_metrics(top, correct, mated, far_targets=far_targets)


# -- stateful ---------------------------------------------------------------------------------


class VerificationMetrics:
    """Accumulate scored pairs over batches; ``compute()`` gives :func:`verification_metrics`.

    The exact ROC needs every score, so the state is the scores themselves (float32, plus the
    label and fold: 13 bytes a pair, 13 MB for 10^6 pairs), never the embeddings.

    Args:
        far_targets: the FARs to report TAR at.

    >>> m = VerificationMetrics(far_targets=(0.5,))
    >>> m.update(torch.tensor([0.9, 0.2]), torch.tensor([1, 0]), folds=torch.tensor([0, 0]))
    >>> m.update(torch.tensor([0.8, 0.3]), torch.tensor([1, 0]), folds=torch.tensor([1, 1]))
    >>> out = m.compute()
    >>> out["auc"], out["eer"], out["accuracy"]
    (1.0, 0.0, 1.0)
    """

    def __init__(self, far_targets: Sequence[float] = FAR_TARGETS) -> None:
        self.far_targets = _check_fars(far_targets)
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self._scores: list[Tensor] = []
        self._same: list[Tensor] = []
        self._folds: list[Tensor] = []
        self._without_folds = 0

    def update(self, scores: Tensor, same: Tensor, *, folds: Tensor | None = None) -> None:
        """Add ``scores: (B,)`` with labels ``same: (B,)`` (and fold ids ``folds: (B,)``);
        :func:`paired_cosine_scores` turns two embedding batches into scores."""
        check_tensor("scores", scores, ndim=1)
        labels = _check_labels01("same", same, scores.shape[0])
        self._scores.append(scores.detach().float().cpu())
        self._same.append(labels.cpu())
        if folds is None:
            self._without_folds += 1
        else:
            if folds.shape != scores.shape:
                raise ValueError(
                    f"folds must have shape {tuple(scores.shape)}, got {tuple(folds.shape)}."
                )
            self._folds.append(folds.detach().cpu().long())

    def compute(self) -> dict[str, float]:
        """:func:`verification_metrics` of every pair seen since the last reset (with the LFW
        accuracy when every update gave folds)."""
        if not self._scores:
            raise ValueError("compute() before any update(); add scored pairs first.")
        folds = None
        if self._folds and not self._without_folds:
            folds = torch.cat(self._folds)
        return verification_metrics(
            torch.cat(self._scores),
            torch.cat(self._same),
            far_targets=self.far_targets,
            folds=folds,
        )


class OpenSetMetrics:
    """Stream probes against a fixed gallery; ``compute()`` gives :func:`open_set_metrics`.

    The state is three numbers per probe (best score, correct, mated), never the probes.

    Args:
        gallery: (G, D) enrolled embeddings; gallery_ids: (G,) their identities.
        far_targets, chunk_size, query_chunk_size: as :func:`open_set_identification`.

    >>> m = OpenSetMetrics(torch.eye(2), torch.tensor([3, 4]), far_targets=(1.0,))
    >>> m.update(torch.tensor([[1.0, 0.2], [0.5, 0.5]]), torch.tensor([3, 9]))
    >>> m.compute()["rank1"]
    1.0
    """

    def __init__(
        self,
        gallery: Tensor,
        gallery_ids: Tensor,
        *,
        far_targets: Sequence[float] = FAR_TARGETS,
        chunk_size: int = 16384,
        query_chunk_size: int = 1024,
    ) -> None:
        check_embeddings("gallery", gallery)
        self.gallery, self.gallery_ids = gallery, gallery_ids
        self.far_targets = _check_fars(far_targets)
        self.chunk_size = _check_chunk(chunk_size)
        self.query_chunk_size = query_chunk_size
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self._parts: list[tuple[Tensor, Tensor, Tensor]] = []

    def update(self, probes: Tensor, probe_ids: Tensor) -> None:
        """Search ``probes: (B, D)`` with identities ``probe_ids: (B,)``."""
        self._parts.append(
            _gallery_search(
                self.gallery,
                self.gallery_ids,
                probes,
                probe_ids,
                self.chunk_size,
                self.query_chunk_size,
            )
        )

    def compute(self) -> dict[str, float]:
        """:func:`open_set_metrics` over every probe seen since the last reset."""
        if not self._parts:
            raise ValueError("compute() before any update(); search some probes first.")
        top, correct, mated = (torch.cat(p) for p in zip(*self._parts))
        return open_set_metrics(top, correct, mated, far_targets=self.far_targets)
