"""A cheap fingerprint of a model folder, so a restarted daemon can tell whether a Ray
Serve app left running by an earlier run still serves the folder now in the repository.

Hashing contents would read gigabytes of weights at every start; sizes and mtimes catch
every realistic change (a re-dropped folder, an edited config, a swapped weight file)
without reading file data.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def folder_signature(path: Path | str) -> str:
    """Hex digest over (relative path, size, mtime_ns) of every file under ``path``.

    Symlinks are followed for files (their targets' sizes count), directories are walked
    in sorted order so the result does not depend on the filesystem's listing order.
    Raises FileNotFoundError when ``path`` is not a directory.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            file = Path(dirpath, filename)
            try:
                stat = file.stat()
            except FileNotFoundError:  # a dangling link or a file removed while walking
                continue
            relative = file.relative_to(root).as_posix()
            digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
