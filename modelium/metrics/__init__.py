"""Metrics: a private Prometheus registry plus the per-model activity the policies read."""

from modelium.metrics.registry import LATENCY_BUCKETS, ModeliumMetrics
from modelium.metrics.source import LocalMetricSource, MetricSource, PrometheusMetricSource

__all__ = [
    "LATENCY_BUCKETS",
    "LocalMetricSource",
    "MetricSource",
    "ModeliumMetrics",
    "PrometheusMetricSource",
]
