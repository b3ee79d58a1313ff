"""Pure tensor math: similarities and losses, no state.

Shape notation: B batch, V views, D embedding dim, M extra negatives, N corpus, Q queries,
K neighbours. ``*_matrix`` returns all pairs, ``paired_*`` row-wise.
"""

from contrastkit.functional.contrastive import (
    info_nce,
    nt_xent,
    sigmoid_contrastive,
    supervised_contrastive,
)
from contrastkit.functional.margin import (
    contrastive_margin,
    margin_ranking,
    preference_loss,
    triplet_loss,
    triplet_margin,
)
from contrastkit.functional.similarity import (
    METRICS,
    normalize,
    paired_similarity,
    similarity_matrix,
)

__all__ = [
    "METRICS",
    "contrastive_margin",
    "info_nce",
    "margin_ranking",
    "normalize",
    "nt_xent",
    "paired_similarity",
    "preference_loss",
    "sigmoid_contrastive",
    "similarity_matrix",
    "supervised_contrastive",
    "triplet_loss",
    "triplet_margin",
]
