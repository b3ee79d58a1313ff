"""Request counts, latency and batch-size histograms for ``/metrics``, through ``prometheus_client``.

Each :class:`Metrics` owns a :class:`~prometheus_client.CollectorRegistry` (never the process-wide
default one), so every app (and every test) counts on its own. The exposition text is
``prometheus_client.generate_latest`` of that registry, less the ``*_created`` timestamps.

>>> m = Metrics()
>>> m.observe_request("/search", 200, 0.004)
>>> m.observe_batch(3)
>>> text = m.render()
>>> 'contrastkit_requests_total{endpoint="/search",status="200"} 1.0' in text
True
>>> 'contrastkit_batch_size_bucket{le="4.0"} 1.0' in text
True
>>> m.value("contrastkit_batch_size_sum")
3.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.metrics_core import Metric
except ImportError as err:  # pragma: no cover - the optional extra
    raise ImportError(
        f"contrastkit serve needs prometheus_client ({err.name} missing); "
        "install it with `pip install 'contrastkit[serve]'`."
    ) from None

__all__ = ["BATCH_BUCKETS", "CONTENT_TYPE", "LATENCY_BUCKETS", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the text format generate_latest writes


class Metrics:
    """The service's metrics in a registry of their own; :meth:`render` gives the ``/metrics`` body.

    Series: ``contrastkit_requests_total{endpoint,status}``, ``contrastkit_request_seconds``
    (histogram by endpoint), ``contrastkit_batch_size`` and ``contrastkit_search_batch_size``
    (histograms), ``contrastkit_rejected_total`` (503 and 429),
    ``contrastkit_index_reloads_total``, and the gauges added with :meth:`gauge` (queue depth,
    index size, uptime: read when scraped).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter("contrastkit_requests", "Requests by endpoint and status code.",
                                 ["endpoint", "status"], registry=r)  # fmt: skip
        self._latency = Histogram("contrastkit_request_seconds", "Request latency by endpoint.",
                                  ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self._batches = Histogram("contrastkit_batch_size", "Items per model call (micro-batch size).",
                                  buckets=BATCH_BUCKETS, registry=r)  # fmt: skip
        self._rejected = Counter("contrastkit_rejected", "Requests refused with 503 (queue full) or 429 (busy).",
                                 registry=r)  # fmt: skip
        self._reloads = Counter("contrastkit_index_reloads", "Index swaps since start.", registry=r)
        self._searches = Histogram("contrastkit_search_batch_size",
                                   "Queries per index call (searched as one matrix product).",
                                   buckets=BATCH_BUCKETS, registry=r)  # fmt: skip

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """One finished request: its route (not the raw path), status code and latency."""
        self._requests.labels(endpoint=endpoint, status=str(int(status))).inc()
        self._latency.labels(endpoint=endpoint).observe(seconds)

    def observe_batch(self, size: int) -> None:
        """One model call on ``size`` items."""
        self._batches.observe(size)

    def observe_search_batch(self, size: int) -> None:
        """One index call on ``size`` queries."""
        self._searches.observe(size)

    def observe_rejected(self) -> None:
        """One request refused because the queue was full (503)."""
        self._rejected.inc()

    def observe_reload(self) -> None:
        """One index swap."""
        self._reloads.inc()

    def gauge(self, name: str, help_: str, read: Callable[[], float]) -> None:
        """A gauge ``name`` whose value is ``read()`` at each scrape."""
        Gauge(name, help_, registry=self.registry).set_function(read)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The current value of one sample, e.g. ``value("contrastkit_batch_size_count")``;
        None when that series has not been observed."""
        return self.registry.get_sample_value(name, labels or {})

    def mean_batch_size(self) -> float:
        """Mean items per model call so far (0 before the first call)."""
        n = self.value("contrastkit_batch_size_count") or 0.0
        return (self.value("contrastkit_batch_size_sum") or 0.0) / n if n else 0.0

    def render(self) -> str:
        """The exposition text (Prometheus text format 0.0.4)."""
        return generate_latest(_WithoutCreated(self.registry)).decode()


class _WithoutCreated:
    """The registry's metrics without the ``*_created`` samples (creation timestamps that the
    service never exposed; scrapers do not need them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric
