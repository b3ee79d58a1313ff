"""GradCache vs the plain step: peak memory and time of one contrastive step at batch 4,096.

Each mode runs in its own subprocess (so peak RSS is that mode's alone): a small MLP encoder
(64 -> 1024 -> 1024 -> 1024 -> 128, GELU) embeds 4,096 queries and 4,096 keys, InfoNCE
(symmetric, cosine) on the full batch, backward. ``plain`` keeps the activations of the whole
batch; ``gradcache_<c>`` runs :func:`contrastkit.gradcache.grad_cache_step` with chunk size c.
Gradient buffers are allocated and a small warm-up step runs before the baseline is read
(both modes hold them), so
``step_peak_mb = peak RSS - RSS before the step`` is the memory the step itself needs. Every mode
saves its encoder gradients; ``max_grad_diff`` is against the plain step.

Run: ``python benchmarks/run.py scaling`` (or ``python benchmarks/bench_scaling.py``).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 4096
CHUNKS = (128, 512)
REPEATS = 2


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(mode: str, out: str) -> None:
    """One mode in a fresh process: print a JSON row, save the gradients to ``out``."""
    import torch
    from torch import nn

    from contrastkit.functional import info_nce
    from contrastkit.gradcache import grad_cache_step

    torch.manual_seed(0)
    enc = nn.Sequential(
        nn.Linear(64, 1024),
        nn.GELU(),
        nn.Linear(1024, 1024),
        nn.GELU(),
        nn.Linear(1024, 1024),
        nn.GELU(),
        nn.Linear(1024, 128),
    )
    g = torch.Generator().manual_seed(1)
    x_q = torch.randn(BATCH, 64, generator=g)
    x_k = x_q + 0.1 * torch.randn(BATCH, 64, generator=g)

    def loss_fn(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return info_nce(q, k, temperature=0.05, symmetric=True)

    for p in enc.parameters():
        p.grad = torch.zeros_like(p)
    # Warm-up on a small batch through both paths: one-time library allocations (oneDNN/MKL
    # primitives, thread pools) are then in the baseline of every mode.
    loss_fn(enc(x_q[:256]), enc(x_k[:256])).backward()
    grad_cache_step(enc, (x_q[:256], x_k[:256]), loss_fn, chunk_size=64)
    times = []
    baseline = _rss_mb()
    for _ in range(REPEATS):
        for p in enc.parameters():
            p.grad.zero_()
        start = time.perf_counter()
        if mode == "plain":
            loss = loss_fn(enc(x_q), enc(x_k))
            loss.backward()
        else:
            chunk = int(mode.split("_")[1])
            loss = grad_cache_step(enc, (x_q, x_k), loss_fn, chunk_size=chunk)
        times.append(time.perf_counter() - start)
    peak = _peak_mb()
    torch.save([p.grad for p in enc.parameters()], out)
    row = {
        "mode": mode,
        "batch": BATCH,
        "loss": round(float(loss), 6),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "step_peak_mb": round(peak - baseline, 1),
        "step_s": round(min(times), 3),
    }
    print(json.dumps(row))


def run() -> dict:
    import torch

    rows = []
    grads = {}
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    # A fixed mmap threshold makes glibc return large freed blocks to the OS, so RSS follows
    # what is live instead of what the heap once held (same setting for every mode).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ["plain", *(f"gradcache_{c}" for c in CHUNKS)]:
            out = str(Path(tmp, f"{mode}.pt"))
            proc = subprocess.run(
                [sys.executable, __file__, "--child", mode, out],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            grads[mode] = torch.load(out)
    plain = rows[0]
    for row in rows:
        diff = max(float((a - b).abs().max()) for a, b in zip(grads[row["mode"]], grads["plain"]))
        scale = max(float(b.abs().max()) for b in grads["plain"])
        row["max_grad_diff"] = diff
        row["rel_grad_diff"] = diff / scale
        row["mem_vs_plain"] = round(row["step_peak_mb"] / max(plain["step_peak_mb"], 1e-9), 3)
        row["time_vs_plain"] = round(row["step_s"] / plain["step_s"], 3)
    return {
        "title": "Gradient caching: one InfoNCE step at batch 4,096 (MLP encoder, CPU)",
        "rows": rows,
        "notes": (
            "step_peak_mb = peak RSS of the subprocess minus its RSS just before the step "
            "(parameters, gradient buffers and data are already allocated in both). Target: "
            "GradCache mem_vs_plain <= 0.25 with gradients equal to the plain step "
            "(rel_grad_diff at float32 round-off). GradCache runs every encoder forward twice, "
            "so time_vs_plain > 1 is expected. step_s is the faster of "
            f"{REPEATS} steps; the CPU may be shared, so times are indicative."
        ),
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        result = run()
        for r in result["rows"]:
            print(r)
