"""Killing vLLM servers an earlier daemon left running (the parent-death signal reaches
only the API server, and an engine core outlives a SIGKILLed one, so a crashed daemon can
leave either behind holding memory).

A process is a stray when its ``VLLM_CACHE_ROOT`` is this state dir's (every server
Modelium starts gets one) and no server of the current manager leads its process group.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable
from pathlib import Path

import psutil

from modelium.runtimes.vllm.command import API_SERVER_MODULE

log = logging.getLogger(__name__)

#: Set in each server's environment so a stray is reported by its instance key (its
#: ``--served-model-name`` is only the public name).
INSTANCE_ENV = "MODELIUM_VLLM_INSTANCE"
STRAY_TERM_TIMEOUT = 10.0


def kill_strays(cache_root: Path, own_groups: Iterable[int]) -> list[str]:
    """SIGTERM (then SIGKILL) the strays; returns the instance keys of the API servers
    among them. Blocking for up to STRAY_TERM_TIMEOUT."""
    ours_root = str(cache_root)
    groups = set(own_groups)
    strays: list[psutil.Process] = []
    names: list[str] = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid == os.getpid() or os.getpgid(proc.pid) in groups:
                continue
            environ = proc.environ()
            if environ.get("VLLM_CACHE_ROOT") != ours_root:
                continue
        except (psutil.Error, OSError):
            continue
        strays.append(proc)
        cmdline = proc.info.get("cmdline") or []
        if API_SERVER_MODULE in cmdline and "--served-model-name" in cmdline:
            index = cmdline.index("--served-model-name") + 1
            names.append(environ.get(INSTANCE_ENV) or (cmdline[index] if index < len(cmdline) else "?"))
    for proc in strays:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(strays, timeout=STRAY_TERM_TIMEOUT)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    if strays:
        log.warning("killed %d vLLM process(es) left by an earlier run: %s",
                    len(strays), ", ".join(str(p.pid) for p in strays))
    return names
