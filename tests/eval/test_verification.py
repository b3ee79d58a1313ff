"""Verification and open-set identification: sklearn parity for the ROC and AUC, EER and TAR at
FAR on constructed cases and against sklearn's curve, the LFW 10-fold protocol against a plain
loop, open-set rank-1 / DIR against a brute-force reference, and 10^6 pairs in modest memory."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from contrastkit.eval.verification import (
    FAR_TARGETS,
    OpenSetMetrics,
    VerificationMetrics,
    best_threshold,
    eer,
    indexed_pair_scores,
    lfw_accuracy,
    open_set_identification,
    paired_cosine_scores,
    roc_auc,
    roc_curve,
    tar_at_far,
    verification_metrics,
)

sk_metrics = pytest.importorskip("sklearn.metrics")


def scored_pairs(n: int, seed: int, *, ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs: genuine scores shifted up; with ``ties`` scores are rounded to 2 decimals."""
    g = torch.Generator().manual_seed(seed)
    same = torch.rand(n, generator=g) < 0.4
    scores = torch.randn(n, generator=g) * 0.2 + same.float() * 0.3
    if ties:
        scores = (scores * 100).round() / 100
    return scores, same


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("drop", [True, False])
def test_roc_equals_sklearn(ties, drop):
    scores, same = scored_pairs(3000, seed=1, ties=ties)
    fpr, tpr, thr = roc_curve(scores, same, drop_intermediate=drop)
    ref = sk_metrics.roc_curve(same.numpy(), scores.numpy(), drop_intermediate=drop)
    for ours, theirs in zip((fpr, tpr, thr), ref):
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(ours.numpy(), theirs.astype(np.float64))
    assert roc_auc(fpr, tpr) == pytest.approx(
        sk_metrics.roc_auc_score(same.numpy(), scores.numpy()), abs=1e-12
    )


