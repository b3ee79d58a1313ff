"""``metrics.jsonl``: the run's append-only log (and an optional TensorBoard mirror).

One JSON object per line: logged steps (loss, its terms, lr, gradient norm, items/s), monitor
readings (``"monitor"``, the names of :class:`contrastkit.monitor.CollapseMonitor`), evaluations
(``"eval"``) and events (start, schedule fits, budget reached). Written by the main process.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("contrastkit.train")


class MetricsLog:
    """Append-only JSON-lines log on the main process."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            drop_torn_line(self.path)
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
        line = (json.dumps(record) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
        try:
            written = os.write(fd, line)  # one write: appends of whole lines never interleave
        finally:
            os.close(fd)
        if written != len(line):
            raise OSError(f"{self.path}: short write ({written} of {len(line)} bytes)")
        if self.tb is not None:
            step = record["step"]
            for key, value in _flatten(record).items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # a symlink planted in a run folder is not written


def drop_torn_line(path: Path) -> None:
    r"""Cut ``path`` back to its last complete line: a crash mid-append left a partial last
    line, and the next append (``--resume``) would land on it, mid-file, where the report
    refuses the file from then on.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "m.jsonl"
    >>> _ = p.write_text('{"step": 1}\n{"st')
    >>> drop_torn_line(p); p.read_text()
    '{"step": 1}\n'
    """
    try:
        fd = os.open(path, os.O_RDWR | _NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        keep, pos = 0, size
        while pos > 0:  # scan back in blocks for the last newline
            start = max(0, pos - 65536)
            newline = os.pread(fd, pos - start, start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            pos = start
        log.warning("%s: dropped a torn last line (%d bytes) before appending", path, size - keep)
        os.ftruncate(fd, keep)
        os.fsync(fd)
    finally:
        os.close(fd)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
