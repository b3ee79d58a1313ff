"""Streaming embedding-health statistics: ``update`` per batch, ``compute`` when needed.

Each class accumulates float64 sufficient statistics (sums, second moments, counts, histogram
counts), never a list of embeddings, so memory is O(D^2) at most and ``compute`` after many
``update`` calls equals the one-shot function of :mod:`contrastkit.monitor.functional` on the
concatenated rows (exactly for alignment, std, rank and mean similarities; for uniformity and the
similarity histograms the pairs are the within-batch pairs, as in training).

Under ``torch.distributed`` call :meth:`StreamingStatistic.sync` (the
:class:`~contrastkit.monitor.CollapseMonitor` does it in ``compute``): every state is
``all_reduce``-summed, so the result equals one process seeing every rank's batches.

>>> meter = EmbeddingStd()
>>> for chunk in torch.eye(4).repeat(2, 1).chunk(4):
...     meter.update(chunk)
>>> meter.compute()
tensor([0.4330, 0.4330, 0.4330, 0.4330], dtype=torch.float64)
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from contrastkit._checks import check_embeddings, check_pair, check_positive_number
from contrastkit.functional.similarity import normalize
from contrastkit.monitor.functional import spectral_effective_rank

__all__ = [
    "Alignment",
    "EffectiveRank",
    "EmbeddingStd",
    "SimilarityGap",
    "StreamingStatistic",
    "Uniformity",
]


class StreamingStatistic:
    """Base: named float64 states, summed over batches and (after :meth:`sync`) over ranks."""

    def __init__(self) -> None:
        self._states: dict[str, Tensor] = {}

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._states = {}

    @property
    def count(self) -> int:
        """Rows (or pairs) seen so far."""
        return int(self._states["count"]) if "count" in self._states else 0

    def _add(self, name: str, value: Tensor) -> None:
        value = value.detach().to(torch.float64)
        if name in self._states:
            self._states[name] += value
        else:
            self._states[name] = value.clone()

    def _require(self, minimum: int = 1) -> None:
        if self.count < minimum:
            raise RuntimeError(
                f"{type(self).__name__} has seen {self.count} rows/pairs but needs {minimum}; "
                "call update() with embeddings before compute()."
            )

    def sync(self, process_group: dist.ProcessGroup | None = None) -> None:
        """Sum every state over the ranks of ``process_group`` (no-op outside distributed).

        In place: call it once per window, right before ``compute``, then ``reset`` (a second
        call would add the other ranks again). Every rank must have called ``update`` at least
        once with the same D. :class:`~contrastkit.monitor.CollapseMonitor` handles this.
        """
        from contrastkit.collectives import all_reduce_

        for name in sorted(self._states):
            all_reduce_(self._states[name], "sum", group=process_group)


class Alignment(StreamingStatistic):
    """Streaming :func:`~contrastkit.monitor.functional.alignment` (Wang & Isola 2020).

    Healthy: small and decreasing during training (e.g. below 1 for alpha = 2) **while**
    uniformity stays low; alone it cannot tell alignment from collapse (both give 0). High values
    (near 2 for alpha = 2) mean positives are unrelated: augmentations too strong or no learning.
    """

    def __init__(self, alpha: float = 2.0) -> None:
        super().__init__()
        self.alpha = check_positive_number("alpha", alpha)

    @torch.no_grad()
    def update(self, query: Tensor, key: Tensor) -> None:
        """query, key: (B, D) positive pairs."""
        check_embeddings("query", query)
        check_embeddings("key", key)
        check_pair("query", query, "key", key)
        dist_ = (normalize(query.to(torch.float64)) - normalize(key.to(torch.float64))).norm(dim=-1)
        self._add("total", dist_.pow(self.alpha).sum())
        self._add("count", torch.tensor(float(query.shape[0]), device=query.device))

    def compute(self) -> Tensor:
        self._require()
        return self._states["total"] / self._states["count"]


class Uniformity(StreamingStatistic):
    """Streaming :func:`~contrastkit.monitor.functional.uniformity` over within-batch pairs.

    Healthy: -1.6 or lower (uniform on a circle is -1.6, on the 2-sphere -2.08, in high dimension
    about -4 at t = 2). Near 0: the embeddings occupy a small cap of the sphere or a single point.
    Fix: more/harder negatives or a lower temperature (contrastive losses); a stronger variance or
    decorrelation term (VICReg/Barlow Twins); check the normalisation layer.
    """

    def __init__(self, t: float = 2.0) -> None:
        super().__init__()
        self.t = check_positive_number("t", t)

    @torch.no_grad()
    def update(self, embeddings: Tensor) -> None:
        """embeddings: (B, D); pairs are taken within this batch (a 1-row batch adds none)."""
        check_embeddings("embeddings", embeddings)
        b = embeddings.shape[0]
        x = normalize(embeddings.to(torch.float64))
        sq_dist = (2.0 - 2.0 * x @ x.T).clamp_min(0.0)  # (B, B), symmetric
        potential = torch.exp(-self.t * sq_dist)
        # pairs i < j: half of the off-diagonal sum (the diagonal is exactly exp(0) = 1 per row)
        self._add("total", (potential.sum() - torch.diagonal(potential).sum()) / 2)
        self._add("count", torch.tensor(b * (b - 1) / 2, dtype=torch.float64, device=x.device))

    def compute(self) -> Tensor:
        self._require()
        return torch.log(self._states["total"] / self._states["count"])


class EffectiveRank(StreamingStatistic):
    """Streaming RankMe (Garrido et al. 2023) from the (D, D) second-moment matrix.

    The singular values of the stacked (N, D) embeddings are the square roots of the
    eigenvalues of ``Z^T Z``, which is a sum over batches: the streamed value is exact.
    ``centered=True`` uses ``Z^T Z - N mu mu^T`` (the covariance) instead.

    Healthy: a sizeable fraction of ``min(N, D)`` (:meth:`fraction`; the monitor alerts below
    0.1). Low: dimensional collapse, the embeddings live in a few directions. Fix: decorrelation
    (Barlow Twins' redundancy weight, VICReg's covariance weight), a wider projector, stronger
    augmentations, a lower learning rate or weight decay.
    """

    def __init__(self, centered: bool = False) -> None:
        super().__init__()
        self.centered = bool(centered)

    @torch.no_grad()
    def update(self, embeddings: Tensor) -> None:
        """embeddings: (B, D) raw embeddings."""
        check_embeddings("embeddings", embeddings)
        x = embeddings.to(torch.float64)
        self._add("gram", x.T @ x)  # (D, D)
        self._add("total", x.sum(dim=0))  # (D,)
        self._add("count", torch.tensor(float(x.shape[0]), device=x.device))

    def singular_values(self) -> Tensor:
        """(D,) singular values of the stacked embeddings (centred if ``centered``), descending."""
        self._require()
        gram = self._states["gram"]
        if self.centered:
            mean = self._states["total"] / self._states["count"]
            gram = gram - self._states["count"] * torch.outer(mean, mean)
        eigenvalues = torch.linalg.eigvalsh(gram).clamp_min(0.0)  # ascending
        return eigenvalues.sqrt().flip(0)

    def compute(self) -> Tensor:
        return spectral_effective_rank(self.singular_values())

    def fraction(self) -> float:
        """Effective rank over ``min(N, D)``, in [0, 1]."""
        d = self._states["gram"].shape[0] if self._states else 1
        return float(self.compute()) / max(1, min(self.count, d))


class EmbeddingStd(StreamingStatistic):
    """Streaming :func:`~contrastkit.monitor.functional.embedding_std` (per dimension, (D,)).

    Healthy: about ``1/sqrt(D)`` in every dimension (:meth:`ratio`, the mean std times
    ``sqrt(D)``, near 1; the monitor alerts below 0.2). Near 0: complete collapse, every input
    maps to the same direction. Fix (SimSiam/BYOL): check the stop-gradient and the predictor, a
    lower learning rate for the predictor is not the cure; (VICReg) raise the variance weight;
    generally lower the learning rate, check that the augmentations keep the two views related.
    """

    @torch.no_grad()
    def update(self, embeddings: Tensor) -> None:
        """embeddings: (B, D); normalised here."""
        check_embeddings("embeddings", embeddings)
        x = normalize(embeddings.to(torch.float64))
        self._add("total", x.sum(dim=0))
        self._add("squares", x.pow(2).sum(dim=0))
        self._add("count", torch.tensor(float(x.shape[0]), device=x.device))

    def compute(self) -> Tensor:
        """(D,) population std of each dimension of the normalised embeddings."""
        self._require()
        n = self._states["count"]
        mean = self._states["total"] / n
        return (self._states["squares"] / n - mean.pow(2)).clamp_min(0.0).sqrt()

    def ratio(self) -> float:
        """Mean std times sqrt(D): about 1 healthy, 0 collapsed."""
        std = self.compute()
        return float(std.mean()) * math.sqrt(std.shape[0])


class SimilarityGap(StreamingStatistic):
    """Streaming mean positive vs negative cosine similarity, gap and histograms.

    ``positive`` averages ``cos(q_i, k_i)``; ``negative`` averages ``cos(q_i, k_j)`` over *all*
    pairs ``i != j`` seen so far (across batches and ranks, exact, from the summed normalised
    vectors); histograms use fixed bins on [-1, 1] and the within-batch negatives.

    Healthy: ``gap`` clearly positive (the monitor alerts below 0.05) and ``negative`` well below
    1 (alert above 0.9). Both near 1: collapse. Gap near 0 with low similarities: the encoder does
    not learn the invariance (check the pairs/augmentations, the learning rate).
    """

    def __init__(self, bins: int = 40) -> None:
        super().__init__()
        if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
            raise ValueError(f"bins must be an int >= 1, got {bins!r}.")
        self.bins = bins

    def _histogram(self, values: Tensor) -> Tensor:
        index = ((values.clamp(-1.0, 1.0) + 1.0) / 2.0 * self.bins).long().clamp_max(self.bins - 1)
        return torch.bincount(index, minlength=self.bins).to(torch.float64)

    @torch.no_grad()
    def update(self, query: Tensor, key: Tensor) -> None:
        """query, key: (B, D) positive pairs (negatives also pair rows of different batches)."""
        check_embeddings("query", query)
        check_embeddings("key", key)
        check_pair("query", query, "key", key)
        b = query.shape[0]
        q = normalize(query.to(torch.float64))
        k = normalize(key.to(torch.float64))
        sim = q @ k.T  # (B, B)
        positive = torch.diagonal(sim)  # (B,)
        self._add("positive_total", positive.sum())
        self._add("query_total", q.sum(dim=0))  # (D,)
        self._add("key_total", k.sum(dim=0))  # (D,)
        self._add("count", torch.tensor(float(b), device=q.device))
        positive_histogram = self._histogram(positive)
        self._add("positive_histogram", positive_histogram)
        # negatives: every entry minus the diagonal, without materialising the off-diagonal
        self._add("negative_histogram", self._histogram(sim.reshape(-1)) - positive_histogram)

    def positive(self) -> float:
        self._require()
        return float(self._states["positive_total"] / self._states["count"])

    def negative(self) -> float:
        self._require(2)
        n = self._states["count"]
        all_pairs = self._states["query_total"] @ self._states["key_total"]  # sum_i sum_j cos
        return float((all_pairs - self._states["positive_total"]) / (n * (n - 1)))

    def compute(self) -> Tensor:
        """The gap ``positive - negative``."""
        return torch.tensor(self.positive() - self.negative(), dtype=torch.float64)

    def histograms(self) -> dict[str, Tensor]:
        """``edges`` (bins + 1,) and the ``positive`` / ``negative`` counts (bins,)."""
        self._require()
        return {
            "edges": torch.linspace(
                -1.0, 1.0, self.bins + 1, dtype=torch.float64, device=self._states["count"].device
            ),
            "positive": self._states["positive_histogram"].clone(),
            "negative": self._states["negative_histogram"].clone(),
        }
