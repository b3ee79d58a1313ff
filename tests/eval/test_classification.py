"""Weighted kNN and the linear probe: loop references, separable toy data and real digits."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.eval import (
    KNNAccuracy,
    Relevance,
    evaluate_embeddings,
    knn_accuracy,
    knn_predict,
    knn_votes,
    linear_probe,
    retrieval_metrics,
)
from contrastkit.functional.similarity import similarity_matrix
from contrastkit.index import build_index


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blobs(n_per_class: int, num_classes: int, dim: int, seed: int, spread: float = 0.3):
    """Well-separated Gaussian clusters around random directions."""
    centers = torch.randn(num_classes, dim, generator=gen(seed))
    labels = torch.arange(num_classes).repeat(n_per_class)
    emb = centers[labels] + spread * torch.randn(labels.numel(), dim, generator=gen(seed + 1))
    return emb, labels


@pytest.fixture(scope="module")
def digits():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    data = sklearn_datasets.load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=gen(0))
    x, y = x[perm], y[perm]
    return x[:1300], y[:1300], x[1300:], y[1300:]


def reference_votes(query, corpus, labels, k, temperature, metric, num_classes):
    sim = similarity_matrix(query, corpus, metric)
    votes = torch.zeros(query.shape[0], num_classes, dtype=torch.float64)
    for q in range(query.shape[0]):
        order = sorted(range(corpus.shape[0]), key=lambda j, q=q: (-float(sim[q, j]), j))[:k]
        for j in order:
            votes[q, labels[j]] += math.exp(float(sim[q, j]) / temperature)
        votes[q] /= votes[q].sum()
    return votes.float()


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_knn_votes_match_loop_reference(metric):
    query, corpus = torch.randn(9, 5, generator=gen(1)), torch.randn(40, 5, generator=gen(2))
    labels = torch.randint(0, 4, (40,), generator=gen(3))
    got = knn_votes(query, corpus, labels, k=7, temperature=0.5, metric=metric, chunk_size=6)
    want = reference_votes(query, corpus, labels, 7, 0.5, metric, 4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_knn_temperature_limits_and_index_backend():
    query, corpus = torch.randn(30, 4, generator=gen(4)), torch.randn(60, 4, generator=gen(5))
    labels = torch.randint(0, 3, (60,), generator=gen(6))
    one_nn = knn_predict(query, corpus, labels, k=1)
    assert torch.equal(knn_predict(query, corpus, labels, k=15, temperature=1e-4), one_nn)
    index = build_index(corpus, "faiss_flat", "cosine")
    torch.testing.assert_close(
        knn_votes(query, None, labels, index=index, k=5), knn_votes(query, corpus, labels, k=5)
    )


def test_knn_and_probe_on_separable_toy_data():
    emb, labels = blobs(40, 5, 16, seed=7)
    train, test = slice(0, 150), slice(150, 200)
    assert knn_accuracy(emb[test], labels[test], emb[train], labels[train]) == 1.0
    result = linear_probe(emb[train], labels[train], emb[test], labels[test])
    assert result.accuracy == 1.0 and result.train_accuracy == 1.0
    assert result.weight.shape == (5, 16) and result.bias.shape == (5,)
    assert torch.equal(result.predict(emb[test]), labels[test])


def test_knn_on_real_digits(digits):
    x_train, y_train, x_test, y_test = digits
    # Raw-pixel 5-NN on sklearn digits is about 0.98 (see DATA.md); the weighted vote agrees.
    assert knn_accuracy(x_test, y_test, x_train, y_train, k=5, metric="euclidean") >= 0.97
    assert knn_accuracy(x_test, y_test, x_train, y_train, k=20, temperature=0.07) >= 0.96
    # Leave-one-out on the training set through exclude.
    loo = knn_accuracy(x_train, y_train, x_train, y_train, k=5, exclude=torch.arange(1300))
    assert loo >= 0.96
    with_self = knn_accuracy(x_train, y_train, x_train, y_train, k=1)
    assert with_self == 1.0  # without exclude every point finds itself


def test_linear_probe_on_real_digits(digits):
    x_train, y_train, x_test, y_test = digits
    result = linear_probe(x_train, y_train, x_test, y_test, weight_decays=(1e-4, 1e-2))
    assert result.accuracy >= 0.94
    assert result.weight_decay in (1e-4, 1e-2) and 0.9 <= result.val_accuracy <= 1.0
    assert result.accuracy == pytest.approx(
        float((result.predict(x_test) == y_test).float().mean())
    )
    single = linear_probe(x_train, y_train, x_test, y_test, weight_decays=(1e-4,))
    assert math.isnan(single.val_accuracy) and single.weight_decay == 1e-4


def test_streaming_knn_accuracy_equals_functional():
    emb, labels = blobs(30, 4, 8, seed=8, spread=1.5)
    corpus, cl, query, ql = emb[:80], labels[:80], emb[80:], labels[80:]
    metric = KNNAccuracy(corpus, cl, k=10)
    for batch in torch.arange(40).split(13):
        metric.update(query[batch], ql[batch])
    assert metric.compute().item() == pytest.approx(knn_accuracy(query, ql, corpus, cl, k=10))
    metric.reset()
    assert math.isnan(metric.compute().item())


def test_evaluate_embeddings_reports_every_number(digits):
    x_train, y_train, x_test, y_test = digits
    out = evaluate_embeddings(x_train, y_train, x_test, y_test, ks=(1, 10), with_map_at_r=True)
    assert set(out) == {
        "knn_accuracy",
        "linear_probe_accuracy",
        "precision@1",
        "hit_rate@1",
        "precision@10",
        "hit_rate@10",
        "map@r",
        "r_precision",
    }
    assert out["knn_accuracy"] >= 0.96 and out["linear_probe_accuracy"] >= 0.94
    # The shared search gives the same numbers as the separate functions.
    assert out["knn_accuracy"] == knn_accuracy(x_test, y_test, x_train, y_train)
    separate = retrieval_metrics(
        x_test, x_train, Relevance(y_test, y_train), ks=(1, 10), with_map_at_r=True
    )
    for name in ("precision@1", "hit_rate@10", "map@r", "r_precision"):
        assert out[name] == pytest.approx(separate[name], abs=1e-6), name
    assert out["precision@1"] == out["hit_rate@1"] >= 0.96
    assert 0.3 < out["map@r"] <= out["r_precision"] <= 1.0


def test_classification_errors_name_the_argument():
    corpus, labels = torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="temperature"):
        knn_votes(corpus, corpus, labels, temperature=0.0)
    with pytest.raises(ValueError, match="corpus_labels must be class indices >= 0"):
        knn_votes(corpus, corpus, torch.tensor([0, -1, 0, 1, 0]))
    with pytest.raises(ValueError, match="num_classes=1"):
        knn_votes(corpus, corpus, labels, num_classes=1)
    with pytest.raises(TypeError, match="train_labels must have an integer dtype"):
        linear_probe(corpus, labels.float(), corpus, labels)
    with pytest.raises(ValueError, match="weight_decays"):
        linear_probe(corpus, labels, corpus, labels, weight_decays=())
    with pytest.raises(ValueError, match="val_fraction"):
        linear_probe(corpus, labels, corpus, labels, val_fraction=1.0)
