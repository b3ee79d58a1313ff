"""Cost of the collapse monitor and of the objectives without negatives (CPU, float32).

Rows: ``monitor update`` (one batch into every streaming statistic), ``monitor compute`` (the
eigen-decomposition of the D x D second moment and the rest, once per reading), and one
forward + backward of each registered non-contrastive loss at the same batch size, so the
monitor's overhead can be read against a training step's loss.
"""

from __future__ import annotations

import time

import torch

from contrastkit.losses import create_loss
from contrastkit.monitor import CollapseMonitor

BATCH = 256


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def run() -> dict:
    g = torch.Generator().manual_seed(0)
    rows = []
    for dim in (128, 512, 2048):
        q = torch.randn(BATCH, dim, generator=g)
        k = q + 0.1 * torch.randn(BATCH, dim, generator=g)
        monitor = CollapseMonitor(warn=False)
        repeats = 20 if dim < 2048 else 5
        rows.append(
            {
                "what": "monitor update",
                "B": BATCH,
                "D": dim,
                "ms": _time(lambda m=monitor, q=q, k=k: m.update(q, k), repeats),
            }
        )

        def read(monitor=monitor, q=q, k=k) -> None:
            monitor.update(q, k)
            monitor.compute()

        rows.append(
            {"what": "monitor update + compute", "B": BATCH, "D": dim, "ms": _time(read, repeats)}
        )
        for name in ("simsiam", "byol", "vicreg", "barlow_twins", "swav", "dino"):
            kwargs = {"dim": dim, "num_prototypes": 3000} if name == "swav" else {}
            loss_fn = create_loss(name, **kwargs)
            args = [q.clone().requires_grad_(), k.clone().requires_grad_()]
            if name in ("simsiam", "byol"):
                args += [q.clone(), k.clone()]

            def step(loss_fn=loss_fn, args=args) -> None:
                loss_fn(*args).backward()

            rows.append(
                {"what": f"{name} fwd+bwd", "B": BATCH, "D": dim, "ms": _time(step, repeats)}
            )
    return {
        "title": "Collapse monitor and non-contrastive objectives (ms per call, CPU float32)",
        "rows": rows,
        "notes": (
            "monitor update is O(B D^2 + B^2 D) in float64 (second-moment matrix, within-batch "
            "pairs); compute adds an O(D^3) eigen-decomposition, once per reading. Run the monitor "
            "every N steps on a held-out batch. SwAV uses 3000 prototypes; DINO treats D as K."
        ),
    }
