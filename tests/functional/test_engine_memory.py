"""The chunked engine never allocates the (B, B) logits: peak RSS of a subprocess stays small."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

SCRIPT = """
import json, resource, sys, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
import contrastkit.functional as F
from contrastkit.functional import engine
chunk = None if sys.argv[2] == "dense" else int(sys.argv[2])
engine.DENSE_MAX_LOGITS = 1 << 62  # chunk None = dense, whatever the size
g = torch.Generator().manual_seed(0)
small = torch.randn(64, 32, generator=g, requires_grad=True)
with F.tiling(chunk_size=chunk):
    F.info_nce(small, small, temperature=0.1, symmetric=True).backward()  # warm up
q = torch.randn(4096, 32, generator=g, requires_grad=True)
k = torch.randn(4096, 32, generator=g, requires_grad=True)
def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
try:  # reset the peak-RSS mark so that import-time peaks cannot hide this run's peak
    open("/proc/self/clear_refs", "w").write("5")
    base, peak_of = status_kib("VmRSS"), lambda: status_kib("VmHWM")
except OSError:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_of = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with F.tiling(chunk_size=chunk):
    loss = F.info_nce(q, k, temperature=0.1, symmetric=True)
loss.backward()
peak = peak_of()
print(json.dumps({"extra_mib": (peak - base) / 1024, "finite": bool(torch.isfinite(q.grad).all())}))
"""


def _peak_extra_mib(chunk: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(SRC), chunk],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["finite"]
    return result["extra_mib"]


def test_chunked_peak_memory_is_linear_in_batch():
    """B = 4096: one (B, B) float32 matrix is 64 MiB; the chunked path needs a few 4 MiB strips."""
    chunked = _peak_extra_mib("256")
    dense = _peak_extra_mib("dense")
    assert chunked < 32, f"chunked path peaked {chunked:.1f} MiB above its inputs"
    assert dense > 64, f"dense reference peaked only {dense:.1f} MiB: the check would be blind"
