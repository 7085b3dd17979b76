"""Process-tree helpers the end-to-end tests use to prove nothing is left behind."""

from __future__ import annotations

import psutil


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process under it right now ([] if it is gone)."""
    try:
        proc = psutil.Process(pid)
        return [pid, *(child.pid for child in proc.children(recursive=True))]
    except psutil.Error:
        return []


def alive(pids: list[int]) -> list[int]:
    """The pids still running (zombies count as gone)."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.Error:
            pass
    return running
