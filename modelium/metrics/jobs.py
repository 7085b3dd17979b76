"""Metrics of background jobs: how many wait and run per priority (read at scrape time
from the job runner, so they never go stale), and how long jobs take from submission to
their end, by priority and outcome."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

#: From a warm model's milliseconds to hours behind a long queue.
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0)
PRIORITIES = ("high", "normal", "low")
PENDING_STATES = ("queued", "running")


class JobMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "modelium_job_seconds", "Jobs from submission to their end, by priority and outcome "
            "(succeeded, failed, cancelled)", ["priority", "outcome"], buckets=JOB_BUCKETS, registry=registry,
        )
        self.pending: Callable[[], Mapping[tuple[str, str], int]] = dict
        registry.register(_Collector(self))

    def set_view(self, pending: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        """``pending()``: (state, priority) -> jobs, for queued and running jobs."""
        self.pending = pending

    def observe(self, priority: str, outcome: str, seconds: float) -> None:
        self.latency.labels(priority, outcome).observe(max(0.0, seconds))


class _Collector:
    def __init__(self, owner: JobMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("modelium_jobs", "Jobs accepted and not finished, by state "
                                  "(queued, running) and priority", labels=["state", "priority"])
        try:
            counts = dict(self._owner.pending())
        except Exception:  # noqa: BLE001 - a scrape must never fail
            counts = {}
        for state in PENDING_STATES:
            for priority in PRIORITIES:
                gauge.add_metric([state, priority], counts.get((state, priority), 0))
        yield gauge
