"""Prometheus metrics of one daemon: a registry per instance, never the global one."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: the counters a send moves, by attribute of Metrics
_SEND_COUNTERS = ("sent", "empty", "failed", "retried", "stage_seconds")


@dataclass
class SendTally:
    """What a send process counted, for the process that split the send to add to its own
    metrics (each process has its own registry; /metrics is served by the parent)."""

    #: attribute of Metrics → (labels, amount)
    counters: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    #: digests per latency bucket (not cumulative) and their total seconds
    latency_buckets: list[float] = field(default_factory=list)
    latency_sum: float = 0.0


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.sent = Counter("digestd_digests_sent", "Digests accepted by the relay", registry=r)
        self.empty = Counter("digestd_digests_empty", "Periods with nothing to send", registry=r)
        self.failed = Counter("digestd_digests_failed", "Digests given up", ["reason"], registry=r)
        self.retried = Counter(
            "digestd_digests_retried", "Temporary failures, to retry", ["reason"], registry=r
        )
        self.latency = Histogram(
            "digestd_send_seconds",
            "Time to deliver one digest to the relay",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.stage_seconds = Counter(
            "digestd_send_stage_seconds",
            "Seconds sends spent per stage (select, match, render, serialise, deliver, ledger)",
            ["stage"],
            registry=r,
        )
        self.fetched = Counter("digestd_papers_fetched", "Papers fetched", ["source"], registry=r)
        self.new_papers = Counter(
            "digestd_papers_new", "Papers stored for the first time", ["source"], registry=r
        )
        self.fetch_failures = Counter(
            "digestd_fetch_failures", "Failed fetches", ["source"], registry=r
        )
        self.last_fetch = Gauge(
            "digestd_last_fetch_success_timestamp_seconds",
            "Unix time of the last successful fetch",
            registry=r,
        )

    def tally(self) -> SendTally:
        """The send counters and the latency histogram as they stand."""
        tally = SendTally()
        for name in _SEND_COUNTERS:
            metric = getattr(self, name)
            for family in metric.collect():
                tally.counters[name] = [
                    (s.labels, s.value)
                    for s in family.samples
                    if s.name.endswith("_total") and s.value
                ]
        [family] = self.latency.collect()
        cumulative = [s.value for s in family.samples if s.name.endswith("_bucket")]
        below = [0.0, *cumulative[:-1]]
        tally.latency_buckets = [b - a for a, b in zip(below, cumulative, strict=True)]
        tally.latency_sum = sum(s.value for s in family.samples if s.name.endswith("_sum"))
        return tally

    def add(self, tally: SendTally) -> None:
        """Count what another process's ``tally`` counted, as if this process had."""
        for name, values in tally.counters.items():
            metric = getattr(self, name)
            for labels, amount in values:
                (metric.labels(**labels) if labels else metric).inc(amount)
        # prometheus_client cannot add observations in bulk; its buckets are per-bucket
        # counters underneath (tests/test_workers.py checks the exported histogram).
        for bucket, amount in zip(self.latency._buckets, tally.latency_buckets, strict=True):
            bucket.inc(amount)
        self.latency._sum.inc(tally.latency_sum)

    def watch_subscribers(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Report subscribers by status, read from the database at each scrape."""
        self.registry.register(_SubscriberCollector(counts))


class _SubscriberCollector(Collector):
    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "digestd_subscribers", "Subscribers by status", labels=["status"]
        )
        for status, n in sorted(self._counts().items()):
            family.add_metric([status], n)
        yield family
