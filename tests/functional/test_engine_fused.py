"""The fused Triton kernels (contrastkit.functional.fused), proven on a CPU through Triton's
interpreter: equal to the torch tile loop and to float64 within docs/engine.md's accuracy
contract, in value and gradient, for fp32 / bf16 / fp16 and every structure the fused path takes.

Triton chooses its interpreter when it is imported (``TRITON_INTERPRET=1``) for the whole
process, so the interpreter cases run in one subprocess (``fused_interpreter_worker.py``,
~10 s of CPU) whose figures the tests below read; the benchmark's dry run
(``benchmarks/bench_gpu_engine.py --dry-run``) runs in it too. The path selection runs here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="the fused kernels need triton (pip install triton)")

from contrastkit.functional import KeyRoles, fused
from contrastkit.functional.engine import ContrastiveProblem, RowShards

HERE = Path(__file__).resolve().parent
CONTRACT = {  # docs/engine.md: half inputs against float64 on the same rounded inputs
    "loss_rtol": 1e-3,
    "anchor_tol": 1e-2,
    "grad_cos": 0.9999,
}
FP32 = {"loss_rtol": 1e-5, "anchor_tol": 1e-5, "grad_cos": 1 - 1e-7}
CASES = (
    "symmetric info_nce fp32",
    "symmetric info_nce bf16 tau=0.01",
    "one-directional info_nce fp16, reduction=none",
    "nt_xent bf16 (self_offset)",
    "supcon fp32 (labels, self_offset)",
    "symmetric info_nce bf16, labels + ids, reduction=none",
    "info_nce fp32, shared negatives + ids, dot",
    "symmetric info_nce bf16, shared negatives, raw products",
)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict:
    """The worker's figures (one subprocess for the whole module)."""
    src = str(HERE.parents[1] / "src")
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
    }
    out = tmp_path_factory.mktemp("fused")
    proc = subprocess.run(
        [sys.executable, str(HERE / "fused_interpreter_worker.py"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("case", CASES)
def test_interpreter_parity(interpreted, case):
    f = interpreted["engine"][case]
    tol = CONTRACT if f["half"] else FP32
    assert f["fused_ran"], f"{case}: the engine did not take the fused path"
    assert f["loss_dtype"] == "torch.float32" and f["grad_dtypes_ok"], case
    assert f["rel_vs_f64"] <= tol["loss_rtol"], f
    assert f["anchor_vs_f64"] <= tol["anchor_tol"], f
    assert f["cos_vs_f64"] >= tol["grad_cos"], f
    # and the same as the torch tile loop in the same dtype, within the same contract
    assert f["rel_vs_torch"] <= tol["loss_rtol"], f
    assert f["cos_vs_torch"] >= tol["grad_cos"], f
    if not f["half"]:
        assert f["grad_err_vs_torch"] <= 1e-5, f


def test_fp16_operands(interpreted):
    """fp16 operands in the kernels (the CUDA case; a CPU upcasts fp16 inputs to float32)."""
    f = interpreted["fp16_operands"]
    assert f["rel_vs_f64"] <= CONTRACT["loss_rtol"], f
    assert f["cos_vs_f64"] >= CONTRACT["grad_cos"], f


def test_row_shards(interpreted):
    """The symmetric loss with its rows on 2 simulated ranks (column statistics all-reduced):
    the same as the torch path's sharded run and as the whole batch in float64."""
    f = interpreted["row_shards"]
    assert f["fused_ran"], f
    assert f["rel_vs_f64"] <= FP32["loss_rtol"] and f["cos_vs_f64"] >= FP32["grad_cos"], f
    assert f["rel_vs_torch"] <= FP32["loss_rtol"] and f["cos_vs_torch"] >= FP32["grad_cos"], f


def test_benchmark_dry_run(interpreted):
    """benchmarks/bench_gpu_engine.py --dry-run: the GPU script's logic at tiny sizes."""
    run = interpreted["bench_dry_run"]
    assert run["returncode"] == 0
    tuning = run["report"]["tuning"]["bfloat16"]
    assert {kind: bool(t["chosen"]) for kind, t in tuning.items()} == {"stats": True, "grad": True}
    rows = run["report"]["rows"]
    assert {(r["dtype"], r["path"]) for r in rows} == {
        (d, p) for d in ("bfloat16", "float32") for p in ("fused", "tiled", "dense_clip")
    }
    assert all(r["fused_ran"] for r in rows if r["path"] == "fused")
    losses = {r["dtype"]: [] for r in rows}
    for r in rows:
        losses[r["dtype"]].append(r["loss"])
    for dtype, values in losses.items():  # three paths, one loss
        assert max(values) - min(values) <= 1e-2 * abs(values[0]), (dtype, values)


def _problem(**kw) -> ContrastiveProblem:
    q = torch.randn(6, 4, dtype=kw.pop("dtype", torch.float32))
    return ContrastiveProblem(q, kw.pop("key", q.clone()), **kw)


def test_unsupported_structures_say_why():
    ok = [
        _problem(),
        _problem(symmetric=True, self_offset=0, positive_offset=None,
                 roles=KeyRoles(query_labels=torch.arange(6), key_labels=torch.arange(6))),
        _problem(negatives=torch.randn(3, 4), roles=KeyRoles(query_ids=torch.arange(6),
                                                             key_ids=torch.arange(6))),
        _problem(dtype=torch.bfloat16),
    ]  # fmt: skip
    ok.append(_problem(symmetric=True, row_shards=RowShards(0, lambda x, op: x)))
    assert [fused.unsupported(p, "cosine") for p in ok] == [None] * 5
    mask = torch.eye(6, dtype=torch.bool)
    reasons = {
        "float64": fused.unsupported(_problem(dtype=torch.float64), "cosine"),
        "euclidean": fused.unsupported(_problem(), "euclidean"),
        "per-query": fused.unsupported(_problem(negatives=torch.randn(6, 2, 4)), "dot"),
        "mask": fused.unsupported(_problem(roles=KeyRoles(positive_mask=mask)), "dot"),
    }
    for word, reason in reasons.items():
        assert reason is not None and word in reason, (word, reason)


def test_cpu_tensors_keep_the_torch_path_unless_interpreted(monkeypatch):
    p = _problem()
    assert not fused.runs_fused(p, "cosine")  # auto: CUDA only
    with fused.fused_kernels("off"):
        assert not fused.runs_fused(p, "cosine")
    if not fused.interpreter_on():  # this process imported triton without the interpreter
        with fused.fused_kernels("interpret"), pytest.raises(RuntimeError, match="TRITON_INTERP"):
            fused.runs_fused(p, "cosine")
    monkeypatch.setenv(fused.ENV, "off")
    assert fused.current_mode() == "off"
    monkeypatch.setenv(fused.ENV, "sometimes")
    with pytest.raises(ValueError, match="CONTRASTKIT_FUSED_KERNELS"):
        fused.current_mode()
    with pytest.raises(ValueError, match="'off'"), fused.fused_kernels("never"):
        pass
