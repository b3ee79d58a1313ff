"""Plain-loop reference implementations written from the formulas (float64, no vectorisation).

They are deliberately naive so that they can be read against the papers; tests compare the
vectorised library code against them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sim(a: Tensor, b: Tensor, metric: str) -> Tensor:
    """Similarity of two 1-D vectors."""
    if metric == "dot":
        return (a * b).sum()
    if metric == "cosine":
        na, nb = a.norm(), b.norm()
        if float(na) == 0.0 or float(nb) == 0.0:
            return (a * b).sum() * 0.0
        return (a * b).sum() / (na * nb)
    return -((a - b) ** 2).sum().sqrt()


def _anchor_loss(scores: list[Tensor], positives: set[int], kept: set[int], t: float) -> Tensor:
    log_denominator = torch.logsumexp(torch.stack([scores[c] / t for c in sorted(kept)]), dim=0)
    terms = [-(scores[p] / t - log_denominator) for p in sorted(positives)]
    return torch.stack(terms).mean()


def info_nce(
    q,
    k,
    negatives=None,
    *,
    temperature,
    metric="cosine",
    symmetric=False,
    positive_mask=None,
    ignore_mask=None,
):
    """Per-anchor losses (B,)."""
    b = q.shape[0]
    m = 0 if negatives is None else negatives.shape[-2]
    out = []
    for i in range(b):
        scores = [sim(q[i], k[j], metric) for j in range(b)]
        for r in range(m):
            neg = negatives[r] if negatives.ndim == 2 else negatives[i, r]
            scores.append(sim(q[i], neg, metric))
        pos = {i} | (
            {j for j in range(b) if positive_mask[i, j]} if positive_mask is not None else set()
        )
        kept = {c for c in range(b + m) if c in pos or ignore_mask is None or not ignore_mask[i, c]}
        out.append(_anchor_loss(scores, pos, kept, temperature))
    loss = torch.stack(out)
    if not symmetric:
        return loss
    back = []
    for j in range(b):
        scores = [sim(q[i], k[j], metric) for i in range(b)]
        pos = {j} | (
            {i for i in range(b) if positive_mask[i, j]} if positive_mask is not None else set()
        )
        kept = {i for i in range(b) if i in pos or ignore_mask is None or not ignore_mask[i, j]}
        back.append(_anchor_loss(scores, pos, kept, temperature))
    return 0.5 * (loss + torch.stack(back))


def nt_xent(z1, z2, *, temperature, metric="cosine"):
    z = torch.cat([z1, z2])
    n, b = z.shape[0], z1.shape[0]
    out = []
    for i in range(n):
        scores = [sim(z[i], z[j], metric) for j in range(n)]
        kept = {j for j in range(n) if j != i}
        out.append(_anchor_loss(scores, {(i + b) % n}, kept, temperature))
    return torch.stack(out)


def supervised_contrastive(z, labels, *, temperature, metric="cosine"):
    """Per-anchor losses and validity, z (N, D) already flattened."""
    n = z.shape[0]
    out, valid = [], []
    for i in range(n):
        pos = {j for j in range(n) if j != i and labels[j] == labels[i]}
        if not pos:
            out.append(torch.zeros((), dtype=z.dtype))
            valid.append(False)
            continue
        scores = [sim(z[i], z[j], metric) for j in range(n)]
        out.append(_anchor_loss(scores, pos, {j for j in range(n) if j != i}, temperature))
        valid.append(True)
    return torch.stack(out), torch.tensor(valid)


def sigmoid_contrastive(a, b, *, temperature, bias, metric="cosine"):
    n = a.shape[0]
    total = torch.zeros((), dtype=a.dtype)
    for i in range(n):
        for j in range(n):
            label = 1.0 if i == j else -1.0
            logit = sim(a[i], b[j], metric) / temperature + bias
            total = total + torch.log1p(torch.exp(-label * logit))
    return total / n


def triplet_margin(emb, labels, *, margin, metric="euclidean", mining="batch_hard"):
    n = emb.shape[0]
    s = [[sim(emb[i], emb[j], metric) for j in range(n)] for i in range(n)]
    terms = []
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [q for q in range(n) if labels[q] != labels[a]]
        if not pos or not neg:
            continue
        if mining == "batch_hard":
            hp = min(pos, key=lambda p: float(s[a][p]))
            hn = max(neg, key=lambda q: float(s[a][q]))
            terms.append(torch.relu(s[a][hn] - s[a][hp] + margin))
        elif mining == "batch_all":
            terms += [torch.relu(s[a][q] - s[a][p] + margin) for p in pos for q in neg]
        else:
            for p in pos:
                farther = [q for q in neg if float(s[a][q]) < float(s[a][p])]
                if farther:
                    q = max(farther, key=lambda q: float(s[a][q]))
                else:
                    q = min(neg, key=lambda q: float(s[a][q]))
                terms.append(torch.relu(s[a][q] - s[a][p] + margin))
    return torch.stack(terms).mean()


def contrastive_margin(a, b, is_positive, *, margin, metric="euclidean"):
    out = []
    for i in range(a.shape[0]):
        s = sim(a[i], b[i], metric)
        d = -s if metric == "euclidean" else 1.0 - s
        out.append(d**2 if bool(is_positive[i]) else torch.relu(margin - d) ** 2)
    return torch.stack(out)


def preference(chosen, rejected, *, kind, margin):
    out = []
    for c, r in zip(chosen, rejected):
        gap = c - r
        if kind == "logistic":
            out.append(torch.log1p(torch.exp(-(gap - margin))))
        else:
            out.append(torch.relu(margin - gap))
    return torch.stack(out)


def log(x: float) -> float:
    return math.log(x)


ROLE_KEYS = ("positive_mask", "ignore_mask", "query_labels", "key_labels", "query_ids", "key_ids")


def as_roles(kwargs: dict) -> dict:
    """Keyword arguments with the flat mask / label / id keywords (the references' form)
    gathered into the library's one ``roles=KeyRoles(...)`` argument."""
    from contrastkit.functional import KeyRoles

    roles = {k: v for k, v in kwargs.items() if k in ROLE_KEYS}
    rest = {k: v for k, v in kwargs.items() if k not in ROLE_KEYS}
    return {**rest, "roles": KeyRoles(**roles)} if roles else rest
