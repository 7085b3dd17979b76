"""Metrics: a private Prometheus registry plus the per-model activity the policies read."""

from modelium.metrics.registry import LATENCY_BUCKETS, ModeliumMetrics

__all__ = ["LATENCY_BUCKETS", "ModeliumMetrics"]
