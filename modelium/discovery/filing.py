"""Move finished drops to their final home: the repository, or quarantine.

The rest of Modelium treats ``repository/<name>`` as "a complete model", so a folder must
never appear under its final name half-copied. Everything is therefore staged under a hidden
temp name inside the destination directory (same filesystem as the final name) and then
renamed into place, which is atomic. Replacing an existing model is rename-old-aside,
rename-new-in, delete-old: there is a short moment with no folder under the name, but never
a mixed or partial one.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

from .settle import READY_MARKER

log = logging.getLogger(__name__)

REASON_FILE = "REASON.txt"


def file_into_repository(drop: Path, repository: Path, name: str) -> Path:
    """Move ``drop`` to ``repository/name`` (replacing any older version) and return that path.

    The ``.ready`` marker is removed before the folder appears under its final name, since it
    only means something in ``incoming/``.
    """
    _check_component(name)
    staged = _stage(drop, repository, name)
    (staged / READY_MARKER).unlink(missing_ok=True)
    return _swap_into_place(staged, repository / name, restore_to=drop)


def stage_in_repository(drop: Path, repository: Path, name: str) -> Path:
    """Move ``drop`` into a hidden folder of ``repository`` (a re-drop's new version, loaded
    from there beside the old one) and return it; :func:`commit_staged` files it."""
    _check_component(name)
    staged = _stage(drop, repository, name)
    (staged / READY_MARKER).unlink(missing_ok=True)
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
    staged = _stage(drop, failed_dir, name)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    (staged / REASON_FILE).write_text(
        f"Rejected at {stamp} (UTC)\nOriginal path: {original}\n\n{reason.rstrip()}\n",
        encoding="utf-8",
    )
    return _swap_into_place(staged, failed_dir / name, restore_to=drop)


def find_unsafe_symlinks(drop: Path) -> list[str]:
    """List symlinks in ``drop`` (relative paths) that would not survive being filed.

    Unsafe means: dangling, resolving outside the drop (a drop could otherwise make the
    server read ``/etc/shadow`` or another user's model), or absolute even if currently
    pointing inside the drop (it would point back into ``incoming/`` once moved).
    Relative links between files of the drop are fine.
    """
    root = drop.resolve()
    unsafe: list[str] = []
    for dirpath, dirnames, filenames in os.walk(drop, followlinks=False):
        for entry in sorted(dirnames + filenames):
            path = Path(dirpath, entry)
            if not path.is_symlink():
                continue
            rel = str(path.relative_to(drop))
            target = os.readlink(path)
            resolved = path.resolve()
            if not resolved.exists():
                unsafe.append(f"{rel} -> {target} (dangling)")
            elif not resolved.is_relative_to(root):
                unsafe.append(f"{rel} -> {target} (outside the drop)")
            elif os.path.isabs(target):
                unsafe.append(f"{rel} -> {target} (absolute; would break once filed)")
    return sorted(unsafe)


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

    Same filesystem: one rename. Across filesystems (EXDEV), copy into the temp dir first and
    delete the source only once the copy is complete; a failed copy leaves the source intact.
    """
    parent.mkdir(parents=True, exist_ok=True)
    staged = _temp_name(parent, "incoming", name)
    try:
        os.rename(drop, staged)
        return staged
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    log.info("moving %s across filesystems by copying", drop)
    try:
        shutil.copytree(drop, staged, symlinks=True)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    shutil.rmtree(drop)
    return staged


def _swap_into_place(staged: Path, final: Path, *, restore_to: Path) -> Path:
    """Rename ``staged`` to ``final``, replacing whatever is there.

    If the last step fails, the old version is put back and the staged drop is returned to
    where it came from (best effort), so a failure never loses either.
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
        _put_back(staged, restore_to)
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
