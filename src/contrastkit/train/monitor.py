"""The trainer's view of :mod:`contrastkit.monitor`: one flat dict of collapse signals per
sampled batch, and positive/negative similarity samples for the report.

Signals of ``z: (B, D)`` and its pair ``z_pair: (B, D)`` (all ``no_grad``):

* ``std``: mean per-dimension std of the L2-normalised embeddings times sqrt(D) (1: spread like
  a uniform sphere, 0: complete collapse; Chen & He 2021, https://arxiv.org/abs/2011.10566);
* ``effective_rank``: exp of the entropy of the normalised singular values (Roy & Vetterli 2007);
* ``alignment`` / ``uniformity``: Wang & Isola 2020, https://arxiv.org/abs/2005.10242;
* ``pos_sim`` / ``neg_sim``: mean cosine of matched and of mismatched pairs.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> z = torch.randn(64, 16, generator=g)
>>> h = embedding_health(z, z + 0.01)
>>> h["std"] > 0.8, h["effective_rank"] > 10
(True, True)
>>> embedding_health(torch.ones(64, 16))["std"] < 1e-3
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.monitor.functional import (
    alignment,
    effective_rank,
    embedding_std,
    similarity_stats,
    uniformity,
)


@torch.no_grad()
def embedding_health(z: Tensor, z_pair: Tensor | None = None) -> dict[str, float]:
    """Collapse signals of ``z: (B, D)`` (and, with ``z_pair: (B, D)``, of the pairs)."""
    z = z.detach().float()
    out = {
        "std": float(embedding_std(z).mean() * math.sqrt(z.shape[1])),
        "effective_rank": float(effective_rank(z, centered=True)),
        "uniformity": float(uniformity(z)),
    }
    if z_pair is not None:
        zp = z_pair.detach().float()
        stats = similarity_stats(z, zp)
        out["alignment"] = float(alignment(z, zp))
        out["pos_sim"], out["neg_sim"] = float(stats.positive), float(stats.negative)
    return out


@torch.no_grad()
def pos_neg_similarities(
    query: Tensor, key: Tensor, max_negatives: int = 20000, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Cosine similarities of matched pairs (B,) and of a sample of mismatched pairs (<= M,)."""
    qn, kn = F.normalize(query.float(), dim=-1), F.normalize(key.float(), dim=-1)
    sim = qn @ kn.T
    pos = sim.diag()
    off = sim[~torch.eye(sim.shape[0], dtype=torch.bool)]
    g = torch.Generator().manual_seed(seed)
    if off.numel() > max_negatives:
        off = off[torch.randperm(off.numel(), generator=g)[:max_negatives]]
    return pos, off
