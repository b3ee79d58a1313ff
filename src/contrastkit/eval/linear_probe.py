"""Linear probe: multinomial logistic regression on frozen embeddings.

Shapes: ``train_emb: (N, D)``, ``train_labels: (N,)``, ``test_emb: (Q, D)``, ``test_labels: (Q,)``.

Features are standardised with the training mean and standard deviation, then a linear
classifier ``softmax(W x + b)`` is fitted by full-batch L-BFGS (strong Wolfe line search) on
``mean cross-entropy + weight_decay * |W|^2``. The solver is deterministic (zero initialisation,
full batch) and fast on CPU: a few seconds for 60k x 512 features.

With several ``weight_decays`` a held-out split of the training set (``val_fraction``, seeded)
picks the best one by validation accuracy, and the classifier is refitted on the whole training
set with it. The test set is never used for any choice.

The linear evaluation protocol of self-supervised learning (e.g. SimCLR, Chen et al. 2020,
https://arxiv.org/abs/2002.05709, which trains the probe with SGD or L-BFGS; Kolesnikov et al.
2019 use L-BFGS logistic regression).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit._checks import check_embeddings, check_labels, check_pair

__all__ = ["LinearProbeResult", "fit_logistic_regression", "linear_probe"]


@dataclass(frozen=True)
class LinearProbeResult:
    """Outcome of :func:`linear_probe`.

    Attributes:
        accuracy: test accuracy of the refitted classifier.
        val_accuracy: accuracy on the held-out split for the chosen weight decay (NaN when a
            single weight decay was given and no selection was made).
        train_accuracy: accuracy on the whole training set.
        weight_decay: the chosen L2 coefficient.
        weight: (C, D) classifier weights on standardised features.
        bias: (C,).
        mean, std: (D,) the standardisation; ``predict`` applies it.
    """

    accuracy: float
    val_accuracy: float
    train_accuracy: float
    weight_decay: float
    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor

    def predict(self, embeddings: Tensor) -> Tensor:
        """(N,) predicted classes of ``embeddings: (N, D)``."""
        x = (embeddings.float() - self.mean) / self.std
        return (x @ self.weight.T + self.bias).argmax(1)


def fit_logistic_regression(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    weight_decay: float = 1e-4,
    max_iter: int = 100,
) -> tuple[Tensor, Tensor]:
    """Full-batch L-BFGS multinomial logistic regression.

    Minimises ``mean_i CE(W x_i + b, y_i) + weight_decay * |W|^2`` from zero initialisation.

    Args:
        features: (N, D) float32, ideally standardised.
        labels: (N,) class indices in [0, C).
        num_classes: C.

    Returns:
        ``(weight, bias)``: (C, D) and (C,).

    >>> x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    >>> w, b = fit_logistic_regression(x, torch.tensor([0, 0, 1, 1]), 2)
    >>> (x @ w.T + b).argmax(1)
    tensor([0, 0, 1, 1])
    """
    weight = torch.zeros(num_classes, features.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=10,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, labels)
        loss = loss + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _accuracy(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor) -> float:
    if features.shape[0] == 0:
        return math.nan
    return float(((features @ weight.T + bias).argmax(1) == labels).float().mean())


def linear_probe(
    train_emb: Tensor,
    train_labels: Tensor,
    test_emb: Tensor,
    test_labels: Tensor,
    *,
    weight_decays: Sequence[float] = (1e-5, 1e-4, 1e-3),
    val_fraction: float = 0.1,
    max_iter: int = 100,
    seed: int = 0,
) -> LinearProbeResult:
    """Train a logistic-regression probe on frozen ``train_emb`` and score it on ``test_emb``.

    Args:
        train_emb: (N, D) frozen training embeddings.
        train_labels: (N,) class indices in [0, C).
        test_emb: (Q, D) frozen test embeddings.
        test_labels: (Q,) class indices.
        weight_decays: L2 coefficients to choose from on the held-out split (one value: no
            split, no selection).
        val_fraction: share of the training set held out for the selection.
        max_iter: L-BFGS iterations per fit.
        seed: seeds the held-out split.

    Returns:
        A :class:`LinearProbeResult` (``.accuracy`` is the test accuracy).

    >>> g = torch.Generator().manual_seed(0)
    >>> centers = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    >>> labels = torch.arange(3).repeat(40)
    >>> emb = centers[labels] + torch.randn(120, 2, generator=g)
    >>> linear_probe(emb[:90], labels[:90], emb[90:], labels[90:]).accuracy
    1.0
    """
    check_embeddings("train_emb", train_emb)
    check_embeddings("test_emb", test_emb)
    check_pair("train_emb", train_emb, "test_emb", test_emb, same_rows=False)
    train_labels = check_labels("train_labels", train_labels, train_emb.shape[0], what="train_emb")
    test_labels = check_labels("test_labels", test_labels, test_emb.shape[0], what="test_emb")
    weight_decays = [float(w) for w in weight_decays]
    if not weight_decays or any(not math.isfinite(w) or w < 0 for w in weight_decays):
        raise ValueError(
            f"weight_decays must be a non-empty sequence of finite numbers >= 0, got {weight_decays}."
        )
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    if train_emb.shape[0] < 2:
        raise ValueError(f"train_emb needs at least 2 rows, got {train_emb.shape[0]}.")
    if int(train_labels.min()) < 0:
        raise ValueError("train_labels must be class indices >= 0.")
    num_classes = int(train_labels.max()) + 1

    x_train = train_emb.detach().to("cpu", torch.float32)
    y_train = train_labels.detach().cpu().long()
    mean = x_train.mean(0)
    std = x_train.std(0).clamp_min(1e-6)
    x_train = (x_train - mean) / std
    x_test = (test_emb.detach().to("cpu", torch.float32) - mean) / std
    y_test = test_labels.detach().cpu().long()

    chosen, val_acc = weight_decays[0], math.nan
    if len(weight_decays) > 1:
        n = x_train.shape[0]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        n_val = max(1, min(n - 1, round(n * val_fraction)))
        val, fit = perm[:n_val], perm[n_val:]
        best = -1.0
        for wd in weight_decays:
            w, b = fit_logistic_regression(
                x_train[fit], y_train[fit], num_classes, weight_decay=wd, max_iter=max_iter
            )
            acc = _accuracy(x_train[val], y_train[val], w, b)
            if acc > best:  # ties keep the earlier (smaller) weight decay
                best, chosen = acc, wd
        val_acc = best
    weight, bias = fit_logistic_regression(
        x_train, y_train, num_classes, weight_decay=chosen, max_iter=max_iter
    )
    return LinearProbeResult(
        accuracy=_accuracy(x_test, y_test, weight, bias),
        val_accuracy=val_acc,
        train_accuracy=_accuracy(x_train, y_train, weight, bias),
        weight_decay=chosen,
        weight=weight,
        bias=bias,
        mean=mean,
        std=std,
    )
