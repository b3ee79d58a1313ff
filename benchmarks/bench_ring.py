"""The ring vs the gathered keys: memory and time per process of symmetric InfoNCE on W gloo
processes (``info_nce(..., group=..., collective="ring" | "gather")``).

For W = 2, 3 and 4: W processes (one torch thread each) on this machine, B = 4,096 rows per
process, D = 256, float32, cosine, symmetric; each process holds its (B, D) queries and keys
and runs forward + backward. In ONE process group the two collectives alternate (gather, ring,
gather, ring, ...), so both see the same machine load. Before each step the process's peak RSS
is reset (``/proc/self/clear_refs``), so ``peak = peak RSS during the step - RSS just before
it``: the memory the step itself needs (the largest over the ranks). ``first_step_peak_mb``
is the first full-size step's (it includes buffers a path allocates once and keeps, e.g. the
engine's pool of kept tiles, ``TILE_CACHE_BYTES``); ``step_peak_mb`` the largest of the
later steps'. ``step_s``: the median over the repeats of the slowest rank's step. The ring's loss
and gradients are compared with the gathered path's (float32 round-off).

Run: ``python benchmarks/run.py ring`` (or ``python benchmarks/bench_ring.py``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROWS = 4096
DIM = 256
WORLDS = (2, 3, 4)
MODES = ("gather", "ring")
REPEATS = 3


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak RSS) to the current RSS


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: alternate the collectives, write its rows to ``out/rank<r>.json``."""
    import torch
    import torch.distributed as dist

    from contrastkit.functional import info_nce

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    g = torch.Generator().manual_seed(rank)
    q = torch.randn(ROWS, DIM, generator=g).requires_grad_()
    k = (q.detach() + 0.3 * torch.randn(ROWS, DIM, generator=g)).requires_grad_()

    def step(collective: str, rows: int = ROWS) -> float:
        q.grad = k.grad = None
        loss = info_nce(
            q[:rows],
            k[:rows],
            temperature=0.05,
            symmetric=True,
            group=dist.group.WORLD,
            collective=collective,
        )
        loss.backward()
        return float(loss.detach())

    for mode in MODES:  # warm-up: one-time allocations of both paths are in the baseline
        step(mode, 256)
    q.grad = k.grad = None
    rows: list[dict] = []
    results = {}
    for _ in range(REPEATS):
        for mode in MODES:
            dist.barrier()
            baseline = _rss_mb()
            _reset_peak()
            start = time.perf_counter()
            loss = step(mode)
            seconds = time.perf_counter() - start
            peak = _peak_mb()
            results[mode] = (loss, [q.grad, k.grad])
            rows.append({"mode": mode, "step_s": seconds, "step_peak_mb": peak - baseline})
    (loss_g, grads_g), (loss_r, grads_r) = results["gather"], results["ring"]
    diff = max(float((a - b).abs().max()) for a, b in zip(grads_r, grads_g))
    scale = max(float(b.abs().max()) for b in grads_g)
    summary = {"loss_diff": abs(loss_r - loss_g), "rel_grad_diff": diff / scale}
    Path(out, f"rank{rank}.json").write_text(json.dumps({"rows": rows, **summary}))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group(world: int) -> list[dict]:
    out = tempfile.mkdtemp(prefix="ck_bench_ring_")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=worker, args=(r, world, port, out)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise RuntimeError(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
    return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def run() -> dict:
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    # A fixed mmap threshold makes glibc return large freed blocks to the OS, so RSS follows
    # what is live instead of what the heap once held (the children inherit it).
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    load = os.getloadavg()
    try:
        table = []
        for world in WORLDS:
            ranks = _group(world)
            for mode in MODES:
                steps = [[r for r in rank["rows"] if r["mode"] == mode] for rank in ranks]
                slowest = [max(s[i]["step_s"] for s in steps) for i in range(REPEATS)]
                table.append(
                    {
                        "W": world,
                        "collective": mode,
                        "B_per_rank": ROWS,
                        "D": DIM,
                        "first_step_peak_mb": round(max(s[0]["step_peak_mb"] for s in steps), 1),
                        "step_peak_mb": round(
                            max(r["step_peak_mb"] for s in steps for r in s[1:]), 1
                        ),
                        "step_s": round(statistics.median(slowest), 2),
                        "rel_grad_diff_vs_gather": (
                            max(rank["rel_grad_diff"] for rank in ranks) if mode == "ring" else 0.0
                        ),
                    }
                )
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    return {
        "title": "Ring vs gathered keys: symmetric InfoNCE per process (gloo, 1 thread each)",
        "rows": table,
        "notes": (
            "peak = peak RSS during forward + backward minus the RSS just before it, largest "
            "over the ranks: of the first full-size step (first_step_peak_mb, with what a path "
            f"allocates once and keeps) and of the {REPEATS - 1} later ones (step_peak_mb); "
            "step_s = median over the "
            "repeats of the slowest rank; the collectives alternate in one process group. "
            f"All W processes share this machine's cores (load average before: "
            f"{load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}), so times are indicative."
        ),
    }


if __name__ == "__main__":
    result = run()
    for r in result["rows"]:
        print(r)
    print(result["notes"])
