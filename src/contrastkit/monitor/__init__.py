"""Embedding-health monitors: catch collapse during training (no_grad, streaming, distributed).

Pure one-batch functions live in :mod:`contrastkit.monitor.functional`, their streaming versions
in :mod:`contrastkit.monitor.streaming`, and :class:`CollapseMonitor` combines them with
thresholds, history and warnings. See ``docs/monitor.md``.
"""

from contrastkit.monitor.collapse import (
    CollapseAlert,
    CollapseMonitor,
    CollapseWarning,
    HealthReport,
)
from contrastkit.monitor.functional import (
    SimilarityStats,
    alignment,
    effective_rank,
    embedding_std,
    similarity_stats,
    spectral_effective_rank,
    uniformity,
)
from contrastkit.monitor.streaming import (
    Alignment,
    EffectiveRank,
    EmbeddingStd,
    SimilarityGap,
    StreamingStatistic,
    Uniformity,
)

__all__ = [
    "Alignment",
    "CollapseAlert",
    "CollapseMonitor",
    "CollapseWarning",
    "EffectiveRank",
    "EmbeddingStd",
    "HealthReport",
    "SimilarityGap",
    "SimilarityStats",
    "StreamingStatistic",
    "Uniformity",
    "alignment",
    "effective_rank",
    "embedding_std",
    "similarity_stats",
    "spectral_effective_rank",
    "uniformity",
]
