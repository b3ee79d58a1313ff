"""Parity with pytorch-metric-learning where it implements the same loss (values and gradients).

Tolerances (float64 inputs): NTXentLoss and SupConLoss 1e-9 relative (PML adds the smallest
normal float inside a log or a divisor); TripletMarginLoss and ContrastiveLoss 1e-10.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import distances, losses, miners, reducers

import contrastkit.functional as F


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def values_and_grads(fn, *inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [x.clone().requires_grad_() for x in inputs]
    value = fn(*leaves)
    return value.detach(), list(torch.autograd.grad(value, leaves))


def assert_parity(ours, theirs, *inputs: torch.Tensor, rtol: float) -> None:
    v1, g1 = values_and_grads(ours, *inputs)
    v2, g2 = values_and_grads(theirs, *inputs)
    torch.testing.assert_close(v1, v2, rtol=rtol, atol=rtol)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_nt_xent_parity(temperature: float) -> None:
    z1, z2 = rand(12, 8, seed=1), rand(12, 8, seed=2)
    pml = losses.NTXentLoss(temperature=temperature)
    labels = torch.arange(12).repeat(2)
    assert_parity(
        lambda a, b: F.nt_xent(a, b, temperature=temperature),
        lambda a, b: pml(torch.cat([a, b]), labels),
        z1,
        z2,
        rtol=1e-9,
    )


@pytest.mark.parametrize("temperature", [0.1, 0.3])
def test_supcon_parity(temperature: float) -> None:
    z = rand(16, 8, seed=3)
    labels = torch.tensor([0, 1, 2, 3] * 3 + [4, 5, 6, 6])  # labels 4 and 5 have no positive
    pml = losses.SupConLoss(temperature=temperature)
    assert_parity(
        lambda e: F.supervised_contrastive(e, labels, temperature=temperature),
        lambda e: pml(e, labels),
        z,
        rtol=1e-9,
    )


def _pml_lp() -> distances.LpDistance:
    return distances.LpDistance(normalize_embeddings=False, p=2, power=1)


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
def test_triplet_parity(mining: str) -> None:
    z = rand(12, 6, seed=4)
    labels = torch.tensor([0, 1, 2, 3] * 3)
    pml = losses.TripletMarginLoss(margin=0.4, distance=_pml_lp(), reducer=reducers.MeanReducer())
    if mining == "batch_hard":
        miner = miners.BatchHardMiner(distance=_pml_lp())

        def theirs(e: torch.Tensor) -> torch.Tensor:
            return pml(e, labels, miner(e, labels))
    else:

        def theirs(e: torch.Tensor) -> torch.Tensor:
            return pml(e, labels)

    assert_parity(
        lambda e: F.triplet_margin(e, labels, margin=0.4, mining=mining), theirs, z, rtol=1e-10
    )


def test_triplet_parity_cosine() -> None:
    z = rand(12, 6, seed=5)
    labels = torch.tensor([0, 1, 2] * 4)
    pml = losses.TripletMarginLoss(
        margin=0.2, distance=distances.CosineSimilarity(), reducer=reducers.MeanReducer()
    )
    assert_parity(
        lambda e: F.triplet_margin(e, labels, margin=0.2, metric="cosine", mining="batch_all"),
        lambda e: pml(e, labels),
        z,
        rtol=1e-10,
    )


def test_contrastive_margin_parity() -> None:
    # PML's ContrastiveLoss hinges the *unsquared* distance and reduces per pair type; compare the
    # per-pair terms: ours (squared) must equal the square of PML's.
    z = rand(10, 5, seed=6) * 0.4
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 3])
    pml = losses.ContrastiveLoss(
        pos_margin=0.0, neg_margin=1.2, distance=_pml_lp(), reducer=reducers.DoNothingReducer()
    )
    out = pml(z, labels)
    pos_i, pos_j = out["pos_loss"]["indices"]
    neg_i, neg_j = out["neg_loss"]["indices"]
    a = torch.cat([z[pos_i], z[neg_i]])
    b = torch.cat([z[pos_j], z[neg_j]])
    is_pos = torch.cat(
        [torch.ones(len(pos_i), dtype=torch.bool), torch.zeros(len(neg_i), dtype=torch.bool)]
    )
    ours = F.contrastive_margin(a, b, is_pos, margin=1.2, reduction="none")
    theirs = torch.cat([out["pos_loss"]["losses"], out["neg_loss"]["losses"]]) ** 2
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