def test_roc_accepts_int_labels_and_rejects_bad_ones():
    scores = torch.tensor([0.3, 0.2])
    a = roc_curve(scores, torch.tensor([1, 0]))
    b = roc_curve(scores, torch.tensor([True, False]))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="no different-identity pair"):
        roc_curve(scores, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="must hold 0/1"):
        roc_curve(scores, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        roc_curve(scores, torch.tensor([1, 0, 1]))


def test_tar_at_far_matches_sklearn_curve():
    """The convention: the largest TPR among sklearn's (full) curve points with FPR <= far."""
    scores, same = scored_pairs(20000, seed=2, ties=True)
    fpr, tpr, thr = roc_curve(scores, same, drop_intermediate=False)
    rfpr, rtpr, rthr = sk_metrics.roc_curve(same.numpy(), scores.numpy(), drop_intermediate=False)
    for far in (*FAR_TARGETS, 0.05, 0.5, 1.0):
        tar, at = tar_at_far(fpr, tpr, thr, far)
        ok = rfpr <= far
        best = int(np.flatnonzero(ok)[np.argmax(rtpr[ok])])
        assert tar == rtpr[best]
        assert at == rthr[best]
        # the threshold attains it: accepting scores >= at gives exactly that TAR and FAR <= far
        accepted = scores.double() >= at
        assert float(accepted[same].double().mean()) == tar
        assert float(accepted[~same].double().mean()) <= far


def test_tar_at_far_constructed():
    # 10 impostors 0.0..0.9 (one per 0.1), 4 genuines: 0.95, 0.85, 0.5, 0.05
    impostor = torch.arange(10, dtype=torch.float64) / 10
    genuine = torch.tensor([0.95, 0.85, 0.5, 0.05], dtype=torch.float64)
    scores = torch.cat([genuine, impostor])
    same = torch.cat([torch.ones(4, dtype=torch.bool), torch.zeros(10, dtype=torch.bool)])
    fpr, tpr, thr = roc_curve(scores, same, drop_intermediate=False)
    assert tar_at_far(fpr, tpr, thr, 0.05) == (0.25, 0.95)  # no false accept: above 0.9
    assert tar_at_far(fpr, tpr, thr, 0.1) == (0.5, 0.85)  # one allowed (0.9)
    assert tar_at_far(fpr, tpr, thr, 0.15) == (0.5, 0.85)  # one more (0.8) gains nothing
    assert tar_at_far(fpr, tpr, thr, 0.5) == (0.75, 0.5)  # five allowed: 0.5..0.9
    assert tar_at_far(fpr, tpr, thr, 1e-4) == (0.25, 0.95)
    with pytest.raises(ValueError, match="far_targets must be rates"):
        tar_at_far(fpr, tpr, thr, 0.0)


def test_eer_constructed_and_brentq():
    # symmetric: genuine 0.6..0.9 and one at 0.2; impostor 0.1..0.4 and one at 0.8
    genuine = torch.tensor([0.9, 0.8 - 1e-9, 0.7, 0.6, 0.2], dtype=torch.float64)
    impostor = torch.tensor([0.1, 0.2 - 1e-9, 0.3, 0.4, 0.8], dtype=torch.float64)
    scores = torch.cat([genuine, impostor])
    same = torch.cat([torch.ones(5, dtype=torch.bool), torch.zeros(5, dtype=torch.bool)])
    rate, at = eer(*roc_curve(scores, same))
    assert rate == pytest.approx(0.2)
    assert at == pytest.approx(0.6)  # the first point with FRR <= FAR accepts >= 0.6
    # against the usual brentq on the interpolated ROC, on random scores with ties
    from scipy.interpolate import interp1d
    from scipy.optimize import brentq

    for seed in range(3):
        s, y = scored_pairs(4000, seed=10 + seed, ties=True)
        fpr, tpr, thr = roc_curve(s, y)
        curve = interp1d(fpr.numpy(), tpr.numpy())
        ref = brentq(lambda x, curve=curve: 1.0 - x - curve(x), 0.0, 1.0)
        assert eer(fpr, tpr, thr)[0] == pytest.approx(ref, abs=1e-9)
        # the dropped points lie on the same straight segments: same EER from the full curve
        assert eer(*roc_curve(s, y, drop_intermediate=False))[0] == pytest.approx(ref, abs=1e-9)


def test_perfect_and_inverted_separation():
    scores = torch.tensor([0.9, 0.8, 0.2, 0.1])
    m = verification_metrics(scores, torch.tensor([1, 1, 0, 0]))
    assert (m["auc"], m["eer"], m["tar@far=0.0001"]) == (1.0, 0.0, 1.0)
    m = verification_metrics(scores, torch.tensor([0, 0, 1, 1]))
    assert (m["auc"], m["eer"], m["tar@far=0.1"]) == (0.0, 1.0, 0.0)


def lfw_reference(scores, same, folds):
    """A plain loop: every candidate threshold, first best (highest) one, per fold."""
    s, y, f = scores.double().tolist(), same.tolist(), folds.tolist()
    accs = []
    for k in sorted(set(f)):
        train = [(a, b) for a, b, c in zip(s, y, f) if c != k]
        values = sorted({a for a, _ in train}, reverse=True)
        cands = [math.inf] + [(values[i] + values[i + 1]) / 2 for i in range(len(values) - 1)]
        cands.append(-math.inf)
        best, best_t = -1, None
        for t in cands:
            correct = sum((a >= t) == b for a, b in train)
            if correct > best:
                best, best_t = correct, t
        test = [(a, b) for a, b, c in zip(s, y, f) if c == k]
        accs.append(sum((a >= best_t) == b for a, b in test) / len(test))
    return accs


def test_lfw_protocol_equals_a_plain_loop():
    scores, same = scored_pairs(600, seed=3, ties=True)
    folds = torch.arange(600) // 60  # 10 folds of 60 pairs, as pairs.txt orders them
    r = lfw_accuracy(scores, same, folds)
    ref = lfw_reference(scores, same, folds)
    assert r.accuracies.tolist() == pytest.approx(ref, abs=0)
    assert r.mean == pytest.approx(np.mean(ref), abs=1e-12)
    assert r.std == pytest.approx(np.std(ref), abs=1e-12)  # population std, as insightface
    assert r.folds.tolist() == list(range(10))
    m = verification_metrics(scores, same, folds=folds)
    assert (m["accuracy"], m["accuracy_std"]) == (r.mean, r.std)


def test_lfw_threshold_is_chosen_on_the_other_folds():
    # fold 1's own best threshold would be 0.55; chosen on fold 0 it is 0.85 -> 50% on fold 1
    scores = torch.tensor([0.9, 0.8, 0.6, 0.5], dtype=torch.float64)
    same = torch.tensor([1, 0, 1, 0])
    r = lfw_accuracy(scores, same, torch.tensor([0, 0, 1, 1]))
    assert r.thresholds.tolist() == pytest.approx([0.55, 0.85])
    assert r.accuracies.tolist() == [0.5, 0.5]
    assert best_threshold(torch.tensor([0.3, 0.2]), torch.tensor([0, 0])) == (math.inf, 1.0)
    assert best_threshold(torch.tensor([0.3, 0.2]), torch.tensor([1, 1])) == (-math.inf, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        lfw_accuracy(scores, same, torch.zeros(4, dtype=torch.long))


def test_paired_and_indexed_scores():
    g = torch.Generator().manual_seed(4)
    e = torch.randn(50, 16, generator=g)
    ia, ib = torch.randint(0, 50, (333,), generator=g), torch.randint(0, 50, (333,), generator=g)
    ref = torch.nn.functional.cosine_similarity(e[ia], e[ib], dim=-1)
    torch.testing.assert_close(indexed_pair_scores(e, ia, ib, chunk_size=7), ref)
    torch.testing.assert_close(paired_cosine_scores(e[ia], e[ib], chunk_size=7), ref)
    with pytest.raises(ValueError, match=r"index_b must hold rows of embeddings in \[0, 50\)"):
        indexed_pair_scores(e, ia, ib + 50)


def open_set_reference(gallery, gallery_ids, probes, probe_ids, far):
    sims = (
        torch.nn.functional.normalize(probes, dim=-1)
        @ torch.nn.functional.normalize(gallery, dim=-1).T
    )
    top, idx = sims.max(dim=1)
    correct = gallery_ids[idx] == probe_ids
    mated = torch.isin(probe_ids, gallery_ids)
    rank1 = correct[mated].double().mean().item()
    nonmated = top[~mated]
    best = 0.0
    for t in [*sorted(set(top.tolist())), math.inf]:  # every threshold that changes a decision
        if (nonmated >= t).double().mean().item() <= far:
            best = max(best, (correct & mated & (top >= t)).sum().item() / int(mated.sum()))
    return rank1, best


def test_open_set_against_brute_force():
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(40, 8, generator=g)
    gallery_ids = torch.arange(30).repeat_interleave(2)  # identities 0..29, two images each
    gallery = centres[gallery_ids] + 0.6 * torch.randn(60, 8, generator=g)
    probe_ids = torch.randint(0, 40, (400,), generator=g)  # 30..39 are not enrolled
    probes = centres[probe_ids] + 0.6 * torch.randn(400, 8, generator=g)
    fars = (0.01, 0.1, 0.3)
    m = open_set_identification(
        gallery, gallery_ids, probes, probe_ids, far_targets=fars, chunk_size=7, query_chunk_size=13
    )
    stream = OpenSetMetrics(gallery, gallery_ids, far_targets=fars, chunk_size=16)
    for part in range(0, 400, 150):
        stream.update(probes[part : part + 150], probe_ids[part : part + 150])
    assert stream.compute() == pytest.approx(m)  # other chunks: float rounding of thresholds
    for far in fars:
        rank1, dir_ = open_set_reference(gallery, gallery_ids, probes, probe_ids, far)
        assert m["rank1"] == pytest.approx(rank1)
        assert m[f"dir@far={far:g}"] == pytest.approx(dir_)
    assert 0 < m["dir@far=0.01"] < m["dir@far=0.3"] <= m["rank1"] < 1
    assert m["probes_mated"] + m["probes_nonmated"] == 400


def test_open_set_without_non_mated_probes_has_no_dir():
    m = open_set_identification(
        torch.eye(2), torch.tensor([0, 1]), torch.eye(2), torch.tensor([0, 1])
    )
    assert m["rank1"] == 1.0 and math.isnan(m["dir@far=0.001"])


def test_streaming_verification_equals_functional():
    scores, same = scored_pairs(1000, seed=6)
    folds = torch.arange(1000) % 10
    m = VerificationMetrics()
    for s in range(0, 1000, 300):
        m.update(scores[s : s + 300], same[s : s + 300], folds=folds[s : s + 300])
    assert m.compute() == verification_metrics(scores, same, folds=folds)
    m.reset()
    m.update(scores, same)
    assert "accuracy" not in m.compute()


MILLION = textwrap.dedent(
    """
    import json, resource, time, torch
    from contrastkit.eval.verification import indexed_pair_scores, open_set_identification, verification_metrics
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    U, D, N, P = 4000, 256, 1_000_000, 12000
    centres = torch.randn(400, D, generator=g)
    gallery_ids = torch.arange(P) % 300  # identities 300..399 are not enrolled
    gallery = centres[gallery_ids] + 2.0 * torch.randn(P, D, generator=g)
    probe_ids = torch.arange(P) % 400
    probes = centres[probe_ids] + 2.0 * torch.randn(P, D, generator=g)
    ids = torch.randint(0, 400, (U,), generator=g)
    emb = centres[ids] + 2.0 * torch.randn(U, D, generator=g)  # (U, D)
    ia = torch.randint(0, U, (N,), generator=g)
    ib = torch.randint(0, U, (N,), generator=g)
    same = ids[ia] == ids[ib]
    folds = torch.arange(N) % 10
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    base = rss()
    t0 = time.perf_counter()
    # P x G dense scores would be 550 MiB
    o = open_set_identification(gallery, gallery_ids, probes, probe_ids, chunk_size=4096)
    open_peak = rss()
    t1 = time.perf_counter()
    scores = indexed_pair_scores(emb, ia, ib)  # gathering (N, D) twice would be 2 GiB
    m = verification_metrics(scores, same, folds=folds)
    print(json.dumps({"open_extra_mib": open_peak - base, "pairs_extra_mib": rss() - base,
                      "open_s": t1 - t0, "pairs_s": time.perf_counter() - t1, "auc": m["auc"],
                      "acc": m["accuracy"], "same": m["pairs_same"], "rank1": o["rank1"]}))
    """
)


@pytest.mark.slow
def test_a_million_pairs_in_modest_memory():
    out = subprocess.run(
        [sys.executable, "-c", MILLION], capture_output=True, text=True, timeout=600, check=True
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # scores, sort buffers and per-fold masks; no (N, D) gather, no (P, G) matrix
    assert r["open_extra_mib"] < 128 and r["pairs_extra_mib"] < 256, r
    assert 0.5 < r["auc"] <= 1.0 and 0.5 < r["acc"] <= 1.0 and r["same"] > 1000, r
    assert 0 < r["rank1"] <= 1.0
