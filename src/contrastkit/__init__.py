"""contrastkit: contrastive objectives that stay correct at scale.

The data path: data -> views/pairs -> encoder -> embeddings -> similarity -> loss, with evaluation,
monitoring and the index as side paths, and the trainer and CLI on top.

Shape notation used throughout: B batch, V views, D embedding dim, M extra negatives, N corpus,
Q queries, K neighbours.

A loss takes its problem (``KeyRoles``: which keys are positives or ignored) and leaves the
tiling to the engine (``tiling``: chunked, memory-linear, same value and gradients):

>>> import torch
>>> import contrastkit as ck
>>> q = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
>>> ids = torch.arange(64) % 60  # rows 60..63 repeat documents 0..3
>>> roles = ck.KeyRoles(query_ids=ids, key_ids=ids)
>>> loss = ck.info_nce(q, q, temperature=0.1, roles=roles)
>>> with ck.tiling(chunk_size=16):
...     tiled = ck.info_nce(q, q, temperature=0.1, roles=roles)
>>> bool(torch.isclose(loss, tiled))
True
"""

from contrastkit.encoders.saved import load_encoder
from contrastkit.functional import (
    KeyRoles,
    contrastive_margin,
    fused_kernels,
    info_nce,
    margin_ranking,
    nt_xent,
    paired_similarity,
    preference_loss,
    sigmoid_contrastive,
    similarity_matrix,
    supervised_contrastive,
    tiling,
    triplet_loss,
    triplet_margin,
)
from contrastkit.losses import create_loss, list_losses, matryoshka

__version__ = "0.1.0"

__all__ = [
    "KeyRoles",
    "__version__",
    "contrastive_margin",
    "create_loss",
    "fused_kernels",
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
    "tiling",
    "triplet_loss",
    "triplet_margin",
]
