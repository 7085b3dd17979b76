"""DropWatcher against the real filesystem and real time (kept short: a few seconds each)."""

import asyncio
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from modelium.discovery import READY_MARKER, DropWatcher


class Recorder:
    """on_complete callback that records what it saw at hand-over time."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, Path, int, float]] = []
        self.fail = fail

    async def __call__(self, name: str, path: Path) -> None:
        files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
        self.calls.append((name, path, len(files), time.monotonic()))
        if self.fail:
            raise RuntimeError("boom")

    @property
    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


async def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


class Running:
    """Run a watcher in a background task for the duration of a test."""

    def __init__(self, watcher: DropWatcher) -> None:
        self.watcher = watcher
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DropWatcher:
        self.task = asyncio.create_task(self.watcher.run())
        await asyncio.sleep(0.1)  # let the observer start before the test writes
        return self.watcher

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.wait_for(self.watcher.stop(), timeout=5)
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout=5)


def make_watcher(
    incoming: Path, recorder: Callable[[str, Path], Awaitable[None]], **kw: object
) -> DropWatcher:
    kw.setdefault("rescan_interval_seconds", 0.5)
    kw.setdefault("poll_interval_seconds", 0.1)
    return DropWatcher(incoming, recorder, **kw)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_slow_file_by_file_copy_is_taken_once_after_last_file(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    recorder = Recorder()
    total = 6
    last_write: list[float] = []

    async def slow_copy() -> None:
        drop = incoming / "model-x"
        drop.mkdir(parents=True)
        for i in range(total):
            (drop / f"shard-{i}.bin").write_bytes(b"w" * (1000 * (i + 1)))
            last_write.append(time.monotonic())
            if i < total - 1:
                await asyncio.sleep(0.6)

    # Long rescan interval: events + polling must do the work, like in production.
    watcher = make_watcher(incoming, recorder, settle_seconds=1.0, rescan_interval_seconds=5.0)
    incoming.mkdir()
    async with Running(watcher):
        await slow_copy()
        assert await wait_for(lambda: recorder.calls, timeout=4)
        await asyncio.sleep(1.0)  # no second hand-over of an unchanged drop

    assert len(recorder.calls) == 1
    name, path, file_count, called_at = recorder.calls[0]
    assert (name, path) == ("model-x", incoming / "model-x")
    assert file_count == total
    assert called_at - last_write[-1] >= 1.0


@pytest.mark.asyncio
async def test_ready_marker_skips_settle_time(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    recorder = Recorder()
    async with Running(make_watcher(incoming, recorder, settle_seconds=30.0)):
        drop = incoming / "model-r"
        drop.mkdir()
        (drop / "w.bin").write_text("w")
        (drop / READY_MARKER).write_text("")
        assert await wait_for(lambda: recorder.calls, timeout=3)
    assert recorder.names == ["model-r"]


@pytest.mark.asyncio
async def test_partial_file_blocks_until_renamed(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    recorder = Recorder()
    async with Running(make_watcher(incoming, recorder, settle_seconds=0.3)):
        drop = incoming / "model-p"
        drop.mkdir()
        (drop / "config.json").write_text("{}")
        (drop / "w.bin.part").write_text("w")
        await asyncio.sleep(1.5)
        assert recorder.calls == []
        (drop / "w.bin.part").rename(drop / "w.bin")
        assert await wait_for(lambda: recorder.calls, timeout=3)
    assert recorder.calls[0][2] == 2


@pytest.mark.asyncio
async def test_hidden_entries_are_ignored_but_loose_files_are_handed_over(tmp_path: Path) -> None:
    # A loose file is a drop too (the callback serves a .onnx, quarantines the rest).
    incoming = tmp_path / "incoming"
    recorder = Recorder()
    async with Running(make_watcher(incoming, recorder, settle_seconds=0.2)):
        (incoming / ".staging").mkdir()
        (incoming / ".staging" / "w.bin").write_text("w")
        (incoming / "stray.bin").write_text("w")
        (incoming / "half.onnx.part").write_text("w")  # still downloading: not yet
        await asyncio.sleep(1.2)
    assert recorder.names == ["stray.bin"]


@pytest.mark.asyncio
async def test_rescan_alone_finds_drops(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    recorder = Recorder()
    watcher = make_watcher(
        incoming, recorder, settle_seconds=0.3, rescan_interval_seconds=0.3, use_events=False
    )
    async with Running(watcher):
        drop = incoming / "model-n"
        drop.mkdir()
        (drop / "w.bin").write_text("w")
        assert await wait_for(lambda: recorder.calls, timeout=3)
    assert recorder.names == ["model-n"]


@pytest.mark.asyncio
async def test_failing_callback_is_retried_only_after_a_change(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    recorder = Recorder(fail=True)
    async with Running(make_watcher(incoming, recorder, settle_seconds=0.2)):
        drop = incoming / "model-f"
        drop.mkdir()
        (drop / "w.bin").write_text("w")
        assert await wait_for(lambda: recorder.calls, timeout=3)
        await asyncio.sleep(1.0)
        assert len(recorder.calls) == 1
        (drop / "fix.json").write_text("{}")
        assert await wait_for(lambda: len(recorder.calls) == 2, timeout=3)
    assert recorder.calls[1][2] == 2


@pytest.mark.asyncio
async def test_moved_away_drop_name_can_be_reused(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    done = tmp_path / "done"
    done.mkdir()
    seen: list[str] = []

    async def file_it(name: str, path: Path) -> None:
        seen.append(name)
        path.rename(done / f"{name}-{len(seen)}")

    async with Running(make_watcher(incoming, file_it, settle_seconds=0.2)):
        for _ in range(2):
            drop = incoming / "model-m"
            drop.mkdir()
            (drop / "w.bin").write_text("w")
            count = len(seen)
            assert await wait_for(lambda: len(seen) == count + 1, timeout=3)
    assert seen == ["model-m", "model-m"]


def watchdog_threads() -> list[threading.Thread]:
    threads = threading.enumerate()
    return [t for t in threads if type(t).__module__.startswith("watchdog") and t.is_alive()]


@pytest.mark.asyncio
async def test_cancel_stops_observer_thread(tmp_path: Path) -> None:
    assert watchdog_threads() == []
    task = asyncio.create_task(make_watcher(tmp_path / "incoming", Recorder()).run())
    await asyncio.sleep(0.2)
    assert watchdog_threads()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert watchdog_threads() == []


@pytest.mark.asyncio
async def test_drop_removed_while_settling_is_forgotten(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    recorder = Recorder()
    async with Running(make_watcher(incoming, recorder, settle_seconds=0.6)):
        drop = incoming / "model-gone"
        drop.mkdir()
        (drop / "w.bin").write_text("w")
        await asyncio.sleep(0.3)
        shutil.rmtree(drop)
        await asyncio.sleep(1.2)
    assert recorder.calls == []
