"""contrastkit: contrastive objectives that stay correct at scale.

The data path: data -> views/pairs -> encoder -> embeddings -> similarity -> loss, with evaluation,
monitoring and the index as side paths, and the trainer and CLI on top.

Shape notation used throughout: B batch, V views, D embedding dim, M extra negatives, N corpus,
Q queries, K neighbours.
"""

from contrastkit.encoders.saved import load_encoder
from contrastkit.functional import (
    contrastive_margin,
    info_nce,
    margin_ranking,
    nt_xent,
    paired_similarity,
    preference_loss,
    sigmoid_contrastive,
    similarity_matrix,
    supervised_contrastive,
    triplet_loss,
    triplet_margin,
)
from contrastkit.losses import create_loss, list_losses, matryoshka

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "contrastive_margin",
    "create_loss",
    "info_nce",
    "list_losses",
    "load_encoder",
    "margin_ranking",
    "matryoshka",
    "nt_xent",
    "paired_similarity",
    "preference_loss",
    "sigmoid_contrastive",
    "similarity_matrix",
    "supervised_contrastive",
    "triplet_loss",
    "triplet_margin",
]
