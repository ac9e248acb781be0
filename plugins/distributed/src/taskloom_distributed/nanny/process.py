"""The worker process's side of its nanny: the log file, the executing slots, the parent watch.

:func:`child_main` is what a nanny runs in the worker process it starts.  It sends the process's
output to the worker's log file (``faulthandler`` included, so a segfault leaves a traceback
there), applies the configuration the nanny was started with, makes the worker process exit at
once if the nanny's process dies (no orphans, whatever kills the nanny), and leaves a
:class:`NannyLink` that the :class:`~..worker.server.Worker` finds with :func:`nanny_link`: it
names the nanny and the log in the worker's registration, marks the tasks it executes in the
slots (:mod:`.slots`), and tells the nanny its address once registered and why it closes when it
closes on purpose.

A worker asks its nanny to restart it by exiting with :data:`MEMORY_EXIT_CODE` (the nanny reports
the death as due to memory); any other exit that was not announced with
:meth:`NannyLink.closing` is a crash: reported with its signal or exit code, and restarted.
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from ..worker.memory import MEMORY_EXIT_CODE
from .slots import Slots

__all__ = ["MEMORY_EXIT_CODE", "NO_MAIN_GUARD_EXIT", "ChildSetup", "NannyLink", "child_main", "nanny_link"]

NO_MAIN_GUARD_EXIT = 86  # a worker process found the script starting a LocalCluster on import


@attrs.frozen
class ChildSetup:
    """What a nanny hands to the worker process it starts."""

    nanny_id: str
    name: str
    log_file: str  # "" keeps the nanny's own stdout/stderr
    log_label: str  # where the output goes, as reported to the scheduler
    slots_file: str
    config: dict[str, Any] = attrs.Factory(dict)  # dotted key -> value, applied with config.set


class NannyLink:
    """In a worker process started by a nanny: the way back to it."""

    def __init__(self, setup: ChildSetup, conn: multiprocessing.connection.Connection) -> None:
        self.nanny_id = setup.nanny_id
        self.log = setup.log_label
        self.slots = Slots(setup.slots_file)
        self._conn = conn
        self._lock = threading.Lock()

    def _send(self, msg: tuple[Any, ...]) -> None:
        try:
            with self._lock:
                self._conn.send(msg)
        except (OSError, EOFError):  # the nanny is gone; the parent watch ends this process
            pass

    def started(self, address: str) -> None:
        """The worker has registered with the scheduler at ``address``."""
        self._send(("started", address))

    def closing(self, reason: str, lost_scheduler: bool = False) -> None:
        """The worker closes on purpose (``lost_scheduler``: it could not reach the scheduler)."""
        self._send(("closing", reason, lost_scheduler))


_link: NannyLink | None = None


def nanny_link() -> NannyLink | None:
    """This process's nanny, when it is a worker process a nanny started (else None)."""
    return _link


def child_main(
    setup: ChildSetup,
    conn: multiprocessing.connection.Connection,
    target: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """The worker process: set up its side of the nanny, then run ``target(*args, **kwargs)``."""
    global _link
    if setup.log_file:
        fd = os.open(setup.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(line_buffering=True)
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", force=True
        )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(
        f"--- {setup.name}: worker process {os.getpid()} started at {stamp} ---", file=sys.stderr, flush=True
    )
    faulthandler.enable()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the process that owns the cluster
    if setup.config:
        from taskloom import config

        config.set(setup.config)
    _watch_parent()
    _link = NannyLink(setup, conn)
    target(*args, **kwargs)


def _watch_parent() -> None:
    """Exit at once when the nanny's process dies, whatever killed it."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        print("the nanny's process has gone: exiting", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="taskloom-nanny-watch", daemon=True).start()
