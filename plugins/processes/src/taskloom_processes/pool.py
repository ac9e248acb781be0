"""A reusable pool of worker processes: start, replace the dead, shut down without orphans."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import socket
import threading
from collections import deque
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from . import workerproc
from .protocol import recv, send

START_TIMEOUT = 60.0
CLOSE_TIMEOUT = 5.0
SOCKET_BUFFER_BYTES = 4 << 20  # the kernel caps it (net.core.wmem_max / rmem_max)


class WorkerProcess:
    """One worker process and the scheduler's view of it."""

    def __init__(self, proc: BaseProcess, conn: Connection, name: str) -> None:
        self.proc = proc
        self.conn = conn
        self.name = name
        self.pid = proc.pid
        self.inflight: deque[Any] = deque()  # keys sent and not yet reported, in run order
        self.plugin_version: Any = None
        self.funcs_sent: set[int] = set()  # tokens of the functions it has for the current compute
        self.batches_sent = 0  # messages of tasks sent to it since it started (diagnostics, tests)
        self.tasks_sent = 0
        self.alive = True

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.name} pid={self.pid}>"

    def exit_reason(self) -> str:
        """How the process ended: the signal or the exit code."""
        self.proc.join(1.0)
        code = self.proc.exitcode
        if code is None:
            return "stopped responding"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}"

    def kill(self) -> None:
        self.alive = False
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(CLOSE_TIMEOUT)
        self.conn.close()


class ProcessPool:
    """``size`` worker processes, started on first use, reused by every compute.

    One compute runs on a pool at a time (``lock``); dead workers are replaced before the next.
    """

    def __init__(self, size: int, context: str = "spawn") -> None:
        if size < 1:
            raise ValueError(f"num_workers must be at least 1, got {size}")
        self.size = size
        self.context: Any = multiprocessing.get_context(context)
        self.lock = threading.RLock()
        self.workers: list[WorkerProcess] = []
        self._counter = 0
        self._closed = False

    def ensure_started(self) -> list[WorkerProcess]:
        """Replace dead workers and start missing ones; return the live workers."""
        if self._closed:
            raise RuntimeError("this process pool has been shut down")
        for w in self.workers:
            if w.alive and not w.proc.is_alive():
                w.kill()
        self.workers = [w for w in self.workers if w.alive]
        starting = [self._spawn() for _ in range(self.size - len(self.workers))]
        for w in starting:
            try:
                if not w.conn.poll(START_TIMEOUT):
                    raise RuntimeError(f"worker process {w.name} did not start within {START_TIMEOUT:.0f} s")
                msg = recv(w.conn)
                if msg[0] != "ready":
                    raise RuntimeError(f"worker process {w.name} sent {msg!r} instead of ready")
            except (EOFError, OSError, RuntimeError) as exc:
                reason = w.exit_reason() if isinstance(exc, (EOFError, OSError)) else str(exc)
                for other in starting:
                    other.kill()
                raise RuntimeError(
                    f"worker process {w.name} failed to start ({reason}). With the spawn start "
                    'method, a script must create work under `if __name__ == "__main__":`'
                ) from None
        self.workers.extend(starting)
        return self.workers

    def _spawn(self) -> WorkerProcess:
        self._counter += 1
        name = f"taskloom-processes-{self._counter}"
        parent, child = self.context.Pipe(duplex=True)
        _widen(parent)
        _widen(child)
        proc = self.context.Process(target=workerproc.main, args=(child, name), name=name, daemon=True)
        proc.start()
        child.close()
        return WorkerProcess(proc, parent, name)

    def shutdown(self) -> None:
        """Ask each worker to tear down its plugins and exit; kill those that do not in time."""
        self._closed = True
        workers, self.workers = self.workers, []
        for w in workers:
            if w.alive and w.proc.is_alive():
                try:
                    send(w.conn, "close")
                except OSError:
                    pass
        for w in workers:
            w.proc.join(CLOSE_TIMEOUT)
            w.kill()


def _widen(conn: Connection) -> None:
    """Let the socket under ``conn`` buffer a whole batch, so a send does not wait for the reader.

    A worker's reader thread needs the GIL between reads, which the task it runs holds for up to
    the switch interval; with the default buffer the scheduler would wait that long per batch.
    """
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
    except OSError:  # not a socket (a platform where Pipe makes pipes): leave it as it is
        return
    with sock:
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
            except OSError:
                pass


_pools: dict[tuple[int, str], ProcessPool] = {}
_pools_lock = threading.Lock()
_hooks_installed = False


def get_pool(size: int, context: str) -> ProcessPool:
    """The process-wide pool of ``size`` workers started with ``context``."""
    global _hooks_installed
    with _pools_lock:
        if not _hooks_installed:
            atexit.register(shutdown)
            os.register_at_fork(after_in_child=_forget_after_fork)
            _hooks_installed = True
        pool = _pools.get((size, context))
        if pool is None or pool._closed:
            pool = _pools[(size, context)] = ProcessPool(size, context)
        return pool


def _forget_after_fork() -> None:
    _pools.clear()  # a forked child does not own its parent's workers


def shutdown() -> None:
    """Shut down every pool (at interpreter exit, and for tests)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        with pool.lock:
            pool.shutdown()


def live_workers() -> list[WorkerProcess]:
    """Every live worker process of every pool (for diagnostics and tests)."""
    with _pools_lock:
        return [w for p in _pools.values() for w in p.workers if w.alive]


__all__ = ["ProcessPool", "WorkerProcess", "get_pool", "live_workers", "shutdown", "wait"]
