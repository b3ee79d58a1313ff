"""Embedding-health signals the trainer logs (collapse monitoring) and pos/neg similarities.

Uses :mod:`contrastkit.monitor` when it is installed in this tree; otherwise these few standard
signals, all computed under ``no_grad`` on one batch of embeddings ``z: (B, D)``:

* ``std``: mean per-dimension std of the L2-normalised embeddings times sqrt(D) (1: spread like a
  uniform sphere, 0: complete collapse; Chen & He 2021, https://arxiv.org/abs/2011.10566);
* ``effective_rank``: exp of the entropy of the normalised singular values (Roy & Vetterli 2007);
* ``alignment`` / ``uniformity``: Wang & Isola 2020, https://arxiv.org/abs/2005.10242.

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


@torch.no_grad()
def embedding_health(z: Tensor, z_pair: Tensor | None = None) -> dict[str, float]:
    """Collapse signals of ``z: (B, D)``; with its pair ``z_pair: (B, D)`` also alignment and
    mean positive / negative cosine similarity."""
    z = z.detach().float()
    zn = F.normalize(z, dim=-1)
    b, d = zn.shape
    out: dict[str, float] = {"std": float(zn.std(dim=0).mean() * math.sqrt(d))}
    s = torch.linalg.svdvals(z - z.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    out["effective_rank"] = float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
    sq = torch.cdist(zn, zn).pow(2)
    off = ~torch.eye(b, dtype=torch.bool)
    out["uniformity"] = float(torch.log(torch.exp(-2 * sq[off]).mean()))
    if z_pair is not None:
        pn = F.normalize(z_pair.detach().float(), dim=-1)
        out["alignment"] = float((zn - pn).pow(2).sum(-1).mean())
        sim = zn @ pn.T
        out["pos_sim"] = float(sim.diag().mean())
        out["neg_sim"] = float(sim[off].mean())
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
