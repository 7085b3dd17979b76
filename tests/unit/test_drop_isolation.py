"""Nothing in one drop may stall the others or shutdown: the analysis child process is
killed on timeout and on cancellation, a stuck hand-over holds up no other drop, the
watcher's stop() returns at once, and settle scans have a budget."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import psutil
import pytest

from modelium.analysis import InvalidModelError, analyze_folder
from modelium.analysis.isolated import analyze_isolated
from modelium.discovery import REASON_FILE, DropWatcher, scan_drop
from modelium.orchestrator import DropHandler
from tests.unit.fakes import make_config_only_model
from tests.unit.test_orchestrator import build


def fake_python(tmp_path: Path, body: str) -> str:
    """An "interpreter" that ignores its arguments and runs the shell ``body``."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def children() -> list[psutil.Process]:
    """Our fake analysis children still alive (other tests' processes do not count)."""
    alive = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.name() == "sleep" and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.Error:
            continue
    return alive


async def test_isolated_analysis_gives_the_same_profile(tmp_path: Path) -> None:
    folder = make_config_only_model(tmp_path / "m")
    assert await analyze_isolated(folder, "m") == analyze_folder(folder, "m")


async def test_isolated_analysis_reports_the_reason(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    os.mkfifo(tmp_path / "m" / "config.json")
    with pytest.raises(InvalidModelError, match=r"config.json is a FIFO"):
        await analyze_isolated(tmp_path / "m", "m")


async def test_a_hung_analysis_is_killed_at_its_timeout(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "exec sleep 60")
    started = time.monotonic()
    with pytest.raises(InvalidModelError, match=r"did not finish within 0.5 s"):
        await analyze_isolated(tmp_path, "m", timeout=0.5, python=python)
    assert time.monotonic() - started < 3
    assert children() == []


async def test_cancelling_the_analysis_kills_the_child(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "exec sleep 60")
    task = asyncio.create_task(analyze_isolated(tmp_path, "m", timeout=60, python=python))
    await asyncio.sleep(0.3)
    assert children()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert children() == []


async def test_a_crashing_analysis_is_a_reason(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "echo 'Segmentation fault' >&2; exit 139")
    with pytest.raises(InvalidModelError, match=r"analysis crashed \(exit status 139\): Segmentation fault"):
        await analyze_isolated(tmp_path, "m", python=python)


async def test_handler_quarantines_a_drop_whose_analysis_times_out(tmp_path: Path) -> None:
    orchestrator, _ = build(tmp_path)
    await orchestrator.start()
    drop = make_config_only_model(tmp_path / "models/incoming/slow")
    python = fake_python(tmp_path, "exec sleep 60")
    handler = DropHandler(orchestrator, analyze=lambda p, n: analyze_isolated(p, n, timeout=0.3, python=python))
    await handler("slow", drop)
    reason = (tmp_path / "models/failed/slow" / REASON_FILE).read_text()
    assert "did not finish within 0.3 s" in reason


async def test_a_stuck_drop_holds_up_no_other_and_stop_returns_at_once(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    handled: list[str] = []
    cancelled: list[str] = []

    async def on_complete(name: str, path: Path) -> None:
        if name == "stuck":
            try:
                await asyncio.Event().wait()  # an analysis that never ends
            except asyncio.CancelledError:
                cancelled.append(name)
                raise
        handled.append(name)
        path.rename(tmp_path / f"done-{name}")

    watcher = DropWatcher(incoming, on_complete, settle_seconds=0.2, rescan_interval_seconds=0.3,
                          poll_interval_seconds=0.1, max_concurrent_drops=2)
    task = asyncio.create_task(watcher.run())
    for name in ("stuck", "next-1", "next-2", "next-3"):
        make_config_only_model(incoming / name)
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + 8
    while len(handled) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sorted(handled) == ["next-1", "next-2", "next-3"]
    assert watcher.in_flight == {"stuck"}
    started = time.monotonic()
    await asyncio.wait_for(watcher.stop(), 2)
    assert time.monotonic() - started < 0.8
    assert cancelled == ["stuck"]
    await asyncio.wait_for(task, 1)


async def test_stop_does_not_wait_for_a_scan_in_progress(tmp_path: Path, monkeypatch) -> None:
    import modelium.discovery.watcher as watcher_module

    def slow_scan(path, **kw):
        time.sleep(0.4)
        return scan_drop(path, **kw)

    monkeypatch.setattr(watcher_module, "scan_drop", slow_scan)
    make_config_only_model(tmp_path / "incoming/m")

    async def never(name: str, path: Path) -> None:
        raise AssertionError("not expected")

    watcher = DropWatcher(tmp_path / "incoming", never, settle_seconds=30)
    task = asyncio.create_task(watcher.run())
    await asyncio.sleep(0.2)  # inside the slow scan
    started = time.monotonic()
    await asyncio.wait_for(watcher.stop(), 2)
    assert time.monotonic() - started < 0.3
    await asyncio.wait_for(task, 1)


def test_a_settle_scan_stops_at_its_entry_budget(tmp_path: Path) -> None:
    drop = tmp_path / "big"
    drop.mkdir()
    for i in range(300):
        (drop / f"f{i}").write_bytes(b"x")
    scan = scan_drop(drop, max_entries=100)
    assert scan is not None and scan.truncated and scan.snapshot.file_count == 100
    assert not scan_drop(drop).truncated  # type: ignore[union-attr]


def test_special_files_never_keep_a_drop_from_settling(tmp_path: Path) -> None:
    drop = tmp_path / "d"
    drop.mkdir()
    os.mkfifo(drop / "config.json")
    before = scan_drop(drop)
    os.utime(drop / "config.json", ns=(1, 1))  # what a write to the FIFO does to it
    assert scan_drop(drop) == before
    loose = tmp_path / "pipe"
    os.mkfifo(loose)
    scan = scan_drop(loose)
    assert scan is not None and scan.snapshot.file_count == 1 and not scan.has_partial


def test_a_burst_of_events_wakes_the_loop_once_not_once_per_event(tmp_path: Path) -> None:
    """30 000 events (a big folder moved in) must not flood the loop's self-pipe, which
    also carries SIGTERM to asyncio: a full pipe loses the signal."""
    from watchdog.events import FileCreatedEvent

    from modelium.discovery.watcher import _EventForwarder

    class Loop:
        def __init__(self) -> None:
            self.calls: list = []

        def call_soon_threadsafe(self, callback):
            self.calls.append(callback)

    seen: list[str] = []
    loop = Loop()
    forwarder = _EventForwarder(tmp_path, loop, seen.append)  # type: ignore[arg-type]
    for i in range(30_000):
        forwarder.on_any_event(FileCreatedEvent(str(tmp_path / "many" / f"f{i}")))
    forwarder.on_any_event(FileCreatedEvent(str(tmp_path / "other" / "x")))
    assert len(loop.calls) == 1
    loop.calls[0]()
    assert seen == ["many", "other"]
