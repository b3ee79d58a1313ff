"""The engine on a GPU (issue 34): CUDA parity tests, then the loss benchmark, in one script.

On a CUDA machine (``python benchmarks/bench_gpu_engine.py``, about 10 minutes):

1. the parity tests, ``pytest tests/functional/test_engine_cuda.py`` (every CUDA case with the
   fused Triton kernels compiled for real and with the torch tile loop) and
   ``tests/functional/test_engine_fused.py`` (the interpreter parity, run here too);
2. the GPU's matmul rate in bf16 and fp32 (``torch.mm``, square 8,192 and the loss's own shape
   8,192 x D @ D x 8,192), measured in this process;
3. a short tuning of the kernels' block configs at B = 32,768 (each of
   ``fused.default_configs`` timed, the fastest first in ``fused.CONFIGS`` for the rows);
4. symmetric InfoNCE (cosine, tau = 0.07), forward + backward, at B = 8,192 / 32,768 / 131,072,
   D = 512, bf16 and fp32 inputs: the fused Triton path, the torch tile loop
   (``fused_kernels("off")``) and open_clip's dense ``ClipLoss`` formulation (the (B, B) logits
   in the input dtype, cross-entropy both ways) where it fits. Per row: median time of the
   timed runs after a warm-up (CUDA events), effective TFLOP/s counting the three necessary
   products (``3 * 2 B^2 D``: logits, dQ, dK) and their share of the bf16 / fp32 matmul rate,
   peak memory above the inputs (``torch.cuda.max_memory_allocated``), and for the fused rows
   whether the fused kernels really ran (their autograd node in the loss's graph).

It prints a table and writes ``benchmarks/results/gpu_engine.json`` (``--out`` to change;
the targets of issue 34: fused >= 2x the torch tile loop and >= 50 % of the bf16 matmul rate at
B = 32,768).

``--compile-check 90`` compiles every default block config of both kernels for sm_90 (or
another compute capability) with Triton's bundled ``ptxas``, on any machine: shared memory,
registers, spills and tensor-core use per config (docs/engine.md has the figures).

``--dry-run`` runs the same code on a CPU at tiny sizes (B = 24, D = 16), the kernels
through Triton's interpreter (``TRITON_INTERPRET=1``, set here before anything imports Triton),
no pytest: to know the script imports and its logic runs (``tests/functional/test_engine_fused.py``
calls it). Its figures mean nothing.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "--dry-run" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first import of triton

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from contrastkit.atomic import write_json  # noqa: E402
from contrastkit.functional import (  # noqa: E402
    fused,
    info_nce,
    tiling,
)
from contrastkit.functional.fused import fused_kernels, in_graph, interpreter_on  # noqa: E402

SIZES = (8192, 32768, 131072)
DIM = 512
DTYPES = ("bfloat16", "float32")
PATHS = ("fused", "tiled", "dense_clip")
TEMPERATURE = 0.07


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, reps: int) -> list[float]:
    """Seconds per call of ``fn`` (CUDA events on a GPU, wall clock on a CPU)."""
    out = []
    for _ in range(reps):
        _sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def matmul_tflops(device: torch.device, dtype: torch.dtype, m: int, k: int, reps: int) -> float:
    """TFLOP/s of ``(m, k) @ (k, m)`` in ``dtype`` (median of ``reps`` after a warm-up)."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, m, device=device).to(dtype)
    torch.mm(a, b)
    times = _time(lambda: torch.mm(a, b), device, reps)
    return 2 * m * m * k / statistics.median(times) / 1e12


