"""`modelium serve`: wire the components together and run until SIGTERM/SIGINT.

Start order: gateway first (so /health answers "starting" at once), then runtimes and the
repository, then the drop watcher and the control loop. Stop order is the reverse, and
every runtime process is stopped before the daemon exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvicorn

from modelium.config import ModeliumSettings
from modelium.discovery import DropWatcher
from modelium.gateway import create_app
from modelium.hardware import MemoryLedger, detect_inventory, gpu_memory_usage
from modelium.metrics import (
    LocalMetricSource,
    MetricSource,
    ModeliumMetrics,
    PrometheusMetricSource,
)
from modelium.orchestrator import DropHandler, Orchestrator, StateStore
from modelium.runtimes.base import RuntimeManager

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_SECONDS = 60
WATCHER_STOP_TIMEOUT_SECONDS = 10


class _GatewayServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon decides when to stop, and
    uvicorn's habit of re-raising the signal after shutdown would kill us before the
    runtimes are stopped."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Runtimes:
    """The managers to run, and what the brain must know about runtimes that cannot run."""

    managers: dict[str, RuntimeManager] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # runtime -> why not
    vllm_architectures: frozenset[str] | None = None
    triton_backends: frozenset[str] | None = None  # what the own tritonserver can load


def build_runtimes(settings: ModeliumSettings) -> Runtimes:
    """One manager per enabled runtime that is implemented and installed here.

    Blocking (probing vLLM runs its interpreter once, cached in ``state_dir``): call it in
    a thread.
    """
    runtimes = Runtimes()
    if settings.ray.enabled:
        from modelium.runtimes.ray_serve import RayServeManager  # imports ray: slow

        ray = settings.ray
        runtimes.managers["ray_serve"] = RayServeManager(
            address=ray.address,
            http_port=ray.http_port,
            gcs_port=ray.gcs_port,
            num_cpus=ray.num_cpus,
            temp_dir=ray.temp_dir,
            start_timeout_seconds=ray.start_timeout_seconds,
        )
    if settings.vllm.enabled:
        _add_vllm(settings, runtimes)
    if settings.triton.enabled:
        _add_triton(settings, runtimes)
    for runtime, why in runtimes.unavailable.items():
        log.warning("%s: %s", runtime, why)
    return runtimes


def _add_vllm(settings: ModeliumSettings, runtimes: Runtimes) -> None:
    from modelium.runtimes.vllm import VllmManager
    from modelium.runtimes.vllm.install import locate

    vllm = settings.vllm
    install, detail = locate(vllm.python, state_dir=settings.state_dir)
    if install is None:
        runtimes.unavailable["vllm"] = detail
        return
    log.info("vllm: %s", detail)
    runtimes.vllm_architectures = install.architectures
    runtimes.managers["vllm"] = VllmManager(
        python=install.python,
        install=install,
        base_port=vllm.base_port,
        state_dir=settings.state_dir,
        default_settings=vllm.default_settings,
        extra_args=vllm.extra_args,
        startup_timeout_seconds=vllm.startup_timeout_seconds,
    )


def _add_triton(settings: ModeliumSettings, runtimes: Runtimes) -> None:
    from modelium.runtimes.triton import TritonManager
    from modelium.runtimes.triton.install import locate_tritonserver
    from modelium.runtimes.triton.server import PROJECT_ROOT

    triton = settings.triton
    install = locate_tritonserver(triton.executable, PROJECT_ROOT)
    if install is None:
        runtimes.unavailable["triton"] = (
            f"triton is enabled but no tritonserver was found ({triton.executable!r} is not on "
            "PATH and .venvs/triton is missing: `make serve` creates it)"
        )
        return
    if triton.endpoint == "auto":
        runtimes.triton_backends = install.backends
        log.info("triton: %s with backends %s", install.executable, ", ".join(sorted(install.backends)))
    runtimes.managers["triton"] = TritonManager(
        install=install,
        state_dir=settings.state_dir,
        endpoint=None if triton.endpoint == "auto" else triton.endpoint,
        startup_timeout_seconds=triton.startup_timeout_seconds,
        load_timeout_seconds=triton.load_timeout_seconds,
    )


def build_metric_source(settings: ModeliumSettings, metrics: ModeliumMetrics) -> MetricSource:
    """Prometheus when ``metrics.prometheus_url`` is set (falling back to the local
    counters whenever it cannot answer), else the local counters."""
    local = LocalMetricSource(metrics)
    url = settings.metrics.prometheus_url
    if not url:
        return local
    log.info("reading per-model QPS and idle time from prometheus at %s", url)
    return PrometheusMetricSource(
        url,
        window_seconds=settings.metrics.qps_window_seconds,
        timeout=settings.metrics.prometheus_timeout_seconds,
        fallback=local,
    )


class Daemon:
    def __init__(self, settings: ModeliumSettings) -> None:
        self.settings = settings
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Serve until asked to stop; return the process exit code."""
        settings = self.settings
        for folder in (settings.incoming_dir, settings.model_repository, settings.failed_dir,
                       settings.state_dir):
            folder.mkdir(parents=True, exist_ok=True)
        inventory = detect_inventory(settings.gpus)
        metrics = ModeliumMetrics(
            qps_window_seconds=settings.metrics.qps_window_seconds,
            gpu_memory_source=gpu_memory_usage if inventory.source == "nvml" else None,
        )
        metric_source = build_metric_source(settings, metrics)
        runtimes = await asyncio.to_thread(build_runtimes, settings)
        orchestrator = Orchestrator(settings, runtimes.managers, inventory, MemoryLedger(), metrics,
                                    vllm_architectures=runtimes.vllm_architectures,
                                    unavailable=runtimes.unavailable,
                                    triton_backends=runtimes.triton_backends,
                                    metric_source=metric_source,
                                    store=StateStore.in_state_dir(settings.state_dir))
        log.info("devices: %s", ", ".join(f"{d.id} ({d.name}, {d.total_bytes / 2**30:.1f} GiB)"
                                           for d in inventory.devices))

        self._install_signal_handlers()

        if settings.metrics.enabled and settings.metrics.port is not None:
            metrics.start_http_server(settings.metrics.host, settings.metrics.port)
        server = _GatewayServer(uvicorn.Config(
            create_app(orchestrator, metrics), host=settings.gateway.host,
            port=settings.gateway.port, log_config=None, access_log=False,
            http="httptools",  # C parser; the loop is uvloop, made by serve() below
        ))
        server_task = asyncio.create_task(self._serve_gateway(server), name="gateway")
        watcher = DropWatcher(
            settings.incoming_dir,
            DropHandler(orchestrator, analysis_timeout_seconds=settings.discovery.analysis_timeout_seconds,
                        max_files_per_drop=settings.discovery.max_files_per_drop),
            settle_seconds=settings.discovery.settle_seconds,
            rescan_interval_seconds=settings.discovery.rescan_interval_seconds,
            use_events=settings.discovery.use_events,
        )
        background: list[asyncio.Task] = []
        exit_code = 0
        try:
            start_task = asyncio.create_task(orchestrator.start(), name="startup")
            stop_wait = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait({start_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            # ray.init() installs Ray's own C-level SIGTERM handler (which prints a stack
            # trace and may kill us before the runtimes are stopped): take the signals back.
            self._install_signal_handlers()
            if start_task in done and start_task.exception() is None:
                log.info("modelium ready on http://%s:%d", settings.gateway.host, settings.gateway.port)
                background = [
                    asyncio.create_task(watcher.run(), name="watcher"),
                    asyncio.create_task(orchestrator.run_control_loop(), name="control-loop"),
                ]
                await asyncio.wait({stop_wait, server_task}, return_when=asyncio.FIRST_COMPLETED)
            elif start_task in done:
                exc = start_task.exception()
                orchestrator.startup_error = f"start-up failed: {type(exc).__name__}: {exc}"
                log.error(orchestrator.startup_error, exc_info=exc)
                exit_code = 1
            else:
                start_task.cancel()
            if server_task.done() and server_task.result() is not None:
                exit_code = server_task.result()
        finally:
            log.info("shutting down")
            try:
                await asyncio.wait_for(watcher.stop(), WATCHER_STOP_TIMEOUT_SECONDS)
            except Exception:  # noqa: BLE001 - a stuck drop must not keep runtimes running
                log.exception("stopping the drop watcher failed; going on")
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            try:
                await asyncio.wait_for(orchestrator.stop(), SHUTDOWN_TIMEOUT_SECONDS)
            except Exception:  # noqa: BLE001 - keep going: the gateway must still close
                log.exception("stopping runtimes failed")
            server.should_exit = True
            await asyncio.gather(server_task, return_exceptions=True)
            metrics.close()
            with contextlib.suppress(Exception):
                await metric_source.aclose()
            log.info("stopped")
        return exit_code

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
            loop.add_signal_handler(signum, self.request_stop)

    async def _serve_gateway(self, server: uvicorn.Server) -> int | None:
        """Run uvicorn; a bind failure stops the daemon with an error instead of hanging."""
        try:
            await server.serve()
        except SystemExit as exc:
            log.error("gateway could not start on %s:%d (port in use?)",
                      self.settings.gateway.host, self.settings.gateway.port)
            self.request_stop()
            return int(exc.code or 1)
        return None


def serve(settings: ModeliumSettings) -> int:
    # uvloop: the gateway relays every streamed token, and uvloop's loop costs far less per
    # read and write than asyncio's (docs/benchmarks.md, the relay). uvicorn's own `loop`
    # setting only applies when uvicorn makes the loop; here the daemon does.
    try:
        import uvloop
    except ImportError:  # uvicorn[standard] brings it, except where it does not build
        return asyncio.run(Daemon(settings).run())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(Daemon(settings).run())
