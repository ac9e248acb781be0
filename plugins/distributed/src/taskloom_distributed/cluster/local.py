"""LocalCluster: a scheduler and workers on this machine, bound to 127.0.0.1, with a random token.

The scheduler runs on an event loop thread of this process; workers are separate processes
(``processes=True``, the default: one per core, one thread each) or run on that same loop
(``processes=False``, for debugging).  Each worker process runs under a
:class:`~..nanny.Nanny` (on the same loop) that restarts it when it dies and tells the scheduler
how it died; its output goes to ``<log_directory>/<worker name>.log``, a directory per cluster
(under ``distributed.nanny.log_directory``, default the system temp directory), removed on close
unless a worker died unexpectedly.  A worker process exits as soon as the process that owns the
cluster dies, so killing it leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import weakref
from typing import Any

from taskloom import config
from taskloom.errors import TaskloomError
from taskloom.local import cpu_count

from ..comm import new_token
from ..loop import LoopThread
from ..loop import run as run_loop
from ..nanny import Nanny
from ..nanny.process import NO_MAIN_GUARD_EXIT
from ..scheduler.server import Scheduler
from ..worker.server import Worker
from . import scaling
from .adaptive import Adaptive

START_TIMEOUT = 60.0

logger = logging.getLogger("taskloom.distributed.cluster")


def parse_bytes(value: Any) -> int:
    """``"4GB"``, ``"512 MiB"``, ``4e9`` or ``0`` -> a number of bytes."""
    if value is None:
        return 0
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgtp]?i?b?)\s*", str(value).lower())
    if not m:
        raise ValueError(f"cannot read {value!r} as a number of bytes (try '4GB')")
    number, unit = float(m.group(1)), m.group(2).rstrip("b")
    base = 1024 if unit.endswith("i") else 1000
    power = " kmgtp".index(unit[:1] or " ")
    return int(number * base**power)


def _guard_message() -> str:
    """The one line for a script that starts a cluster at import time (no ``__main__`` guard)."""
    where = "your script"
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "__main__":
            where = f"{frame.f_code.co_filename}, line {frame.f_lineno},"
            break
        frame = frame.f_back  # type: ignore[assignment]
    return (
        f"taskloom: {where} starts a LocalCluster when imported, and worker processes import it: "
        'put that code under `if __name__ == "__main__":`'
    )


def _check_main_guard(exitcodes: list[int | None]) -> None:
    """Worker processes exited because the script lacks its ``__main__`` guard: end with one line."""
    if NO_MAIN_GUARD_EXIT in exitcodes:
        raise SystemExit(_guard_message())


_live: weakref.WeakSet[LocalCluster] = weakref.WeakSet()
_exit_hook: list[bool] = []  # non-empty once the atexit hook is registered


def _close_open_clusters_at_exit(cluster: LocalCluster) -> None:
    """Close ``cluster`` when the interpreter exits if it is still open, so no worker outlives it.

    The hook is registered with the first cluster, after ``multiprocessing`` registered its own,
    so it runs first (atexit runs hooks last-in first-out).
    """
    if not _exit_hook:
        atexit.register(_close_at_exit)
        _exit_hook.append(True)
    _live.add(cluster)


def _close_at_exit() -> None:
    for cluster in list(_live):
        try:
            cluster.close()
        except Exception:
            pass


def _worker_process(address: str, nthreads: int, memory_limit: int, name: str, token: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the client's to handle
    from ..worker.server import run_worker

    run_loop(
        run_worker(
            address, nthreads=nthreads, memory_limit=memory_limit, name=name, auth_token=token,
            exit_process=True,  # ends the process even if a task is still running
        )
    )  # fmt: skip


class LocalCluster:
    """A scheduler plus ``n_workers`` workers on this machine."""

    def __init__(
        self,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        processes: bool = True,
        memory_limit: Any = "auto",
        host: str = "127.0.0.1",
        scheduler_port: int = 0,
        auth_token: str | None = None,
    ) -> None:
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            # a worker process importing a script without its __main__ guard: end it quietly,
            # the process that started it explains (once, see _check_main_guard)
            os._exit(NO_MAIN_GUARD_EXIT)
        cores = cpu_count()
        if n_workers is None:
            n_workers = cores if processes else 1
            threads_per_worker = threads_per_worker or (1 if processes else cores)
        self.threads_per_worker = threads_per_worker or max(1, cores // max(n_workers, 1))
        total = _total_memory()
        self.memory_limit = (
            total // max(n_workers, 1) if memory_limit == "auto" else parse_bytes(memory_limit)
        )
        self.processes = processes
        self.host = host
        self.auth_token = auth_token or new_token()
        self._loop = LoopThread("taskloom-cluster-loop")
        self.scheduler: Scheduler = self._loop.run(
            Scheduler(host, scheduler_port, auth_token=self.auth_token).start()
        )
        self.scheduler_address = self.scheduler.address
        self.workers: dict[str, Any] = {}  # name -> Nanny (processes=True) or Worker
        self.log_directory = ""
        if processes:
            base = config.get("distributed.nanny.log_directory", None)
            self.log_directory = tempfile.mkdtemp(prefix="taskloom-cluster-", dir=base)
        self._count = 0
        self._adaptive: Adaptive | None = None  # cluster.adapt()
        self._scale_lock = asyncio.Lock()  # scale() and adapt() change the workers one at a time
        self.status = "running"
        _close_open_clusters_at_exit(self)
        try:
            self.scale(n_workers)
        except BaseException:
            self.close()
            raise

    # -- workers -------------------------------------------------------------------------------
    def _spawn(self) -> tuple[str, Any]:
        name, handle = self._loop.run(self._start_worker())
        return name, handle

    async def _start_worker(self) -> tuple[str, Any]:
        """One more worker (a nanny and its process, or an in-process worker), not yet registered."""
        self._count += 1
        name = f"worker-{self._count}"
        if self.processes:
            nanny = Nanny(
                self.scheduler_address,
                _worker_process,
                (self.scheduler_address, self.threads_per_worker, self.memory_limit, name, self.auth_token),
                name=name,
                nthreads=self.threads_per_worker,
                memory_limit=self.memory_limit,
                auth_token=self.auth_token,
                log_directory=self.log_directory,
                config=_worker_config(),
            )
            return name, await nanny.start()
        worker = await Worker(
            self.scheduler_address,
            self.threads_per_worker,
            self.memory_limit,
            name,
            auth_token=self.auth_token,
        ).start()
        return name, worker

    def scale(self, n: int) -> None:
        """Have exactly ``n`` workers: new ones are started; extra ones retire gracefully -- the
        results only they hold are copied to the others first -- and stop (see :mod:`.scaling`).
        Turns adaptive scaling (:meth:`adapt`) off."""
        if self._adaptive is not None:
            self._adaptive.stop()
            self._adaptive = None
        self._loop.run(scaling.scale(self, n))
        self.wait_for_workers(n)

    def adapt(
        self,
        minimum: int | None = None,
        maximum: float | None = None,
        interval: float | None = None,
        wait_count: int | None = None,
        target_duration: float | None = None,
    ) -> Adaptive:
        """Scale between ``minimum`` and ``maximum`` workers with the load (see :mod:`.adaptive`);
        the :class:`~.adaptive.Adaptive` returned has ``stop()``.  Replaces an earlier ``adapt``."""
        if self._adaptive is not None:
            self._adaptive.stop()
        self._adaptive = Adaptive(self, minimum, maximum, interval, wait_count, target_duration).start()
        return self._adaptive

    def wait_for_workers(self, n: int, timeout: float = START_TIMEOUT) -> None:
        """Block until ``n`` workers have registered with the scheduler, and their nannies have
        heard so (a worker killed after that is restarted, not taken for one that cannot start)."""
        deadline = time.monotonic() + timeout
        self._wait_registered(n, deadline, timeout)
        for handle in list(self.workers.values()) if self.processes else ():
            if handle.status == "running":
                try:
                    self._loop.run(handle.wait_started(max(0.0, deadline - time.monotonic())))
                except (RuntimeError, TimeoutError):  # it died meanwhile: its nanny deals with that
                    pass

    def _wait_registered(self, n: int, deadline: float, timeout: float) -> None:
        while len(self.scheduler.state.workers) != n:
            dead = [h for h in self.workers.values() if self.processes and h.status == "failed"]
            if dead:
                _check_main_guard([h.deaths[-1]["exitcode"] for h in dead if h.deaths])
                how = "; ".join(f"{h.name} {h.deaths[-1]['how']} (log: {h.log})" for h in dead if h.deaths)
                raise TaskloomError(
                    f"{len(dead)} worker process(es) exited while starting: {how}. "
                    "If your script creates the cluster at import time, guard it with "
                    'if __name__ == "__main__":'
                )
            if time.monotonic() > deadline:
                raise TaskloomError(f"{n} workers did not register within {timeout:.0f} s")
            self._loop.run(self.scheduler.workers_changed(0.2))

    def _stop_worker(self, handle: Any) -> None:
        if self.processes:
            self._loop.run(handle.close())
        else:
            self._loop.run(handle.close("scaled down"))

    @property
    def worker_pids(self) -> list[int]:
        """The pids of the worker processes running now (they change as nannies restart them)."""
        if not self.processes:
            return [os.getpid()]
        return [pid for pid in (h.pid for h in self.workers.values()) if pid is not None]

    @property
    def loop_thread(self) -> LoopThread:
        """The event loop thread the scheduler (and in-process workers) run on; a client that
        started this cluster runs on it too."""
        return self._loop

    @property
    def nannies(self) -> list[Nanny]:
        return list(self.workers.values()) if self.processes else []

    @property
    def dashboard_link(self) -> str | None:
        return None

    # -- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers and the scheduler; no process is left behind."""
        if self.status == "closed":
            return
        if self._adaptive is not None:
            self._adaptive.stop()
            self._adaptive = None
        self.status = "closed"
        handles = list(self.workers.values())
        closing = [h.close() if self.processes else h.close("cluster closing") for h in handles]
        try:  # every nanny stops its worker (SIGTERM, then SIGKILL), all at once
            self._loop.run(_gather(closing), timeout=30)
        except Exception:
            logger.exception("closing the workers of %r failed", self)
        try:
            self._loop.run(self.scheduler.close(), timeout=10)
        except Exception:
            pass
        for h in handles:  # a last resort, should a nanny not have managed
            if self.processes and h.process is not None and h.process.is_alive():
                h.process.kill()
                h.process.join(5)
        self.workers.clear()
        self._loop.stop()
        if self.log_directory:
            if any(h.deaths for h in handles):
                logger.warning("worker logs kept in %s (workers died during the run)", self.log_directory)
            else:
                shutil.rmtree(self.log_directory, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LocalCluster {self.scheduler_address} workers={len(self.workers)}>"


async def _gather(coros: list[Any]) -> None:
    await asyncio.gather(*coros, return_exceptions=True)


def _worker_config() -> dict[str, Any]:
    """This process's ``distributed.*`` settings, for the worker processes a nanny starts."""
    return config.flatten(config.get("distributed", {}), "distributed")


def _total_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:
        return 0
