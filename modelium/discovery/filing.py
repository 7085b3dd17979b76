"""Move finished drops to their final home: the repository, or quarantine.

The rest of Modelium treats ``repository/<name>`` as "a complete model", so a folder must
never appear under its final name half-copied. Everything is therefore staged under a hidden
temp name inside the destination directory (same filesystem as the final name) and then
renamed into place, which is atomic. Replacing an existing model is rename-old-aside,
rename-new-in, delete-old: there is a short moment with no folder under the name, but never
a mixed or partial one.

A drop is not always a folder: a loose file, a link or a FIFO in ``incoming/`` is staged as
a folder holding it (a loose ``.onnx`` becomes a model folder that way; anything else is
quarantined that way). Moving never follows a link and never opens a special file: a
rename moves the entry itself, and the copy across filesystems recreates links as links
and leaves special files behind.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import uuid
from datetime import datetime, timezone
from pathlib import Path

from modelium.analysis.contents import unsafe_symlinks

from .settle import READY_MARKER

log = logging.getLogger(__name__)

REASON_FILE = "REASON.txt"


def file_into_repository(drop: Path, repository: Path, name: str) -> Path:
    """Move ``drop`` to ``repository/name`` (replacing any older version) and return that path.

    The ``.ready`` marker is removed before the folder appears under its final name, since it
    only means something in ``incoming/``.
    """
    _check_component(name)
    wrapped = not _is_folder(drop)
    staged = _stage(drop, repository, name)
    _remove_marker(staged)
    return _swap_into_place(staged, repository / name, restore_to=drop, wrapped=wrapped)


def stage_in_repository(drop: Path, repository: Path, name: str) -> Path:
    """Move ``drop`` into a hidden folder of ``repository`` (a re-drop's new version, loaded
    from there beside the old one) and return it; :func:`commit_staged` files it."""
    _check_component(name)
    staged = _stage(drop, repository, name)
    _remove_marker(staged)
    return staged


def commit_staged(staged: Path, repository: Path, name: str) -> Path:
    """Make a staged version ``repository/name`` (the old folder is removed)."""
    _check_component(name)
    return _swap_into_place(staged, repository / name, restore_to=staged)


def quarantine(drop: Path, failed_dir: Path, name: str, reason: str) -> Path:
    """Move a rejected ``drop`` to ``failed_dir/name`` with a REASON.txt explaining why.

    An older quarantined copy with the same name is replaced: the newest failure is the one
    the user wants to read about. The drop is otherwise kept as it was, so the user can fix
    it and copy it back into ``incoming/``.
    """
    _check_component(name)
    original = drop.absolute()
    wrapped = not _is_folder(drop)
    staged = _stage(drop, failed_dir, name)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    _write_reason(staged, f"Rejected at {stamp} (UTC)\nOriginal path: {original}\n\n{reason.rstrip()}\n")
    return _swap_into_place(staged, failed_dir / name, restore_to=drop, wrapped=wrapped)


def _write_reason(staged: Path, text: str) -> None:
    """Write REASON.txt without trusting what the drop had under that name: a drop's own
    ``REASON.txt -> /etc/passwd`` must be replaced, never written through."""
    target = staged / REASON_FILE
    if os.path.lexists(target):
        if target.is_dir() and not target.is_symlink():
            os.rename(target, staged / f"{REASON_FILE}.from-drop")
        else:
            target.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    # backslashreplace: a name that is not UTF-8 (surrogate-escaped) must not stop the write
    with os.fdopen(os.open(target, flags, 0o644), "w", encoding="utf-8",
                   errors="backslashreplace") as handle:
        handle.write(text)


def _remove_marker(staged: Path) -> None:
    """The ``.ready`` marker only means something in ``incoming/``; whatever it is."""
    marker = staged / READY_MARKER
    if marker.is_dir() and not marker.is_symlink():
        shutil.rmtree(marker, ignore_errors=True)
    else:
        marker.unlink(missing_ok=True)


def find_unsafe_symlinks(drop: Path) -> list[str]:
    """List symlinks in ``drop`` (relative paths) that would not survive being filed.

    Unsafe means: dangling or looping, resolving outside the drop (a drop could otherwise
    make the server read ``/etc/shadow`` or another user's model), or absolute even if
    currently pointing inside the drop (it would point back into ``incoming/`` once
    moved). Relative links between files of the drop are fine. The walk never follows
    links (see :func:`modelium.analysis.contents.unsafe_symlinks`).
    """
    return unsafe_symlinks(drop)


def symlink_rejection_reason(drop: Path) -> str | None:
    """A human-readable reason to reject ``drop`` because of its symlinks, or None if fine."""
    unsafe = find_unsafe_symlinks(drop)
    if not unsafe:
        return None
    lines = "\n".join(f"  {item}" for item in unsafe)
    return (
        "The drop contains symlinks that point outside it, dangle, or are absolute. "
        "Copy the real files instead (e.g. `cp -rL` or `rsync -L`):\n" + lines
    )


def _check_component(name: str) -> None:
    """Refuse names that are not a single plain path component (we join them to dirs)."""
    if not name or name in (".", "..") or "/" in name or "\0" in name or name.startswith("."):
        raise ValueError(f"not a usable folder name: {name!r}")


def _temp_name(parent: Path, purpose: str, name: str) -> Path:
    # Hidden, so watchers and listings of the repository skip it; unique, so concurrent or
    # crashed attempts never collide.
    return parent / f".{purpose}-{name}-{uuid.uuid4().hex[:12]}"


def _stage(drop: Path, parent: Path, name: str) -> Path:
    """Get ``drop`` into a hidden temp dir inside ``parent``; the drop itself is gone after.

    A drop that is not a directory (a loose file, a link, a FIFO) becomes the only entry of
    a new temp dir. Same filesystem: one rename. Across filesystems (EXDEV), copy into the
    temp dir first and delete the source only once the copy is complete; a failed copy
    leaves the source intact.
    """
    parent.mkdir(parents=True, exist_ok=True)
    staged = _temp_name(parent, "incoming", name)
    is_folder = _is_folder(drop)
    if not is_folder:
        staged.mkdir()
    try:
        os.rename(drop, staged if is_folder else staged / drop.name)
        return staged
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            if not is_folder:
                staged.rmdir()
            raise
    log.info("moving %s across filesystems by copying", drop)
    try:
        if is_folder:
            shutil.copytree(drop, staged, symlinks=True, copy_function=_copy_entry)
        else:
            _copy_entry(drop, staged / drop.name)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    _remove(drop)
    return staged


def _is_folder(drop: Path) -> bool:
    return stat.S_ISDIR(os.lstat(drop).st_mode)


def _copy_entry(source: str | Path, target: str | Path) -> None:
    """Copy one entry without following it: links stay links, special files (which would
    block or never end if read) are left behind."""
    mode = os.lstat(source).st_mode
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(source), target)
    elif stat.S_ISREG(mode):
        shutil.copy2(source, target, follow_symlinks=False)
    else:
        log.warning("not copying %s: a special file", source)


def _swap_into_place(staged: Path, final: Path, *, restore_to: Path, wrapped: bool = False) -> Path:
    """Rename ``staged`` to ``final``, replacing whatever is there.

    If the last step fails, the old version is put back and the staged drop is returned to
    where it came from (best effort; a ``wrapped`` loose entry goes back as itself), so a
    failure never loses either.
    """
    old: Path | None = None
    if os.path.lexists(final):
        old = _temp_name(final.parent, "replaced", final.name)
        os.rename(final, old)
    try:
        os.rename(staged, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        _put_back(staged / restore_to.name if wrapped else staged, restore_to)
        raise
    if old is not None:
        _remove(old)
    return final


def _put_back(staged: Path, original: Path) -> None:
    try:
        if not os.path.lexists(original):
            shutil.move(staged, original)
    except OSError:
        log.exception("could not return the drop to %s; it is left at %s", original, staged)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
