"""Softmax-contrastive losses: dense vs chunked engine vs peers, time, throughput and peak memory.

Each configuration runs in its own subprocess (``python bench_losses.py --worker '<json>'``):
it allocates the inputs, resets the kernel's peak-RSS mark (VmHWM) and reads the baseline RSS, runs forward + backward once
to warm up, then ``reps`` timed runs, and reports the median time and the peak RSS above the
baseline ("peak extra memory"). Effective GFLOP/s count the necessary products only: forward
``2 B N D`` per direction pass, backward ``2 * 2 B N D``; "% mm" compares with the machine's own
matmul GFLOP/s at 2048x256 @ 256x2048 fp32, measured in the same process interleaved with the
timed runs: before every run (warm-up included) and after the last, 5 products each, and the
reference is the median of those per-window rates. The speed of a shared CPU drifts by
+-20 % within minutes; interleaving gives the reference and the loss the same moments (a
reference taken only before and after a row could land on a fast or a slow moment).

Half precision: the B = 8,192 symmetric, one-directional and SupCon rows (and the B = 65,536
symmetric peak-memory row) are repeated with bf16 and fp16 inputs beside the fp32 rows, each with
the matmul reference of its own dtype (``matmul_gflops`` column), the dense formulation
(open_clip's, under the same dtype) beside the engine, and ``speedup_vs_fp32`` = the fp32 row's
time over the half row's (same loss, B and path).

CUDA: when ``torch.cuda.is_available()`` every row runs on the GPU (timings synchronised, peak
memory from ``torch.cuda.max_memory_allocated`` above the allocation after the inputs).

Environment: ``CK_BENCH_QUICK=1`` for small sizes (smoke test), ``CK_BENCH_SKIP_HUGE=1`` to skip
the B = 65,536 symmetric chunked runs (the longest ones: about 9 TFLOP each).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parents[1] / "src"
QUICK = os.environ.get("CK_BENCH_QUICK") == "1"
D = 256
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HALF = ("bfloat16", "float16")


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(repeats: int = 20, dtype: str = "float32") -> float:
    """GFLOP/s of 2048x256 @ 256x2048 in ``dtype`` on DEVICE, median of ``repeats`` products."""
    dt = getattr(torch, dtype)
    a = torch.randn(2048, D, device=DEVICE).to(dt)
    b = torch.randn(D, 2048, device=DEVICE).to(dt)
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        torch.mm(a, b)
        _sync()
        times.append(time.perf_counter() - start)
    return 2 * 2048 * 2048 * D / statistics.median(times) / 1e9


def _loss_fn(cfg: dict):
    """Build (inputs, closure) for one configuration."""
    sys.path.insert(0, str(SRC))
    import contrastkit.functional as F
    from contrastkit.functional import engine

    b, kind, path = cfg["B"], cfg["loss"], cfg["path"]
    dt = getattr(torch, cfg.get("dtype", "float32"))
    g = torch.Generator().manual_seed(0)

    def randn(*shape):  # seeded on the CPU, then moved: the same inputs on every device
        return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dt).requires_grad_()

    chunk = cfg.get("chunk")  # None: the engine's automatic block size
    if path == "dense":
        engine.DENSE_MAX_LOGITS = 1 << 62  # force the dense reference path
    elif path == "chunked":
        engine.DENSE_MAX_LOGITS = 0  # force the chunked path, automatic blocks
    if kind in ("info_nce_symmetric", "info_nce"):
        q, k = randn(b, D), randn(b, D)
        sym = kind == "info_nce_symmetric"
        if path == "peer":  # open_clip's ClipLoss formulation (sym) / plain cross-entropy

            def fn():
                qn = torch.nn.functional.normalize(q, dim=-1)
                kn = torch.nn.functional.normalize(k, dim=-1)
                logits = qn @ kn.T / 0.07  # (B, B) in the input dtype
                labels = torch.arange(b, device=DEVICE)
                loss = torch.nn.functional.cross_entropy(logits, labels)
                if sym:
                    loss = 0.5 * (loss + torch.nn.functional.cross_entropy(logits.T, labels))
                return loss

        else:

            @F.tiling(chunk_size=chunk)
            def fn():
                return F.info_nce(q, k, temperature=0.07, symmetric=sym)

        return [q, k], fn, 3 * 2 * b * b * D  # fwd 2BBD + bwd 2*2BBD
    z = randn(b, D)  # b embeddings in all
    if kind == "nt_xent":
        if path == "peer":
            from pytorch_metric_learning import losses

            pml = losses.NTXentLoss(temperature=0.07)
            labels = torch.arange(b // 2, device=DEVICE).repeat(2)
            return [z], lambda: pml(z, labels), 3 * 2 * b * b * D
        h = b // 2
        return (
            [z],
            F.tiling(chunk_size=chunk)(lambda: F.nt_xent(z[:h], z[h:], temperature=0.07)),
            3 * 2 * b * b * D,
        )
    labels = torch.arange(b, device=DEVICE) % max(b // 8, 1)  # SupCon: 8 examples per class
    if path == "peer":
        from pytorch_metric_learning import losses

        pml = losses.SupConLoss(temperature=0.07)
        return [z], lambda: pml(z, labels), 3 * 2 * b * b * D
    return (
        [z],
        F.tiling(chunk_size=chunk)(lambda: F.supervised_contrastive(z, labels, temperature=0.07)),
        3 * 2 * b * b * D,
    )


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; return the baseline in KiB.

    Without the reset, a peak reached while importing would hide smaller peaks of the run.
    Falls back to ``ru_maxrss`` where /proc/self/clear_refs is unavailable.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss() -> int:
    try:
        return _status_kib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker(cfg: dict) -> dict:
    torch.set_num_threads(cfg.get("threads", torch.get_num_threads()))
    dtype = cfg.get("dtype", "float32")
    inputs, fn, flops = _loss_fn(cfg)
    matmul_gflops(3, dtype)  # warm the product's code path before the first window
    # ...and the loss's own (libraries it loads, JIT kernels: oneDNN's bf16 GEMM is ~33 MiB of
    # code and tables), on a small batch, so the peak below is the loss's memory alone
    _warm_inputs, warm_fn, _ = _loss_fn({**cfg, "B": min(cfg["B"], 512)})
    warm_fn().backward()
    del _warm_inputs, warm_fn
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() // 1024
    else:
        base = _reset_peak_rss()
    times, reference = [], []
    for _ in range(cfg["reps"] + 1):
        reference.append(matmul_gflops(5, dtype))
        for t in inputs:
            t.grad = None
        _sync()
        start = time.perf_counter()
        fn().backward()
        _sync()
        times.append(time.perf_counter() - start)
    reference.append(matmul_gflops(5, dtype))
    peak = torch.cuda.max_memory_allocated() // 1024 if DEVICE == "cuda" else _peak_rss()
    timed = times[1:] if len(times) > 1 else times
    return {
        "time_s": statistics.median(timed),
        "peak_extra_mib": (peak - base) / 1024,
        "flops": flops,
        "matmul_gflops": statistics.median(reference),  # interleaved with the runs
    }


def _spawn(cfg: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run() -> dict:
    mm = matmul_gflops()
    sizes = (256, 512) if QUICK else (2048, 8192, 16384)
    if not QUICK:
        plan_small = [("nt_xent", 512, ["dense", "chunked", "peer"], 3)]
    peer_max = 512 if QUICK else 8192
    rows = []
    plan = [] if QUICK else list(plan_small)
    for b in sizes:
        reps = 5 if b <= 8192 else 3
        for loss in ("info_nce_symmetric", "info_nce"):
            plan.append(
                (
                    loss,
                    b,
                    ["dense", "chunked", "peer"] if b <= peer_max else ["dense", "chunked"],
                    reps,
                )
            )
        if b <= peer_max:
            # pytorch-metric-learning's NTXentLoss holds a (positive pairs x negative pairs)
            # matrix, O(B^3): 34 GB at B = 2048, so it is measured at B = 512 only.
            nt_peer = ["peer"] if b <= 512 else []
            plan.append(("nt_xent", b, ["dense", "chunked", *nt_peer], reps))
            plan.append(("supcon", b, ["dense", "chunked", "peer"], reps))
    plan = [(*entry, "float32") for entry in plan]
    b_half = 512 if QUICK else 8192
    reps_half = 5 if b_half <= 8192 else 3
    for dtype in HALF:  # beside the fp32 rows of the same B
        plan.append(("info_nce_symmetric", b_half, ["dense", "chunked", "peer"], reps_half, dtype))
        plan.append(("info_nce", b_half, ["chunked", "peer"], reps_half, dtype))
        plan.append(("supcon", b_half, ["chunked"], reps_half, dtype))
    for loss, b, paths, reps, dtype in plan:
        res = {
            p: _spawn({"loss": loss, "B": b, "path": p, "reps": reps, "dtype": dtype})
            for p in paths
        }
        dense_t = res["dense"].get("time_s") if "dense" in res else None
        for p in paths:
            r = res[p]
            if "error" in r:
                rows.append({"loss": loss, "B": b, "dtype": dtype, "path": p, "time_s": r["error"]})
                continue
            gflops = r["flops"] / r["time_s"] / 1e9
            local_mm = r["matmul_gflops"]
            rows.append(
                {
                    "loss": loss,
                    "B": b,
                    "dtype": dtype,
                    "path": "open_clip-style dense CLIP"
                    if p == "peer" and "info" in loss
                    else ("pytorch-metric-learning" if p == "peer" else p),
                    "time_s": r["time_s"],
                    "speedup_vs_dense": dense_t / r["time_s"] if dense_t else float("nan"),
                    "gflops": gflops,
                    "pct_matmul": 100 * gflops / local_mm,
                    "matmul_gflops": local_mm,
                    "peak_extra_mib": r["peak_extra_mib"],
                }
            )
            print(rows[-1], flush=True)
    huge = [] if QUICK or os.environ.get("CK_BENCH_SKIP_HUGE") == "1" else [65536]
    for b, dtype in ((b, dt) for b in huge for dt in ("float32", "bfloat16")):
        cfg = {"loss": "info_nce_symmetric", "B": b, "path": "chunked", "reps": 0, "dtype": dtype}
        r = _spawn(cfg)
        if "error" not in r:
            rows.append(
                {
                    "loss": "info_nce_symmetric",
                    "B": b,
                    "dtype": dtype,
                    "path": "chunked",
                    "time_s": r["time_s"],
                    "speedup_vs_dense": float("nan"),
                    "gflops": r["flops"] / r["time_s"] / 1e9,
                    "pct_matmul": 100 * r["flops"] / r["time_s"] / 1e9 / r["matmul_gflops"],
                    "matmul_gflops": r["matmul_gflops"],
                    "peak_extra_mib": r["peak_extra_mib"],
                }
            )
    fp32_time = {
        (r["loss"], r["B"], r["path"]): r["time_s"]
        for r in rows
        if r.get("dtype") == "float32" and isinstance(r["time_s"], float)
    }
    for r in rows:
        ref = fp32_time.get((r["loss"], r["B"], r["path"]))
        half = r.get("dtype") != "float32" and ref and isinstance(r["time_s"], float)
        r["speedup_vs_fp32"] = ref / r["time_s"] if half else float("nan")  # rows share keys
    notes = (
        f"device {DEVICE}; D={D}, fp32 (plus bf16 / fp16 rows: B = {b_half} symmetric, "
        "one-directional and SupCon, B = 65,536 symmetric; matmul_gflops in the row's dtype), "
        f"forward + backward, temperature 0.07, cosine; matmul {mm:.1f} GFLOP/s at "
        f"start (2048x256 @ 256x2048, median of 20), torch threads {torch.get_num_threads()}; "
        "pct_matmul divides by matmul_gflops measured in each row's subprocess interleaved "
        "with its timed runs (5 products before each run and after the last; the median of "
        "those windows), so a shared CPU's drifting speed affects both alike. Chunked = "
        "contrastkit engine with its automatic blocks (full-width strips of 2**23 // B rows "
        "in [64, 2048] for the one-directional losses, 1024 x 4096 tiles for the symmetric "
        "one); peer rows: dense CLIP cross-entropy both ways written inline (open_clip ClipLoss formulation) and pytorch-metric-learning "
        "NTXentLoss / SupConLoss. nt_xent / supcon: B embeddings in all. Peak extra memory: "
        "peak RSS (VmHWM, reset after allocating the inputs) of a fresh subprocess above the "
        "RSS at that point."
        + (" QUICK mode (CK_BENCH_QUICK=1): smoke-test sizes." if QUICK else "")
    )
    return {
        "title": "Softmax contrastive losses: dense vs chunked engine",
        "rows": rows,
        "notes": notes,
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        print(json.dumps(run(), indent=1))