def _clip_loss(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """open_clip's ``ClipLoss``: dense (B, B) logits in the input dtype, cross-entropy both ways."""
    qn = torch.nn.functional.normalize(q, dim=-1)
    kn = torch.nn.functional.normalize(k, dim=-1)
    logits = qn @ kn.T / TEMPERATURE
    labels = torch.arange(q.shape[0], device=q.device)
    ce = torch.nn.functional.cross_entropy
    return 0.5 * (ce(logits, labels) + ce(logits.T, labels))


def _dense_fits(b: int, dtype: torch.dtype, device: torch.device) -> bool:
    """The dense formulation holds about four (B, B) matrices (logits, their transpose's
    softmax, two gradients) in the input dtype and float32: skip it where that exceeds 80 % of
    the free memory."""
    if device.type != "cuda":
        return True
    need = b * b * (2 * torch.finfo(dtype).bits // 8 + 2 * 4)
    free, _ = torch.cuda.mem_get_info(device)
    return need <= 0.8 * free


def run_row(b: int, dim: int, dtype: torch.dtype, path: str, device: torch.device, reps: int):
    """One row: time, effective rate and peak memory of symmetric InfoNCE forward + backward."""
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(b, dim, generator=g).to(device=device, dtype=dtype).requires_grad_()
    k = (0.5 * q.detach().float() + torch.randn(b, dim, generator=g).to(device)).to(dtype)
    k.requires_grad_()
    row = {"B": b, "D": dim, "dtype": str(dtype).removeprefix("torch."), "path": path}
    if path == "dense_clip" and not _dense_fits(b, dtype, device):
        return {**row, "skipped": "does not fit: the dense (B, B) logits"}
    mode = "off" if path == "tiled" else ("interpret" if interpreter_on() else "auto")
    chunk = None if device.type == "cuda" else 16  # tiny dry-run sizes: force the chunked path
    fused_seen = []

    def step():
        q.grad = k.grad = None
        if path == "dense_clip":
            loss = _clip_loss(q, k)
        else:
            with fused_kernels(mode), tiling(chunk_size=chunk):
                loss = info_nce(q, k, temperature=TEMPERATURE, symmetric=True)
            fused_seen.append(in_graph(loss))
        loss.backward()
        return loss

    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        loss = step()  # warm-up (and the kernels' compilation)
        times = _time(step, device, reps)
    except torch.cuda.OutOfMemoryError:
        q.grad = k.grad = None
        return {**row, "skipped": "out of memory"}
    seconds = statistics.median(times)
    flops = 3 * 2 * b * b * dim
    row.update(
        seconds=seconds,
        times=times,
        tflops=flops / seconds / 1e12,
        loss=float(loss.detach()),
        fused_ran=any(fused_seen),
    )
    if device.type == "cuda":
        row["peak_extra_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return row


def _fused_seconds(b: int, dim: int, dtype: torch.dtype, device: torch.device, reps: int):
    """Median seconds of the fused forward + backward (the row's inputs), or the error."""
    try:
        r = run_row(b, dim, dtype, "fused", device, reps)
    except Exception as err:  # a config that does not compile: say so, try the next
        return None, repr(err)[:300]
    if not r.get("fused_ran"):
        return None, r.get("skipped", "fell back to the torch path")
    return r["seconds"], None


def tune(b: int, dim: int, dtype: torch.dtype, device: torch.device, dry_run: bool) -> dict:
    """Time each default block config of both kernels at (b, dim, dtype) -- the stats kernel's
    with the gradient kernel's default, then the gradient kernel's with the fastest stats
    config -- and set ``fused.CONFIGS`` to the fastest first (the rest after, as fallbacks).
    The dry run tries one candidate each (the interpreter ignores the configs)."""
    out: dict = {}
    fused.CONFIGS.clear()
    for kind in ("stats", "grad"):
        candidates = fused.default_configs(kind, dim, dtype)[: 1 if dry_run else None]
        trials = []
        for cfg in candidates:
            fused.CONFIGS[kind] = [cfg]
            seconds, error = _fused_seconds(b, dim, dtype, device, reps=1 if dry_run else 3)
            trials.append({"config": cfg, "seconds": seconds, "error": error})
            print(f"tune {kind} {cfg}: {seconds if error is None else error}", flush=True)
        ok = [t for t in trials if t["seconds"] is not None]
        best = min(ok, key=lambda t: t["seconds"])["config"] if ok else candidates[0]
        fused.CONFIGS[kind] = [best] + [c for c in candidates if c != best]
        out[kind] = {"trials": trials, "chosen": best}
    return out


def compile_check(dim: int, cc: int, dtypes: tuple[str, ...] = ("bf16", "fp32")) -> list[dict]:
    """Compile every default block config of both kernels ahead of time for compute capability
    ``cc`` with Triton's own ``ptxas`` (no GPU needed): per config the shared memory, registers per thread, spilled bytes (ptxas's stack) and the product instructions
    (``wgmma`` / ``mma.sync`` tensor cores, or ``fma``). Every config in CLIP's variant (paired
    positives; the column sums in the forward pass, both terms in the backward), the first one
    also with every option on (labels, ids, self pairs, raw-product scales)."""
    import re
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from contrastkit.functional import _fused_kernels as kernels

    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    plain = {"TRANSPOSED": False, "HAS_POS": True, "HAS_SELF": False, "HAS_LABELS": False}
    plain.update(HAS_IDS=False, HAS_SCALE=False, DOT_F32=False)  # CLIP: paired positives
    heavy = {**plain, "HAS_SELF": True, "HAS_LABELS": True, "HAS_IDS": True, "HAS_SCALE": True}
    out = []
    for op in dtypes:
        operand = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[op]
        for kind, kernel in (("stats", kernels.stats_kernel), ("grad", kernels.grad_kernel)):
            extra = {"COLUMNS": True} if kind == "stats" else {"HAS_A": True, "HAS_B": True}
            precision = {"PRECISION": "ieee" if op == "fp32" else "tf32"}
            configs = fused.default_configs(kind, dim, operand)
            # every config in CLIP's variant; the first also with every option on
            for variant, flags, cfg in [("plain", plain, c) for c in configs] + [
                ("all options", heavy, configs[0])
            ]:
                consts = {**flags, **extra, **precision}
                consts.update({k: v for k, v in cfg.items() if k.startswith("BLOCK")})
                sig = {}
                for name in kernel.arg_names:
                    if name in consts:
                        sig[name] = "constexpr"
                    elif name in ("a_ptr", "b_ptr"):
                        sig[name] = f"*{op}"
                    elif name.endswith(("lab_ptr", "id_ptr")):
                        sig[name] = "*i64"
                    else:
                        sig[name] = "*fp32" if name.endswith("_ptr") else "i32"
                options = {k: v for k, v in cfg.items() if k.startswith("num_")}
                t0 = time.perf_counter()
                row = {"cc": cc, "operand": op, "kernel": kind, "variant": variant, "config": cfg}
                try:
                    compiled = triton.compile(
                        ASTSource(kernel, sig, constexprs=consts),
                        target=GPUTarget("cuda", cc, 32),
                        options=options,
                    )
                except Exception as err:  # a compile error is the finding
                    out.append({**row, "error": repr(err)[:1000]})
                    print(out[-1], flush=True)
                    continue
                with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                    f.write(compiled.asm["cubin"])
                    f.flush()
                    usage = subprocess.run(
                        [str(cuobjdump), "--dump-resource-usage", f.name],
                        capture_output=True,
                        text=True,
                    ).stdout
                found = re.search(r"REG:(\d+).*?STACK:(\d+)", usage)
                ptx = compiled.asm["ptx"]
                row.update(
                    seconds=time.perf_counter() - t0,
                    shared_bytes=compiled.metadata.shared,
                    registers=int(found.group(1)) if found else None,
                    spill_bytes=int(found.group(2)) if found else None,
                    products="wgmma"
                    if "wgmma" in ptx
                    else "mma.sync"
                    if "mma.sync" in ptx
                    else "fma",
                )
                out.append(row)
                print(row, flush=True)
    return out


def parity_tests() -> dict:
    """The CUDA parity tests (and the interpreter parity) in a pytest subprocess."""
    files = ["tests/functional/test_engine_cuda.py", "tests/functional/test_engine_fused.py"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    tail = proc.stdout.strip().splitlines()[-30:]
    print("\n".join(tail))
    return {"returncode": proc.returncode, "seconds": time.perf_counter() - t0, "tail": tail}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on a CPU, interpreter")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu_engine.json")
    parser.add_argument("--skip-tests", action="store_true", help="only the benchmark")
    parser.add_argument(
        "--compile-check",
        type=int,
        metavar="CC",
        help="only compile the kernels for compute capability CC (e.g. 90) and report their "
        "resources; no GPU needed",
    )
    args = parser.parse_args(argv)
    if args.compile_check:
        rows = compile_check(DIM, args.compile_check)
        write_json(args.out, {"compile_check": rows, "D": DIM})
        print(f"wrote {args.out}")
        return 1 if any("error" in r for r in rows) else 0
    cuda = torch.cuda.is_available()
    if args.dry_run:
        if not interpreter_on():
            print("--dry-run needs TRITON_INTERPRET=1 before triton is imported", file=sys.stderr)
            return 2
        device, sizes, dim, reps, mm_size = torch.device("cpu"), (24,), 16, 1, 64
    elif not cuda:
        print("no CUDA GPU here; use --dry-run on a CPU", file=sys.stderr)
        return 2
    else:
        device, sizes, dim, reps, mm_size = torch.device("cuda"), SIZES, DIM, 3, 8192
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows: IEEE products throughout
    report: dict = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dry_run": args.dry_run,
    }
    if cuda and not args.dry_run and not args.skip_tests:
        report["parity_tests"] = parity_tests()
    report["matmul_tflops"] = {
        name: {
            "square": matmul_tflops(device, getattr(torch, name), mm_size, mm_size, 10),
            "loss_shape": matmul_tflops(device, getattr(torch, name), mm_size, dim, 10),
        }
        for name in DTYPES
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tune_b = sizes[min(1, len(sizes) - 1)]  # B = 32,768 on a GPU, the targets' size
    report["tuning"], chosen = {}, {}
    for name in DTYPES[:1] if args.dry_run else DTYPES:  # the dry run: its logic, once
        report["tuning"][name] = tune(tune_b, dim, getattr(torch, name), device, args.dry_run)
        chosen[name] = {kind: list(cfgs) for kind, cfgs in fused.CONFIGS.items()}
        write_json(args.out, report)
    rows = report["rows"] = []
    for b in sizes:
        for name in DTYPES:
            fused.CONFIGS.clear()
            fused.CONFIGS.update(chosen.get(name, {}))
            for path in PATHS:
                try:
                    r = run_row(
                        b, dim, getattr(torch, name), path, device, 1 if b >= 131072 else reps
                    )
                except Exception as err:  # report it and go on with the other rows
                    r = {"B": b, "dtype": name, "path": path, "error": repr(err)[:500]}
                ref = report["matmul_tflops"][name]["square"]
                if "tflops" in r:
                    r["pct_of_matmul"] = 100 * r["tflops"] / ref
                rows.append(r)
                print(_line(r), flush=True)
                write_json(args.out, report)  # a run cut short keeps what it measured
    for r in rows:  # the targets: fused vs the torch tile loop of the same B and dtype
        twin = [
            t for t in rows if t["path"] == "tiled" and (t["B"], t["dtype"]) == (r["B"], r["dtype"])
        ]
        if r["path"] == "fused" and "seconds" in r and twin and "seconds" in twin[0]:
            r["speedup_vs_tiled"] = twin[0]["seconds"] / r["seconds"]
            print(f"B={r['B']} {r['dtype']}: fused {r['speedup_vs_tiled']:.2f}x the tile loop")
    write_json(args.out, report)
    print(json.dumps(report["matmul_tflops"]))
    print(f"wrote {args.out}")
    return 0


def _line(r: dict) -> str:
    head = f"B={r['B']:>7} {r['dtype']:>8} {r['path']:>10}"
    if "skipped" in r or "error" in r:
        return f"{head}  {r.get('skipped') or 'ERROR ' + r['error']}"
    mem = f"{r['peak_extra_mib']:9.0f} MiB" if "peak_extra_mib" in r else ""
    ran = "" if r["path"] != "fused" else ("  fused ran" if r["fused_ran"] else "  FELL BACK")
    return (
        f"{head}  {r['seconds']:9.4f} s  {r['tflops']:8.2f} TFLOP/s  "
        f"{r['pct_of_matmul']:5.1f} % mm  {mem}{ran}"
    )


if __name__ == "__main__":
    sys.exit(main())
