"""Start a gloo process group for a test: ``world`` spawned processes run
``worker(rank, world, port, out_dir)``, each writes ``out_dir/rank{r}.json``; the reports come
back in rank order (a rank that did not report fails the test with the exit codes)."""

from __future__ import annotations

import json
import multiprocessing as mp
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(
    worker: Callable[[int, int, int, str], None], world: int, prefix: str
) -> list[dict[str, Any]]:
    out = Path(tempfile.mkdtemp(prefix=prefix))
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, world, port, str(out))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    for p in procs:
        if p.is_alive():
            p.terminate()
    files = [out / f"rank{r}.json" for r in range(world)]
    missing = [str(f) for f in files if not f.exists()]
    assert not missing, f"ranks did not report (exit codes {[p.exitcode for p in procs]})"
    return [json.loads(f.read_text()) for f in files]
