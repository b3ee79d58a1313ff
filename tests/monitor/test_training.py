"""A short training run per setup: the broken ones collapse and the monitor says so, the healthy
ones train without an alert. Synthetic clustered data, a two-layer MLP, a few seconds on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastkit.encoders import PredictionHead
from contrastkit.losses import SimSiamLoss, VICRegLoss
from contrastkit.monitor import CollapseMonitor, HealthReport


def clustered_data(
    g: torch.Generator, n: int = 512, d: int = 32, clusters: int = 10
) -> torch.Tensor:
    centers = 2.0 * torch.randn(clusters, d, generator=g)
    labels = torch.randint(0, clusters, (n,), generator=g)
    return centers[labels] + 0.5 * torch.randn(n, d, generator=g)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x + 0.3 * torch.randn(x.shape, generator=g)


def train(setup: str, steps: int = 100, every: int = 50) -> tuple[list[HealthReport], float]:
    """Train one setup; return the monitor history and the last loss."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    data = clustered_data(g)
    encoder = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 16))
    predictor = PredictionHead(16, 8)
    loss_fn = {
        "simsiam": SimSiamLoss(),
        "simsiam_without_stop_gradient": SimSiamLoss(stop_gradient=False),
        "vicreg": VICRegLoss(),
        "vicreg_invariance_only": VICRegLoss(variance_weight=0.0, covariance_weight=0.0),
    }[setup]
    params = [*encoder.parameters(), *predictor.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    monitor = CollapseMonitor(warn=False)
    for step in range(steps):
        batch = data[torch.randint(0, data.shape[0], (128,), generator=g)]
        z1, z2 = encoder(augment(batch, g)), encoder(augment(batch, g))
        if setup.startswith("simsiam"):
            loss = loss_fn(predictor(z1), predictor(z2), z1, z2)
        else:
            loss = loss_fn(z1, z2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % every == 0:
            # every N steps: embed a held-out pass of two views, under no_grad, in eval mode
            encoder.eval()
            with torch.no_grad():
                for chunk in data.split(256):
                    monitor.update(encoder(augment(chunk, g)), encoder(augment(chunk, g)))
            encoder.train()
            report = monitor.compute(step=step + 1)
            print(f"{setup}: loss={loss.item():.4f} {report}")
    return monitor.history, loss.item()


@pytest.mark.parametrize(
    ("healthy", "broken"),
    [("simsiam", "simsiam_without_stop_gradient"), ("vicreg", "vicreg_invariance_only")],
)
def test_monitor_catches_the_broken_setup_and_not_the_healthy_one(
    healthy: str, broken: str
) -> None:
    good_history, good_loss = train(healthy)
    bad_history, bad_loss = train(broken)
    assert all(not r.alerts for r in good_history), [str(r) for r in good_history]
    assert bad_history[-1].alerts, str(bad_history[-1])
    good, bad = good_history[-1].values, bad_history[-1].values
    assert bad["uniformity"] > good["uniformity"] + 1.0
    assert bad["negative_similarity"] > good["negative_similarity"] + 0.5
    if healthy == "simsiam":
        # the collapsed run even has the lower loss: the loss alone would not have told
        assert bad_loss < good_loss
