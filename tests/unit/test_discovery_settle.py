from pathlib import Path

import pytest

from modelium.discovery import READY_MARKER, SettleTracker, is_partial_name, list_drops, scan_drop


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, content: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


@pytest.mark.parametrize(
    "name",
    ["w.bin.part", "w.PARTIAL", "x.tmp", "a.crdownload", "b.download", "c.incomplete",
     ".~lock.cfg#", "notes.txt~", ".model.safetensors.Ab3xZ9"],
)
def test_partial_names(name: str) -> None:
    assert is_partial_name(name)


@pytest.mark.parametrize(
    "name", ["model.safetensors", "config.json", READY_MARKER, ".gitattributes", "tmp.json"]
)
def test_complete_names(name: str) -> None:
    assert not is_partial_name(name)


def test_list_drops_lists_files_and_links_too_but_not_hidden_entries(tmp_path: Path) -> None:
    # Loose files and links are drops as well: the callback serves or quarantines them.
    (tmp_path / "model-a").mkdir()
    (tmp_path / ".staging").mkdir()
    write(tmp_path / "stray.bin")
    (tmp_path / "link").symlink_to(tmp_path / "model-a")
    assert sorted(list_drops(tmp_path)) == ["link", "model-a", "stray.bin"]
    assert list_drops(tmp_path / "missing") == {}


def test_snapshot_ignores_hidden_but_sees_partials(tmp_path: Path) -> None:
    drop = tmp_path / "m"
    write(drop / "config.json", "{}")
    write(drop / ".cache" / "info", "ignored")
    write(drop / ".gitattributes", "ignored")
    scan = scan_drop(drop)
    assert scan is not None
    assert scan.snapshot.file_count == 1
    assert scan.snapshot.names == frozenset({"config.json"})
    assert not scan.has_partial and not scan.ready

    write(drop / ".cache" / "blob.incomplete")
    assert scan_drop(drop).has_partial  # type: ignore[union-attr]
    assert scan_drop(tmp_path / "gone") is None


def test_settle_with_fake_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = SettleTracker(settle_seconds=2.0, clock=clock)
    drop = tmp_path / "m"
    write(drop / "a.bin")

    def observe() -> bool:
        scan = scan_drop(drop)
        assert scan is not None
        return tracker.observe("m", scan)

    assert not observe()  # first look only starts the timer
    clock.now += 1.9
    assert not observe()
    write(drop / "b.bin")  # a change restarts the timer
    clock.now += 0.5
    assert not observe()
    clock.now += 1.9
    assert not observe()
    clock.now += 0.2
    assert observe()

    tracker.forget("m")
    assert "m" not in tracker
    assert not observe()


def test_ready_marker_short_circuits(tmp_path: Path) -> None:
    tracker = SettleTracker(settle_seconds=60.0, clock=FakeClock())
    drop = tmp_path / "m"
    write(drop / "a.bin")
    write(drop / READY_MARKER, "")
    scan = scan_drop(drop)
    assert scan is not None and scan.ready
    assert tracker.observe("m", scan)


def test_partial_file_blocks_even_with_ready_marker(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = SettleTracker(settle_seconds=1.0, clock=clock)
    drop = tmp_path / "m"
    write(drop / "a.bin")
    write(drop / "b.bin.part")
    write(drop / READY_MARKER, "")
    for _ in range(3):
        scan = scan_drop(drop)
        assert scan is not None
        assert not tracker.observe("m", scan)
        clock.now += 10


def test_empty_drop_never_settles(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = SettleTracker(settle_seconds=1.0, clock=clock)
    drop = tmp_path / "m"
    drop.mkdir()
    for _ in range(3):
        scan = scan_drop(drop)
        assert scan is not None
        assert not tracker.observe("m", scan)
        clock.now += 10
