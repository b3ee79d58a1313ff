"""Request counts, latency and batch-size histograms in the Prometheus text format.

Written by hand (no client library): counters and cumulative histograms with ``_bucket``,
``_sum`` and ``_count`` series, as https://prometheus.io/docs/instrumenting/exposition_formats/
describes.

>>> m = Metrics()
>>> m.observe_request("/search", 200, 0.004)
>>> m.observe_batch(3)
>>> text = m.render()
>>> 'contrastkit_requests_total{endpoint="/search",status="200"} 1' in text
True
>>> 'contrastkit_batch_size_bucket{le="4"} 1' in text
True
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last slot is +Inf
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts):
            running += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        braces = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{braces} {self.total:.6g}", f"{name}_count{braces} {self.n}"]
        return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe counters for the service; :meth:`render` gives the ``/metrics`` body."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = {}
        self.batches = _Histogram(BATCH_BUCKETS)
        self.rejected = 0
        self.reloads = 0

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """One finished request: its route (not the raw path), status code and latency."""
        with self._lock:
            self.requests[(endpoint, int(status))] += 1
            self.latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, size: int) -> None:
        """One model call on ``size`` items."""
        with self._lock:
            self.batches.observe(size)

    def observe_rejected(self) -> None:
        """One request refused because the queue was full (503)."""
        with self._lock:
            self.rejected += 1

    def observe_reload(self) -> None:
        """One index swap."""
        with self._lock:
            self.reloads += 1

    def mean_batch_size(self) -> float:
        """Mean items per model call so far (0 before the first call)."""
        with self._lock:
            return self.batches.total / self.batches.n if self.batches.n else 0.0

    def render(self, gauges: dict[str, tuple[str, float]] | None = None) -> str:
        """The exposition text; ``gauges``: name -> (help, value) added as gauges."""
        with self._lock:
            lines = [
                "# HELP contrastkit_requests_total Requests by endpoint and status code.",
                "# TYPE contrastkit_requests_total counter",
            ]
            for (endpoint, status), n in sorted(self.requests.items()):
                labels = f'endpoint="{_escape(endpoint)}",status="{status}"'
                lines.append(f"contrastkit_requests_total{{{labels}}} {n}")
            lines += [
                "# HELP contrastkit_request_seconds Request latency by endpoint.",
                "# TYPE contrastkit_request_seconds histogram",
            ]
            for endpoint, hist in sorted(self.latency.items()):
                labels = f'endpoint="{_escape(endpoint)}"'
                lines += hist.lines("contrastkit_request_seconds", labels)
            lines += [
                "# HELP contrastkit_batch_size Items per model call (micro-batch size).",
                "# TYPE contrastkit_batch_size histogram",
                *self.batches.lines("contrastkit_batch_size"),
                "# HELP contrastkit_rejected_total Requests refused with 503 (queue full).",
                "# TYPE contrastkit_rejected_total counter",
                f"contrastkit_rejected_total {self.rejected}",
                "# HELP contrastkit_index_reloads_total Index swaps since start.",
                "# TYPE contrastkit_index_reloads_total counter",
                f"contrastkit_index_reloads_total {self.reloads}",
            ]
        for name, (help_, value) in (gauges or {}).items():
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"
