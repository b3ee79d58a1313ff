"""The fused Triton kernels (contrastkit.functional.fused), proven on a CPU through Triton's
interpreter: equal to the torch tile loop and to float64 within docs/engine.md's accuracy
contract, in value and gradient, for fp32 / bf16 / fp16 and every structure the fused path takes.

Triton chooses its interpreter when it is imported (``TRITON_INTERPRET=1``) for the whole
process, so the interpreter cases run in one subprocess (``fused_interpreter_worker.py``,
~13 s of CPU) whose figures one test reads (one test, so that pytest-xdist never starts the
subprocess twice); the benchmark's dry run (``benchmarks/bench_gpu_engine.py --dry-run``) runs
in it too. The path selection is tested in this process.
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


def _interpreted(out: Path) -> dict:
    """The worker's figures: one subprocess with Triton's interpreter on."""
    src = str(HERE.parents[1] / "src")
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "fused_interpreter_worker.py"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _engine_case_problems(case: str, f: dict) -> list[str]:
    """What is wrong with one case's figures (empty: within the contract)."""
    tol = CONTRACT if f["half"] else FP32
    checks = {
        "the engine took the fused path": f["fused_ran"],
        "loss float32, gradients in the input dtypes": f["loss_dtype"] == "torch.float32"
        and f["grad_dtypes_ok"],
        "loss vs float64": f["rel_vs_f64"] <= tol["loss_rtol"],
        "per-anchor loss vs float64": f["anchor_vs_f64"] <= tol["anchor_tol"],
        "gradients vs float64": f["cos_vs_f64"] >= tol["grad_cos"],
        # and the same as the torch tile loop in the same dtype, within the same contract
        "loss vs the torch path": f["rel_vs_torch"] <= tol["loss_rtol"],
        "gradients vs the torch path": f["cos_vs_torch"] >= tol["grad_cos"]
        and (f["half"] or f["grad_err_vs_torch"] <= 1e-5),
    }
    return [f"{case}: {what} ({f})" for what, ok in checks.items() if not ok]


def _dry_run_problems(run: dict) -> list[str]:
    """benchmarks/bench_gpu_engine.py --dry-run: its logic ran, all three paths, one loss."""
    if run["returncode"] != 0:
        return [f"bench dry run exited {run['returncode']}"]
    report, out = run["report"], []
    if not all(t["chosen"] for t in report["tuning"]["bfloat16"].values()):
        out.append(f"bench tuning chose nothing: {report['tuning']}")
    rows = report["rows"]
    paths = {(r["dtype"], r["path"]) for r in rows}
    if paths != {(d, p) for d in ("bfloat16", "float32") for p in ("fused", "tiled", "dense_clip")}:
        out.append(f"bench rows: {sorted(paths)}")
    if not all(r.get("fused_ran") for r in rows if r["path"] == "fused"):
        out.append(f"bench fused rows fell back: {rows}")
    for dtype in ("bfloat16", "float32"):
        values = [r["loss"] for r in rows if r["dtype"] == dtype and "loss" in r]
        if max(values) - min(values) > 1e-2 * abs(values[0]):
            out.append(f"bench {dtype}: three paths, three losses {values}")
    return out


def test_fused_kernels_through_the_interpreter(tmp_path):
    """Every case of the worker in one test (one subprocess, whatever pytest-xdist's split):
    the engine cases within the contract against float64 and the torch path, fp16 operands in
    the kernels themselves (the CUDA case; a CPU upcasts fp16 inputs to float32), the symmetric
    loss with its rows on 2 simulated ranks (column statistics all-reduced) against the whole
    batch, and the GPU benchmark's dry run."""
    figures = _interpreted(tmp_path)
    assert set(figures["engine"]) == set(CASES)
    problems = []
    for case in CASES:
        problems += _engine_case_problems(case, figures["engine"][case])
    f16 = figures["fp16_operands"]
    if not (
        f16["rel_vs_f64"] <= CONTRACT["loss_rtol"] and f16["cos_vs_f64"] >= CONTRACT["grad_cos"]
    ):
        problems.append(f"fp16 operands: {f16}")
    shards = figures["row_shards"]
    if not (
        shards["fused_ran"]
        and shards["rel_vs_f64"] <= FP32["loss_rtol"]
        and shards["cos_vs_f64"] >= FP32["grad_cos"]
        and shards["rel_vs_torch"] <= FP32["loss_rtol"]
        and shards["cos_vs_torch"] >= FP32["grad_cos"]
    ):
        problems.append(f"row_shards: {shards}")
    problems += _dry_run_problems(figures["bench_dry_run"])
    assert not problems, "\n".join(problems)


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
