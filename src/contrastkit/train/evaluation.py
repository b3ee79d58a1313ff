"""Frozen-embedding evaluation used by the trainer: kNN accuracy, a linear probe, retrieval.

Shapes: N train items, Q test items, D embedding dim, K neighbours, C classes.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> train = torch.randn(100, 8, generator=g); train_labels = (train[:, 0] > 0).long()
>>> test = torch.randn(40, 8, generator=g); test_labels = (test[:, 0] > 0).long()
>>> knn_accuracy(train, train_labels, test, test_labels, k=5) > 0.7
True
>>> linear_probe_accuracy(train, train_labels, test, test_labels) > 0.8
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit._checks import check_embeddings, check_labels


@torch.no_grad()
def knn_predict(
    train: Tensor, train_labels: Tensor, test: Tensor, *, k: int = 20, chunk: int = 1024
) -> Tensor:
    """Cosine-weighted k-nearest-neighbour vote (Wu et al. 2018, https://arxiv.org/abs/1805.01978).

    Each of the ``k`` most cosine-similar train items votes for its label with weight equal to its
    cosine similarity; the class with the largest summed weight wins.

    Args:
        train: (N, D) train embeddings; train_labels: (N,) int labels.
        test: (Q, D) test embeddings.

    Returns:
        (Q,) predicted labels.
    """
    check_embeddings("train", train)
    check_embeddings("test", test)
    check_labels("train_labels", train_labels, train.shape[0], what="train")
    if not 1 <= k <= train.shape[0]:
        raise ValueError(f"k must be in [1, {train.shape[0]}] (the train size), got {k}.")
    n_classes = int(train_labels.max()) + 1
    train_n = F.normalize(train.float(), dim=-1)
    out = []
    for start in range(0, test.shape[0], chunk):
        q = F.normalize(test[start : start + chunk].float(), dim=-1)
        sim, idx = (q @ train_n.T).topk(k, dim=-1)  # (q, K)
        votes = torch.zeros(q.shape[0], n_classes)
        votes.scatter_add_(1, train_labels[idx], sim.clamp_min(0) + 1e-6)
        out.append(votes.argmax(dim=-1))
    return torch.cat(out)


def knn_accuracy(
    train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, *, k: int = 20
) -> float:
    """Accuracy of :func:`knn_predict` on ``test`` (Q,) labels."""
    check_labels("test_labels", test_labels, test.shape[0], what="test")
    pred = knn_predict(train, train_labels, test, k=k)
    return float((pred == test_labels).float().mean())


def linear_probe_accuracy(
    train: Tensor,
    train_labels: Tensor,
    test: Tensor,
    test_labels: Tensor,
    *,
    weight_decay: float = 1e-4,
    max_iter: int = 150,
) -> float:
    """Multinomial logistic regression on frozen, standardised features, fitted with L-BFGS.

    Args:
        train: (N, D); train_labels: (N,); test: (Q, D); test_labels: (Q,).
        weight_decay: L2 penalty on the weights (mean loss + ``weight_decay * |W|^2 / 2``).
        max_iter: L-BFGS iterations (full batch, deterministic).

    Returns:
        Test accuracy.
    """
    check_embeddings("train", train)
    check_embeddings("test", test)
    check_labels("train_labels", train_labels, train.shape[0], what="train")
    check_labels("test_labels", test_labels, test.shape[0], what="test")
    x = train.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = ((x - mean) / std).float()
    xt = ((test.double() - mean) / std).float()
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
    weight = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, train_labels)
        loss = loss + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (xt @ weight + bias).argmax(-1)
    return float((pred == test_labels).float().mean())
