"""What a dropped folder holds, checked before any file in it is read.

The analyzer reads a few files of a folder; this module looks at *all* of its entries,
by ``lstat`` only (nothing is opened, no link is followed), and refuses a folder that
cannot be a model or cannot be filed safely:

* more than ``max_files`` entries (a model has a few dozen files; a home directory or a
  dataset dropped by mistake has tens of thousands, and every later step walks them);
* folders nested deeper than ``max_depth`` (recursive tools and path lengths break);
* special files (FIFOs, sockets, devices): reading one blocks forever or never ends;
* symlinks that dangle, loop, point outside the folder, or are absolute (a drop could
  otherwise make the server read ``/etc/shadow`` or another user's model, and absolute
  links would break once the folder is moved).

The walk is iterative and stops at the first limit it crosses, so its cost is bounded by
``max_files`` whatever the folder holds.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from modelium.analysis.files import kind_of
from modelium.analysis.profile import InvalidModelError

MAX_FILES_PER_DROP = 20_000
MAX_DEPTH = 32
_LISTED = 5  # offending entries named in a reason; the rest are counted


def inspect_contents(root: Path, *, max_files: int = MAX_FILES_PER_DROP,
                     max_depth: int = MAX_DEPTH) -> None:
    """Raise InvalidModelError when the folder ``root`` breaks one of the rules above."""
    root = Path(root)
    count = 0
    special: list[str] = []
    links: list[Path] = []
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as entries:
                listing = list(entries)
        except OSError as exc:
            rel = _rel(folder, root) or "the folder"
            raise InvalidModelError(f"{rel} cannot be listed ({exc.strerror or exc})") from exc
        for entry in listing:
            count += 1
            if count > max_files:
                raise InvalidModelError(
                    f"the drop holds more than {max_files} files; a model folder holds a "
                    "few dozen (was the wrong folder dropped?)"
                )
            path = Path(entry.path)
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue  # vanished while we looked
            if stat.S_ISLNK(mode):
                links.append(path)
            elif stat.S_ISDIR(mode):
                if depth + 1 > max_depth:
                    raise InvalidModelError(
                        f"folders are nested more than {max_depth} levels deep "
                        f"({_rel(path, root)[:120]}...); a model folder is not"
                    )
                stack.append((path, depth + 1))
            elif not stat.S_ISREG(mode):
                special.append(f"{_rel(path, root)} is {kind_of(mode)}")
    if special:
        raise InvalidModelError(
            "the drop contains special files that cannot be model data: "
            + _listing(sorted(special))
        )
    unsafe = unsafe_symlinks(root, links)
    if unsafe:
        raise InvalidModelError(
            "the drop contains symlinks that point outside it, dangle, or are absolute "
            "(copy the real files instead, e.g. `cp -rL`): " + _listing(unsafe)
        )


def unsafe_symlinks(root: Path, links: list[Path] | None = None) -> list[str]:
    """``"REL -> TARGET (why)"`` for each link under ``root`` that would not survive being
    filed; ``links`` are the links found by a walk (found here when None).

    Unsafe means: dangling or looping, resolving outside ``root``, or absolute even if it
    currently points inside (it would point back into ``incoming/`` once moved).
    Relative links between files of the folder are fine.
    """
    root = Path(root)
    if links is None:
        links = _find_links(root)
    real_root = Path(os.path.realpath(root))
    unsafe: list[str] = []
    for path in links:
        rel = _rel(path, root)
        try:
            target = os.readlink(path)
        except OSError:
            continue  # vanished, or no longer a link
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):  # missing target, or a loop (RuntimeError on 3.11)
            unsafe.append(f"{rel} -> {target} (dangling or a loop)")
            continue
        if not resolved.is_relative_to(real_root):
            unsafe.append(f"{rel} -> {target} (outside the drop)")
        elif os.path.isabs(target):
            unsafe.append(f"{rel} -> {target} (absolute; would break once filed)")
    return sorted(unsafe)


def _find_links(root: Path) -> list[Path]:
    links, stack = [], [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        links.append(Path(entry.path))
                    elif entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
        except OSError:
            continue
    return links


def _rel(path: Path, root: Path) -> str:
    rel = os.path.relpath(path, root)
    return "" if rel == "." else rel


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    more = len(items) - _LISTED
    return shown + (f" and {more} more" if more > 0 else "")
