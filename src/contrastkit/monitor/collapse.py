"""``CollapseMonitor``: every embedding-health statistic, thresholds, history and clear alerts."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from contrastkit._checks import check_embeddings, check_pair
from contrastkit.monitor.streaming import (
    Alignment,
    EffectiveRank,
    EmbeddingStd,
    SimilarityGap,
    Uniformity,
)

__all__ = ["CollapseAlert", "CollapseMonitor", "CollapseWarning", "HealthReport"]


class CollapseWarning(UserWarning):
    """Issued by :class:`CollapseMonitor` when a statistic leaves its healthy range."""


@dataclass(frozen=True)
class CollapseAlert:
    """One statistic out of its healthy range: what, the value, the range, what to do."""

    metric: str
    value: float
    healthy: str
    what: str
    fix: str

    def __str__(self) -> str:
        return (
            f"{self.what}: {self.metric} = {self.value:.4g} (healthy: {self.healthy}). {self.fix}"
        )


@dataclass
class HealthReport:
    """The statistics of one ``compute`` call and the alerts they raised."""

    step: int | None
    values: dict[str, float]
    alerts: list[CollapseAlert] = field(default_factory=list)
    # ``edges`` (bins + 1,), ``positive`` and ``negative`` counts (bins,); empty without pairs
    histograms: dict[str, Tensor] = field(default_factory=dict)

    @property
    def collapsed(self) -> bool:
        return bool(self.alerts)

    def __str__(self) -> str:
        head = f"step {self.step}: " if self.step is not None else ""
        body = ", ".join(f"{k}={v:.4g}" for k, v in self.values.items())
        status = "; ".join(a.metric for a in self.alerts) if self.alerts else "healthy"
        return f"{head}{body} [{status}]"


_FIX_POINT = (
    "Check the collapse guard of the objective (SimSiam/BYOL: stop-gradient and predictor; "
    "VICReg: variance weight; DINO: centering and teacher temperature; SwAV: Sinkhorn codes), "
    "lower the learning rate, and check that the two views of a pair are related."
)
_FIX_RANK = (
    "Strengthen decorrelation (Barlow Twins redundancy_weight, VICReg "
    "covariance_weight), widen the projector, use stronger augmentations, lower the weight decay."
)
_FIX_UNIFORMITY = (
    "Spread the embeddings: more or harder negatives or a lower temperature (contrastive losses), "
    "a stronger variance/decorrelation term (VICReg, Barlow Twins); check the normalisation."
)
_FIX_GAP = (
    "Positives are no closer than negatives: check that the pairs really match (labels, "
    "augmentations too strong), that the loss is decreasing, and the learning rate."
)


class CollapseMonitor:
    """Streams every embedding-health statistic, keeps their history and alerts on collapse.

    Call :meth:`update` every few steps with the embeddings (under ``no_grad``, float64
    accumulators, O(D^2) memory) and :meth:`compute` when you want a reading: it reduces the
    statistics across ranks (under ``torch.distributed``), appends a :class:`HealthReport` to
    :attr:`history`, issues one :class:`CollapseWarning` per statistic out of range and starts a
    new window.

    Statistics (``HealthReport.values``) and their alert thresholds:

    | value                 | healthy                        | alert when                      |
    |-----------------------|--------------------------------|---------------------------------|
    | ``std_ratio``         | about 1 (std about 1/sqrt(D))  | ``< min_std_ratio`` (0.2)       |
    | ``rank_fraction``     | a sizeable fraction of 1       | ``< min_rank_fraction`` (0.1),  |
    |                       |                                | or effective rank < 1.5         |
    | ``uniformity``        | <= -1.6                        | ``> max_uniformity`` (-1.0)     |
    | ``negative_similarity`` | well below 1                 | ``> max_negative_similarity`` (0.9) |
    | ``similarity_gap``    | clearly > 0                    | ``< min_similarity_gap`` (0.05) |
    | ``rank_vs_best``      | near 1 (rank / best in history)| ``< min_rank_vs_best`` (0.3)    |

    ``effective_rank`` (RankMe), ``alignment`` and ``positive_similarity`` are reported without a
    threshold. Statistics of the embedding distribution use ``query``; the pair statistics need
    ``key``. Set a threshold to ``None`` to disable its alert.

    Args:
        min_std_ratio: alert when mean per-dim std of normalised embeddings * sqrt(D) is below.
        min_rank_fraction: alert when RankMe / min(N, D) is below.
        max_uniformity: alert when uniformity (t = 2) is above.
        max_negative_similarity: alert when the mean negative cosine is above.
        min_similarity_gap: alert when positive minus negative mean cosine is below.
        min_rank_vs_best: alert when the effective rank falls below this fraction of the best one
            in :attr:`history` (dimensional collapse that stays above ``min_rank_fraction``;
            take a first reading before training starts).
        bins: histogram bins on [-1, 1].
        warn: issue ``warnings.warn`` for alerts (they are always in the report).
        process_group: the group to reduce over; default the world when distributed.

    >>> monitor = CollapseMonitor()
    >>> monitor.update(torch.ones(16, 8), torch.ones(16, 8))  # every input mapped to one point
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     report = monitor.compute(step=0)
    >>> [a.metric for a in report.alerts]
    ['std_ratio', 'rank_fraction', 'uniformity', 'negative_similarity', 'similarity_gap']
    >>> print(report.alerts[0])  # doctest: +ELLIPSIS
    complete collapse: ... std_ratio = 0 (healthy: about 1 ...
    """

    def __init__(
        self,
        *,
        min_std_ratio: float | None = 0.2,
        min_rank_fraction: float | None = 0.1,
        max_uniformity: float | None = -1.0,
        max_negative_similarity: float | None = 0.9,
        min_similarity_gap: float | None = 0.05,
        min_rank_vs_best: float | None = 0.3,
        bins: int = 40,
        warn: bool = True,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        self.min_std_ratio = min_std_ratio
        self.min_rank_fraction = min_rank_fraction
        self.max_uniformity = max_uniformity
        self.max_negative_similarity = max_negative_similarity
        self.min_similarity_gap = min_similarity_gap
        self.min_rank_vs_best = min_rank_vs_best
        self.warn = bool(warn)
        self.process_group = process_group
        self.std = EmbeddingStd()
        self.rank = EffectiveRank()
        self.uniformity = Uniformity()
        self.alignment = Alignment()
        self.similarity = SimilarityGap(bins=bins)
        self.history: list[HealthReport] = []

    def _statistics(self) -> list:
        return [self.std, self.rank, self.uniformity, self.alignment, self.similarity]

    @torch.no_grad()
    def update(self, query: Tensor, key: Tensor | None = None) -> None:
        """Add a batch. query: (B, D) embeddings, B >= 2; key: optional (B, D) positives."""
        check_embeddings("query", query)
        if query.shape[0] < 2:
            raise ValueError(f"query needs at least 2 rows, got shape {tuple(query.shape)}.")
        self.std.update(query)
        self.rank.update(query)
        self.uniformity.update(query)
        if key is not None:
            check_embeddings("key", key)
            check_pair("query", query, "key", key)
            self.alignment.update(query, key)
            self.similarity.update(query, key)

    def reset(self) -> None:
        """Start a new window (history is kept)."""
        for s in self._statistics():
            s.reset()

    @torch.no_grad()
    def compute(self, step: int | None = None, *, reset: bool = True) -> HealthReport:
        """Reduce over ranks, evaluate, record in :attr:`history`, warn, and (by default) reset.

        In a distributed run every rank must call it (it all-reduces) after at least one
        ``update``; every rank gets the same report. With ``reset=False`` the window goes on
        (the local statistics are kept, the reduction is not applied twice).
        """
        if self.std.count == 0:
            raise RuntimeError(
                "CollapseMonitor.compute() before any update(); feed it embeddings first."
            )
        has_pairs = self.similarity.count > 0
        # Every rank must pass key or not, consistently: the all-reduces have to match.
        synced = self._statistics() if has_pairs else [self.std, self.rank, self.uniformity]
        # sync() sums in place; keep the local window to continue it when reset=False
        local = None if reset else [dict(s._states) for s in synced]
        for statistic in synced:
            if local is not None:
                statistic._states = {n: t.clone() for n, t in statistic._states.items()}
            statistic.sync(self.process_group)
        dim = int(self.std.compute().shape[0])
        values: dict[str, float] = {
            "std_ratio": self.std.ratio(),
            "effective_rank": float(self.rank.compute()),
            "rank_fraction": self.rank.fraction(),
            "uniformity": float(self.uniformity.compute()),
        }
        best = max((r.values["effective_rank"] for r in self.history), default=None)
        if best:
            values["rank_vs_best"] = values["effective_rank"] / best
        if has_pairs:
            values["alignment"] = float(self.alignment.compute())
            values["positive_similarity"] = self.similarity.positive()
            values["negative_similarity"] = self.similarity.negative()
            values["similarity_gap"] = values["positive_similarity"] - values["negative_similarity"]
        histograms = self.similarity.histograms() if has_pairs else {}
        report = HealthReport(step, values, self._alerts(values, dim), histograms)
        self.history.append(report)
        if self.warn:
            for alert in report.alerts:
                prefix = f"step {step}: " if step is not None else ""
                warnings.warn(f"{prefix}{alert}", CollapseWarning, stacklevel=2)
        if local is None:
            self.reset()
        else:
            for statistic, states in zip(synced, local):
                statistic._states = states
        return report

    def _alerts(self, values: dict[str, float], dim: int) -> list[CollapseAlert]:
        alerts = []
        v = values
        if self.min_std_ratio is not None and v["std_ratio"] < self.min_std_ratio:
            alerts.append(
                CollapseAlert(
                    "std_ratio",
                    v["std_ratio"],
                    f"about 1 (per-dim std of normalised embeddings about 1/sqrt(D) = "
                    f"{1 / math.sqrt(dim):.3g}), alert below {self.min_std_ratio}",
                    "complete collapse: the embeddings are (nearly) one point",
                    _FIX_POINT,
                )
            )
        # An effective rank near 1 is a point or a line whatever D is (the fraction alone would
        # miss it for small D).
        low_rank = v["rank_fraction"] < self.min_rank_fraction if self.min_rank_fraction else False
        if self.min_rank_fraction is not None and dim >= 2 and v["effective_rank"] < 1.5:
            low_rank = True
        if low_rank:
            alerts.append(
                CollapseAlert(
                    "rank_fraction",
                    v["rank_fraction"],
                    f"a sizeable fraction of min(N, D) (effective rank {v['effective_rank']:.3g} "
                    f"of D = {dim}), alert below {self.min_rank_fraction}",
                    "dimensional collapse: the embeddings span only a few directions",
                    _FIX_RANK,
                )
            )
        if self.max_uniformity is not None and v["uniformity"] > self.max_uniformity:
            alerts.append(
                CollapseAlert(
                    "uniformity",
                    v["uniformity"],
                    f"<= -1.6 (uniform on a circle; about -4 in high dimension), alert above "
                    f"{self.max_uniformity}",
                    "the embeddings crowd into a small cap of the sphere",
                    _FIX_UNIFORMITY,
                )
            )
        if (
            self.min_rank_vs_best is not None
            and "rank_vs_best" in v
            and v["rank_vs_best"] < self.min_rank_vs_best
        ):
            alerts.append(
                CollapseAlert(
                    "rank_vs_best",
                    v["rank_vs_best"],
                    f"near 1 (effective rank {v['effective_rank']:.3g} against the best "
                    f"{v['effective_rank'] / v['rank_vs_best']:.3g} in this run), alert below "
                    f"{self.min_rank_vs_best}",
                    "dimensional collapse in progress: the effective rank keeps falling",
                    _FIX_RANK,
                )
            )
        if "negative_similarity" in v:
            if (
                self.max_negative_similarity is not None
                and v["negative_similarity"] > self.max_negative_similarity
            ):
                alerts.append(
                    CollapseAlert(
                        "negative_similarity",
                        v["negative_similarity"],
                        f"well below 1, alert above {self.max_negative_similarity}",
                        "unrelated inputs look alike",
                        _FIX_POINT,
                    )
                )
            if (
                self.min_similarity_gap is not None
                and v["similarity_gap"] < self.min_similarity_gap
            ):
                alerts.append(
                    CollapseAlert(
                        "similarity_gap",
                        v["similarity_gap"],
                        f"clearly > 0, alert below {self.min_similarity_gap}",
                        "positives are no more similar than negatives",
                        _FIX_GAP,
                    )
                )
        return alerts
