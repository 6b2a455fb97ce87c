"""Prometheus metrics: request counts and latencies, and the heap's state read at scrape.

One CollectorRegistry per app (no process-wide singletons, so two apps in one process
-- tests -- do not collide). Request metrics are recorded by the front door for every
HTTP request; heap and store gauges are computed when /metrics is scraped, so the hot
path pays only for a labelled counter and a histogram observation.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0)


class Metrics:
    """The app's registry: `observe` per request, `render` for GET /metrics."""

    def __init__(self, service):
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter("pmstore_http_requests", "HTTP requests answered",
                                 ["method", "route", "status"], registry=self.registry)
        self._latency = Histogram("pmstore_http_request_duration_seconds", "time from request to last byte sent",
                                  ["method", "route"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.registry.register(_StoreCollector(service))
        self._children: dict[tuple, tuple] = {}   # (method, route, status) -> (counter, histogram) children

    def observe(self, method: str, route: str, status: int, elapsed_s: float) -> None:
        key = (method, route, status)
        pair = self._children.get(key)
        if pair is None:    # first time for these labels; labels() is the slow part
            pair = self._children[key] = (self._requests.labels(method, route, str(status)),
                                          self._latency.labels(method, route))
        pair[0].inc()
        pair[1].observe(elapsed_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StoreCollector:
    """Heap usage, fragmentation, persists, objects and the last recovery, at scrape time."""

    def __init__(self, service):
        self._service = service

    def collect(self):
        st = self._service.store
        if st is None or st.closed:
            return
        heap = st.heap.stats()
        rep = st.report
        for name, doc, value in (
            ("pmstore_objects", "objects in the store", len(st)),
            ("pmstore_heap_file_size_bytes", "current heap file size", heap["file_size"]),
            ("pmstore_heap_max_size_bytes", "largest size the heap may grow to", heap["max_size"]),
            ("pmstore_heap_used_bytes", "bytes in allocated pages", heap["bytes_used"]),
            ("pmstore_heap_free_bytes", "bytes in free pages", heap["bytes_free"]),
            ("pmstore_heap_live_block_bytes", "bytes in live blocks", heap["live_block_bytes"]),
            ("pmstore_heap_fragmentation_ratio", "bytes in pages / bytes in live blocks", heap["fragmentation"]),
            ("pmstore_recovery_seconds", "time the last open spent in replay, scan and index",
             (rep["replay_ms"] + rep["scan_ms"] + rep.get("index_ms", 0.0)) / 1e3),
            ("pmstore_recovery_lanes_replayed", "redo lanes replayed by the last open", rep["lanes_replayed"]),
            ("pmstore_recovery_was_clean", "1 if the last open found a clean shutdown", int(rep["was_clean"])),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(value))
            yield g
        c = CounterMetricFamily("pmstore_heap_persists", "persist barriers since the heap was opened")
        c.add_metric([], float(heap["persist_count"]))
        yield c


__all__ = ["CONTENT_TYPE", "Metrics"]
