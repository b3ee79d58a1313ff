"""Embedding-health monitors: constructed collapse is caught, healthy embeddings are not flagged,
known spectra give analytic effective ranks, and streaming equals one-shot."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contrastkit.monitor import (
    Alignment,
    CollapseMonitor,
    CollapseWarning,
    EffectiveRank,
    EmbeddingStd,
    SimilarityGap,
    Uniformity,
    alignment,
    effective_rank,
    embedding_std,
    similarity_stats,
    spectral_effective_rank,
    uniformity,
)

D64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sphere(n: int, d: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, d, generator=gen(seed), dtype=D64)
    return x / x.norm(dim=1, keepdim=True)


def positives(x: torch.Tensor, noise: float = 0.1, seed: int = 1) -> torch.Tensor:
    return x + noise * torch.randn(x.shape, generator=gen(seed), dtype=x.dtype)


def feed(monitor: CollapseMonitor, query: torch.Tensor, key: torch.Tensor, batch: int = 128):
    for q, k in zip(query.split(batch), key.split(batch)):
        monitor.update(q, k)


def test_healthy_uniform_sphere_raises_no_alert() -> None:
    q = sphere(1024, 32)
    monitor = CollapseMonitor()
    feed(monitor, q, positives(q))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        report = monitor.compute(step=0)
    assert report.alerts == [] and not report.collapsed
    v = report.values
    assert 0.95 < v["std_ratio"] < 1.05  # std about 1/sqrt(D) in every dimension
    assert v["rank_fraction"] > 0.8
    assert v["uniformity"] < -3.5  # about -4 in high dimension
    assert v["similarity_gap"] > 0.8 and abs(v["negative_similarity"]) < 0.05


def _collapsed(kind: str) -> tuple[torch.Tensor, list[str]]:
    n, d = 512, 64
    if kind == "all_equal":
        one = torch.randn(1, d, generator=gen(2), dtype=D64)
        return one.repeat(n, 1), ["std_ratio", "rank_fraction", "uniformity", "negative_similarity"]
    if kind == "rank1":
        scale = torch.randn(n, 1, generator=gen(3), dtype=D64)  # +-v: a line through the origin
        return scale * torch.randn(1, d, generator=gen(4), dtype=D64), [
            "rank_fraction",
            "uniformity",
        ]
    # rank-k: a 3-dim subspace of a 64-dim space
    basis = torch.randn(3, d, generator=gen(5), dtype=D64)
    return torch.randn(n, 3, generator=gen(6), dtype=D64) @ basis, ["rank_fraction"]


@pytest.mark.parametrize("kind", ["all_equal", "rank1", "rank_k"])
def test_constructed_collapse_is_caught(kind: str) -> None:
    q, expected = _collapsed(kind)
    monitor = CollapseMonitor()
    feed(monitor, q, q.clone())
    with pytest.warns(CollapseWarning) as caught:
        report = monitor.compute(step=7)
    fired = [a.metric for a in report.alerts]
    assert set(expected) <= set(fired), fired
    text = "\n".join(str(w.message) for w in caught)
    assert "step 7" in text and "healthy" in text
    if kind == "rank_k":
        assert 1.5 < report.values["effective_rank"] <= 3.0 + 1e-9


def test_alert_says_what_collapsed_the_value_the_range_and_the_fix() -> None:
    monitor = CollapseMonitor(warn=False)
    monitor.update(torch.ones(8, 16), torch.ones(8, 16))
    alert = monitor.compute().alerts[0]
    message = str(alert)
    assert alert.metric == "std_ratio" and alert.value == 0.0
    assert "complete collapse" in message and "1/sqrt(D) = 0.25" in message
    assert "stop-gradient" in message  # what to do


def test_history_is_kept_and_windows_reset() -> None:
    monitor = CollapseMonitor(warn=False)
    healthy = sphere(256, 16)
    monitor.update(healthy, positives(healthy))
    monitor.compute(step=1)
    monitor.update(torch.ones(64, 16), torch.ones(64, 16))
    monitor.compute(step=2)
    assert [r.step for r in monitor.history] == [1, 2]
    assert not monitor.history[0].collapsed and monitor.history[1].collapsed
    with pytest.raises(RuntimeError, match="before any update"):
        monitor.compute()


def test_without_key_only_distribution_statistics() -> None:
    monitor = CollapseMonitor(warn=False)
    monitor.update(sphere(64, 8))
    values = monitor.compute().values
    assert set(values) == {"std_ratio", "effective_rank", "rank_fraction", "uniformity"}


def test_thresholds_can_be_disabled() -> None:
    monitor = CollapseMonitor(
        min_std_ratio=None,
        min_rank_fraction=None,
        max_uniformity=None,
        max_negative_similarity=None,
        min_similarity_gap=None,
    )
    monitor.update(torch.ones(8, 4), torch.ones(8, 4))
    assert monitor.compute().alerts == []


# ----------------------------------------------------------------- effective rank: analytic


def _with_spectrum(singular_values: list[float], n: int = 40, d: int = 12) -> torch.Tensor:
    r = len(singular_values)
    u, _ = torch.linalg.qr(torch.randn(n, r, generator=gen(7), dtype=D64))
    v, _ = torch.linalg.qr(torch.randn(d, r, generator=gen(8), dtype=D64))
    return u @ torch.diag(torch.tensor(singular_values, dtype=D64)) @ v.T  # (N, D)


@pytest.mark.parametrize("spectrum", [[1.0] * 5, [4.0, 3.0, 2.0, 1.0, 0.5], [10.0, 1e-3]])
def test_effective_rank_of_a_known_spectrum(spectrum: list[float]) -> None:
    p = torch.tensor(spectrum, dtype=D64) / sum(spectrum)
    analytic = math.exp(-float((p * p.log()).sum()))
    z = _with_spectrum(spectrum)
    assert float(effective_rank(z)) == pytest.approx(analytic, rel=1e-9)
    streamed = EffectiveRank()
    for chunk in z.split(7):
        streamed.update(chunk)
    assert float(streamed.compute()) == pytest.approx(analytic, rel=1e-6)
    assert float(spectral_effective_rank(torch.tensor(spectrum))) == pytest.approx(
        analytic, rel=1e-6
    )


def test_flat_spectrum_and_zero_matrix() -> None:
    assert float(effective_rank(_with_spectrum([2.0] * 7))) == pytest.approx(7.0)
    assert float(effective_rank(torch.zeros(5, 3))) == 0.0
    assert float(effective_rank(torch.ones(5, 3), centered=True)) == 0.0


# ----------------------------------------------------------------- streaming == one-shot


def test_streaming_equals_one_shot() -> None:
    q = torch.randn(100, 6, generator=gen(9), dtype=D64) + 0.5
    k = positives(q, noise=0.5)
    chunks = [0, 10, 37, 38, 80, 100]  # uneven batch sizes
    meters = {
        "alignment": Alignment(),
        "std": EmbeddingStd(),
        "rank": EffectiveRank(),
        "rank_centered": EffectiveRank(centered=True),
        "similarity": SimilarityGap(bins=10),
        "uniformity": Uniformity(),
    }
    potentials, pairs = 0.0, 0
    for a, b in itertools.pairwise(chunks):
        qb, kb = q[a:b], k[a:b]
        meters["alignment"].update(qb, kb)
        meters["std"].update(qb)
        meters["rank"].update(qb)
        meters["rank_centered"].update(qb)
        meters["similarity"].update(qb, kb)
        meters["uniformity"].update(qb)
        n_pairs = (b - a) * (b - a - 1) // 2
        if n_pairs:
            potentials += math.exp(float(uniformity(qb))) * n_pairs
        pairs += n_pairs
    torch.testing.assert_close(meters["alignment"].compute(), alignment(q, k))
    torch.testing.assert_close(meters["std"].compute(), embedding_std(q))
    torch.testing.assert_close(meters["rank"].compute(), effective_rank(q))
    torch.testing.assert_close(meters["rank_centered"].compute(), effective_rank(q, centered=True))
    stats = similarity_stats(q, k)  # negatives over all i != j pairs, also across batches
    assert meters["similarity"].positive() == pytest.approx(float(stats.positive), rel=1e-12)
    assert meters["similarity"].negative() == pytest.approx(float(stats.negative), rel=1e-12)
    assert float(meters["similarity"].compute()) == pytest.approx(float(stats.gap), rel=1e-12)
    assert float(meters["uniformity"].compute()) == pytest.approx(math.log(potentials / pairs))
    hist = meters["similarity"].histograms()
    assert float(hist["positive"].sum()) == 100
    assert float(hist["negative"].sum()) == sum(
        (b - a) * (b - a - 1) for a, b in itertools.pairwise(chunks)
    )


def test_one_batch_streaming_equals_the_functions_and_histograms() -> None:
    q = sphere(50, 8, seed=10)
    k = positives(q, noise=0.3)
    u = Uniformity()
    u.update(q)
    torch.testing.assert_close(u.compute(), uniformity(q))
    s = SimilarityGap(bins=8)
    s.update(q, k)
    sim = (q / q.norm(dim=1, keepdim=True)) @ (k / k.norm(dim=1, keepdim=True)).T
    off = sim[~torch.eye(50, dtype=torch.bool)]
    torch.testing.assert_close(s.histograms()["negative"], torch.histc(off, bins=8, min=-1, max=1))


def test_monitor_input_errors() -> None:
    monitor = CollapseMonitor()
    with pytest.raises(ValueError, match="query needs at least 2 rows"):
        monitor.update(torch.randn(1, 4))
    with pytest.raises(ValueError, match="same embedding dimension"):
        monitor.update(torch.randn(4, 4), torch.randn(4, 5))
    with pytest.raises(RuntimeError, match="call update"):
        Alignment().compute()
    with pytest.raises(ValueError, match="bins must be an int >= 1"):
        SimilarityGap(bins=0)


def test_compute_without_reset_continues_the_window_and_reports_histograms() -> None:
    q = sphere(96, 8, seed=11)
    k = positives(q)
    continued, whole = CollapseMonitor(warn=False, bins=10), CollapseMonitor(warn=False, bins=10)
    continued.update(q[:48], k[:48])
    continued.compute(reset=False)
    continued.update(q[48:], k[48:])
    whole.update(q[:48], k[:48])
    whole.update(q[48:], k[48:])
    a, b = continued.compute(), whole.compute()
    assert a.values.pop("rank_vs_best") == pytest.approx(
        a.values["effective_rank"] / continued.history[0].values["effective_rank"]
    )
    assert a.values == pytest.approx(b.values, rel=1e-12)
    torch.testing.assert_close(a.histograms["negative"], b.histograms["negative"])
    assert float(a.histograms["positive"].sum()) == 96


@settings(max_examples=15, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 39), max_size=5, unique=True),
    seed=st.integers(0, 2**16),
)
def test_any_batching_gives_the_one_shot_values(cuts: list[int], seed: int) -> None:
    q = torch.randn(40, 5, generator=gen(seed), dtype=D64)
    k = positives(q, noise=0.4, seed=seed + 1)
    bounds = [0, *sorted(cuts), 40]
    std, rank, sim = EmbeddingStd(), EffectiveRank(centered=True), SimilarityGap()
    for a, b in itertools.pairwise(bounds):
        std.update(q[a:b])
        rank.update(q[a:b])
        sim.update(q[a:b], k[a:b])
    torch.testing.assert_close(std.compute(), embedding_std(q))
    torch.testing.assert_close(rank.compute(), effective_rank(q, centered=True))
    assert sim.negative() == pytest.approx(float(similarity_stats(q, k).negative), rel=1e-9)


def test_a_falling_effective_rank_is_flagged_against_the_best_reading() -> None:
    monitor = CollapseMonitor(warn=False)
    full = torch.randn(256, 32, generator=gen(12), dtype=D64)
    monitor.update(full)
    assert monitor.compute(step=0).alerts == []
    # 6 directions of 32: above min_rank_fraction (0.1) but far below the first reading
    monitor.update(full[:, :6] @ torch.randn(6, 32, generator=gen(13), dtype=D64))
    report = monitor.compute(step=1)
    assert [a.metric for a in report.alerts] == ["rank_vs_best"], str(report)
    assert report.values["rank_fraction"] > 0.1 and report.values["rank_vs_best"] < 0.3
