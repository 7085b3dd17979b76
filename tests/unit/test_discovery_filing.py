import errno
import os
from pathlib import Path

import pytest

from modelium.discovery import (
    READY_MARKER,
    REASON_FILE,
    file_into_repository,
    find_unsafe_symlinks,
    quarantine,
    symlink_rejection_reason,
)
from modelium.discovery import filing


def make_drop(root: Path, name: str, files: dict[str, str]) -> Path:
    drop = root / name
    for rel, content in files.items():
        (drop / rel).parent.mkdir(parents=True, exist_ok=True)
        (drop / rel).write_text(content)
    return drop


def hidden_entries(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


def test_file_same_filesystem(tmp_path: Path) -> None:
    files = {"config.json": "{}", "sub/w.bin": "w", READY_MARKER: ""}
    drop = make_drop(tmp_path / "incoming", "Model-X", files)
    repo = tmp_path / "repo"
    final = file_into_repository(drop, repo, "model-x")
    assert final == repo / "model-x"
    assert not drop.exists()
    assert (final / "config.json").read_text() == "{}"
    assert (final / "sub/w.bin").read_text() == "w"
    assert not (final / READY_MARKER).exists()
    assert hidden_entries(repo) == []


def test_file_replaces_existing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_drop(repo, "model-x", {"old.bin": "old", "config.json": "old"})
    drop = make_drop(tmp_path / "incoming", "model-x", {"new.bin": "new", "config.json": "new"})
    final = file_into_repository(drop, repo, "model-x")
    assert sorted(p.name for p in final.iterdir()) == ["config.json", "new.bin"]
    assert (final / "config.json").read_text() == "new"
    assert hidden_entries(repo) == []
    assert [p.name for p in repo.iterdir()] == ["model-x"]


def test_file_across_filesystems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    make_drop(repo, "model-x", {"old.bin": "old"})
    files = {"w.bin": "new", "link": "", READY_MARKER: ""}
    drop = make_drop(tmp_path / "incoming", "model-x", files)
    (drop / "link").unlink()
    (drop / "link").symlink_to("w.bin")
    real_rename = os.rename
    incoming = str(tmp_path / "incoming")

    def rename(src: "os.PathLike[str] | str", dst: "os.PathLike[str] | str") -> None:
        # Anything leaving incoming/ crosses a filesystem boundary.
        if str(src).startswith(incoming):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(src, dst)

    monkeypatch.setattr(filing.os, "rename", rename)
    final = file_into_repository(drop, repo, "model-x")
    assert not drop.exists()
    assert sorted(p.name for p in final.iterdir()) == ["link", "w.bin"]
    assert (final / "link").is_symlink() and (final / "link").read_text() == "new"
    assert hidden_entries(repo) == []


def test_failed_cross_fs_copy_keeps_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drop = make_drop(tmp_path / "incoming", "m", {"w.bin": "w"})
    repo = tmp_path / "repo"

    def rename(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def copytree(src: object, dst: Path, **kw: object) -> None:
        Path(dst).mkdir()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(filing.os, "rename", rename)
    monkeypatch.setattr(filing.shutil, "copytree", copytree)
    with pytest.raises(OSError):
        file_into_repository(drop, repo, "m")
    assert (drop / "w.bin").read_text() == "w"
    assert list(repo.iterdir()) == []


def test_rejects_unsafe_names(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, "m", {"a": "a"})
    for bad in ["", ".", "..", "a/b", ".hidden"]:
        with pytest.raises(ValueError):
            file_into_repository(drop, tmp_path / "repo", bad)
    assert drop.exists()


def test_quarantine_writes_reason_and_replaces(tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    make_drop(failed, "broken", {"stale.bin": "x", REASON_FILE: "old reason"})
    drop = make_drop(tmp_path / "incoming", "broken", {"config.json": "{not json"})
    original = drop.absolute()
    target = quarantine(drop, failed, "broken", "config.json is not valid JSON")
    assert target == failed / "broken"
    assert not drop.exists()
    assert sorted(p.name for p in target.iterdir()) == [REASON_FILE, "config.json"]
    reason = (target / REASON_FILE).read_text()
    assert "config.json is not valid JSON" in reason
    assert str(original) in reason
    assert "UTC" in reason
    assert hidden_entries(failed) == []


def test_symlink_escaping_drop_is_unsafe(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    drop = make_drop(tmp_path, "m", {"w.bin": "w", "sub/x": "x"})
    (drop / "leak").symlink_to(secret)
    (drop / "sub" / "up").symlink_to("../../secret.txt")
    (drop / "dangling").symlink_to("nowhere")
    (drop / "dir-out").symlink_to(tmp_path)
    unsafe = find_unsafe_symlinks(drop)
    assert [u.split(" ->")[0] for u in unsafe] == ["dangling", "dir-out", "leak", "sub/up"]
    reason = symlink_rejection_reason(drop)
    assert reason is not None and "leak" in reason


def test_inner_relative_symlink_is_fine(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, "m", {"blobs/abc": "w", "snap/cfg": "{}"})
    (drop / "model.bin").symlink_to("blobs/abc")
    (drop / "snap" / "blobs").symlink_to("../blobs")
    assert find_unsafe_symlinks(drop) == []
    assert symlink_rejection_reason(drop) is None


def test_absolute_symlink_inside_drop_is_unsafe(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, "m", {"w.bin": "w"})
    (drop / "abs").symlink_to(drop / "w.bin")
    assert len(find_unsafe_symlinks(drop)) == 1
