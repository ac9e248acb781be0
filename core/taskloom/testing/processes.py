"""Process handles for tests that check no process outlives what started it (needs psutil)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any


def live_processes(pids: Iterable[int]) -> list[Any]:
    """``psutil.Process`` handles for those of ``pids`` still running; a pid already gone is skipped.

    Taking a handle races with the process ending (``pid_exists`` then ``Process`` is not enough):
    a process that ended first cannot outlive anything, so it is left out rather than raised on.
    """
    import psutil

    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(procs: Iterable[Any], timeout: float = 30) -> list[Any]:
    """Wait up to ``timeout`` s for ``procs`` to end; return those still running.

    A zombie counts as gone: an orphan is reparented to a PID 1 that may never reap it.  Works for
    processes that are not this one's children (psutil polls those).
    """
    import psutil

    def running(p: Any) -> bool:
        try:
            return bool(p.is_running()) and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    alive = [p for p in procs if running(p)]
    while alive and time.monotonic() < deadline:
        psutil.wait_procs(alive, timeout=min(0.2, max(0.0, deadline - time.monotonic())))
        alive = [p for p in alive if running(p)]
    return alive
