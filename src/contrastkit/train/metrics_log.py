"""``metrics.jsonl``: the run's append-only log (and an optional TensorBoard mirror).

One JSON object per line: logged steps (loss, its terms, lr, gradient norm, items/s), monitor
readings (``"monitor"``, the names of :class:`contrastkit.monitor.CollapseMonitor`), evaluations
(``"eval"``) and events (start, schedule fits, budget reached). Written by the main process.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("contrastkit.train")


class MetricsLog:
    """Append-only JSON-lines log on the main process."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # pragma: no cover - optional dependency
                log.warning(
                    "train.tensorboard: tensorboard is not installed (pip install tensorboard)"
                )

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record["step"]
            for key, value in _flatten(record).items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
