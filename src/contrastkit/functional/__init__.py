"""Pure tensor math: similarities and losses, no state.

Shape notation: B batch, V views, D embedding dim, M extra negatives, N corpus, Q queries,
K neighbours. ``*_matrix`` returns all pairs, ``paired_*`` row-wise.
"""

from contrastkit.functional.contrastive import (
    KeyRoles,
    info_nce,
    nt_xent,
    sigmoid_contrastive,
    supervised_contrastive,
)
from contrastkit.functional.engine import tiling
from contrastkit.functional.fused import fused_kernels
from contrastkit.functional.margin import (
    contrastive_margin,
    margin_ranking,
    preference_loss,
    triplet_loss,
    triplet_margin,
)
from contrastkit.functional.noncontrastive import (
    barlow_twins_loss,
    byol_loss,
    dino_loss,
    simsiam_loss,
    sinkhorn_knopp,
    swav_loss,
    vicreg_loss,
)
from contrastkit.functional.similarity import (
    METRICS,
    normalize,
    paired_similarity,
    similarity_matrix,
)

__all__ = [
    "METRICS",
    "KeyRoles",
    "barlow_twins_loss",
    "byol_loss",
    "contrastive_margin",
    "dino_loss",
    "fused_kernels",
    "info_nce",
    "margin_ranking",
    "normalize",
    "nt_xent",
    "paired_similarity",
    "preference_loss",
    "sigmoid_contrastive",
    "similarity_matrix",
    "simsiam_loss",
    "sinkhorn_knopp",
    "supervised_contrastive",
    "swav_loss",
    "tiling",
    "triplet_loss",
    "triplet_margin",
    "vicreg_loss",
]
