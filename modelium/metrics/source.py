"""Where the idle and eviction policies read per-model QPS and idle time from.

* :class:`LocalMetricSource`: this daemon's own counters (:class:`ModeliumMetrics`), the
  default.
* :class:`PrometheusMetricSource`: a Prometheus server that scrapes every gateway's
  ``/metrics``, queried through its HTTP API (``/api/v1/query``) with PromQL on the series
  Modelium exports, so several gateways behind a load balancer share one view.

In-flight requests are not part of a source: "is this model serving a request right now"
must be exact and only this process knows it (``ModeliumMetrics.in_flight``).

The Prometheus source takes one snapshot per control-loop tick (:meth:`refresh`, two
queries for all models) instead of one HTTP call per model. When a refresh fails
(Prometheus down, timeout, bad answer) it logs once, answers with the local numbers until a
refresh succeeds again, and never raises.

PromQL used (``W`` = ``window_seconds``, normally ``metrics.qps_window_seconds``):

* QPS: ``sum by (model) (rate(modelium_requests_total[W]))``: the request rate summed over
  every gateway (and runtime and status). ``rate`` needs at least two samples in ``W``;
  keep ``W`` >= 4x the scrape interval so one missed scrape does not zero it.
* Idle: ``min by (model) (modelium_model_idle_seconds + (time() -
  timestamp(modelium_model_idle_seconds)))``. The gauge is each gateway's idle time at its
  last scrape; adding the sample's age makes it "idle time now" (a gateway that stopped
  being scraped keeps ageing instead of freezing at its last value, until Prometheus drops
  the series after its 5 min lookback). ``min`` over gateways: a model is only as idle as
  its most recently used copy. The result is then capped by this daemon's own idle time,
  which is fresher than the last scrape for the requests this gateway served itself.

A model Prometheus has no idle series for (loaded but not scraped yet, or Prometheus is not
scraping this gateway) is answered from the local numbers for both values. A model with an
idle series but no request series has seen no request in the window anywhere: 0 QPS.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Protocol, runtime_checkable

import httpx

from modelium.metrics.registry import ModeliumMetrics

log = logging.getLogger(__name__)

SOURCE_LOCAL = "local"
SOURCE_PROMETHEUS = "prometheus"


@runtime_checkable
class MetricSource(Protocol):
    """Per-model activity numbers for the idle and eviction policies."""

    async def refresh(self) -> None:
        """Take a fresh snapshot (once per control-loop tick); never raises."""

    def qps(self, model: str) -> float:
        """Requests per second over the QPS window."""

    def idle_seconds(self, model: str) -> float:
        """Seconds since the model last served a request (or loaded)."""

    def source_of(self, model: str) -> str:
        """Where ``qps`` / ``idle_seconds`` for ``model`` come from: "prometheus" or
        "local" (with why, when it is a fallback)."""

    async def aclose(self) -> None:
        """Release connections."""


class LocalMetricSource:
    """This daemon's own counters."""

    def __init__(self, metrics: ModeliumMetrics) -> None:
        self.metrics = metrics

    async def refresh(self) -> None:
        return None

    def qps(self, model: str) -> float:
        return self.metrics.qps(model)

    def idle_seconds(self, model: str) -> float:
        return self.metrics.idle_seconds(model)

    def source_of(self, model: str) -> str:
        return SOURCE_LOCAL

    async def aclose(self) -> None:
        return None


def qps_query(window_seconds: float) -> str:
    return f"sum by (model) (rate(modelium_requests_total[{_duration(window_seconds)}]))"


IDLE_QUERY = (
    "min by (model) (modelium_model_idle_seconds"
    " + (time() - timestamp(modelium_model_idle_seconds)))"
)


def _duration(seconds: float) -> str:
    """A PromQL range duration (integer milliseconds, at least 1 s)."""
    return f"{max(1000, int(round(seconds * 1000)))}ms"


class PrometheusQueryError(RuntimeError):
    """Prometheus answered, but not with a usable instant vector."""


def parse_vector(payload: Any, label: str = "model") -> dict[str, float]:
    """``{label value: sample value}`` from an ``/api/v1/query`` answer of type vector.

    Samples without the label, or whose value is NaN, are skipped; an answer that is not
    ``status: success`` with a vector raises :class:`PrometheusQueryError`.
    """
    if not isinstance(payload, dict):
        raise PrometheusQueryError(f"not a JSON object: {payload!r:.200}")
    if payload.get("status") != "success":
        raise PrometheusQueryError(
            f"{payload.get('errorType', 'error')}: {payload.get('error', payload)!s:.300}"
        )
    data = payload.get("data") or {}
    if data.get("resultType") != "vector":
        raise PrometheusQueryError(f"expected a vector, got {data.get('resultType')!r}")
    out: dict[str, float] = {}
    for sample in data.get("result") or ():
        name = (sample.get("metric") or {}).get(label)
        try:
            value = float(sample["value"][1])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise PrometheusQueryError(f"bad sample {sample!r:.200}") from exc
        if name is None or math.isnan(value):
            continue
        out[name] = value
    return out


class PrometheusMetricSource:
    """QPS and idle time from a Prometheus server, falling back to ``fallback``."""

    def __init__(
        self,
        url: str,
        *,
        window_seconds: float,
        timeout: float,
        fallback: LocalMetricSource,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
        self.url = url.rstrip("/")
        self.window_seconds = window_seconds
        self.timeout = timeout
        self.fallback = fallback
        self.qps_query = qps_query(window_seconds)
        self.idle_query = IDLE_QUERY
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._qps: dict[str, float] | None = None
        self._idle: dict[str, float] | None = None
        self.error: str | None = "not refreshed yet"
        self._failing = False
        self.refreshed_at: float | None = None  # time.time() of the last good snapshot

    @property
    def healthy(self) -> bool:
        return self.error is None

    async def refresh(self) -> None:
        try:
            qps, idle = await asyncio.gather(self._query(self.qps_query),
                                             self._query(self.idle_query))
        except Exception as exc:  # noqa: BLE001 - any failure means "use local numbers"
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if not self._failing:  # log once per outage, not once per tick
                log.warning("prometheus at %s unusable (%s); using local metrics until it "
                            "answers again", self.url, message)
                self._failing = True
            self.error = f"prometheus unavailable: {message}"
            self._qps = self._idle = None
            return
        if self._failing:
            log.info("prometheus at %s answers again; using it for QPS and idle time", self.url)
            self._failing = False
        self._qps, self._idle = qps, idle
        self.error = None
        self.refreshed_at = time.time()

    async def _query(self, promql: str) -> dict[str, float]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, transport=self._transport)
        response = await self._client.get(f"{self.url}/api/v1/query", params={"query": promql})
        try:
            payload = response.json()
        except ValueError:
            response.raise_for_status()
            raise PrometheusQueryError(f"HTTP {response.status_code}: not JSON") from None
        return parse_vector(payload)

    def _known(self, model: str) -> bool:
        return self._idle is not None and model in self._idle

    def qps(self, model: str) -> float:
        if not self._known(model):
            return self.fallback.qps(model)
        assert self._qps is not None
        return self._qps.get(model, 0.0)

    def idle_seconds(self, model: str) -> float:
        local = self.fallback.idle_seconds(model)
        if not self._known(model):
            return local
        assert self._idle is not None
        return max(0.0, min(self._idle[model], local))

    def source_of(self, model: str) -> str:
        if self.error is not None:
            return f"{SOURCE_LOCAL} (fallback, {self.error})"
        if not self._known(model):
            return f"{SOURCE_LOCAL} (fallback, not in prometheus yet)"
        return SOURCE_PROMETHEUS

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
