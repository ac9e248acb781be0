"""LocalCluster: a scheduler and workers on this machine, bound to 127.0.0.1, with a random token.

The scheduler runs on an event loop thread of this process; workers are separate processes
(``processes=True``, the default: one per core, one thread each) or run on that same loop
(``processes=False``, for debugging).  Worker processes stop by themselves when the scheduler
goes away, so killing the process that owns the cluster leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import secrets
import signal
import sys
import time
from typing import Any

from taskloom.errors import TaskloomError
from taskloom.local import cpu_count

from ..loop import LoopThread
from ..scheduler.server import Scheduler
from ..worker.server import Worker

START_TIMEOUT = 60.0


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
    return (
        "taskloom: a LocalCluster was started while a worker process was importing your script. "
        'Put the code that creates the Client or LocalCluster under `if __name__ == "__main__":`.'
    )


def _worker_process(address: str, nthreads: int, memory_limit: int, name: str, token: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the client's to handle
    from ..worker.server import run_worker

    asyncio.run(
        run_worker(address, nthreads=nthreads, memory_limit=memory_limit, name=name, auth_token=token)
    )


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
            print(_guard_message(), file=sys.stderr)
            raise SystemExit(1)
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
        self.auth_token = auth_token or secrets.token_urlsafe(24)
        self._loop = LoopThread("taskloom-cluster-loop")
        self.scheduler: Scheduler = self._loop.run(
            Scheduler(host, scheduler_port, auth_token=self.auth_token).start()
        )
        self.scheduler_address = self.scheduler.address
        self.workers: dict[str, Any] = {}
        self._count = 0
        self.status = "running"
        try:
            self.scale(n_workers)
        except BaseException:
            self.close()
            raise

    # -- workers -------------------------------------------------------------------------------
    def _spawn(self) -> tuple[str, Any]:
        self._count += 1
        name = f"worker-{self._count}"
        if self.processes:
            ctx = multiprocessing.get_context("spawn")
            proc = ctx.Process(
                target=_worker_process,
                args=(
                    self.scheduler_address,
                    self.threads_per_worker,
                    self.memory_limit,
                    name,
                    self.auth_token,
                ),
                name=f"taskloom-{name}",
                daemon=True,
            )
            proc.start()
            return name, proc
        worker = self._loop.run(
            Worker(
                self.scheduler_address,
                self.threads_per_worker,
                self.memory_limit,
                name,
                auth_token=self.auth_token,
            ).start()
        )
        return name, worker

    def scale(self, n: int) -> None:
        """Have exactly ``n`` workers (new ones are started; extra ones are stopped)."""
        while len(self.workers) < n:
            name, handle = self._spawn()
            self.workers[name] = handle
        while len(self.workers) > n:
            name = sorted(self.workers)[-1]
            self._stop_worker(self.workers.pop(name))
        self.wait_for_workers(n)

    def wait_for_workers(self, n: int, timeout: float = START_TIMEOUT) -> None:
        """Block until ``n`` workers have registered with the scheduler."""
        deadline = time.monotonic() + timeout
        while len(self.scheduler.state.workers) != n:
            dead = [h for h in self.workers.values() if self.processes and not h.is_alive()]
            if dead:
                codes = ", ".join(str(h.exitcode) for h in dead)
                raise TaskloomError(
                    f"{len(dead)} worker process(es) exited while starting (exit codes {codes}). "
                    "If your script creates the cluster at import time, guard it with "
                    'if __name__ == "__main__":'
                )
            if time.monotonic() > deadline:
                raise TaskloomError(f"{n} workers did not register within {timeout:.0f} s")
            self._loop.run(self.scheduler.workers_changed(0.2))

    def _stop_worker(self, handle: Any) -> None:
        if self.processes:
            handle.terminate()
            handle.join(5)
            if handle.is_alive():
                handle.kill()
                handle.join(5)
        else:
            self._loop.run(handle.close("scaled down"))

    @property
    def worker_pids(self) -> list[int]:
        return [h.pid for h in self.workers.values()] if self.processes else [os.getpid()]

    @property
    def dashboard_link(self) -> str | None:
        return None

    # -- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers and the scheduler; no process is left behind."""
        if self.status == "closed":
            return
        self.status = "closed"
        if not self.processes:
            for handle in self.workers.values():
                try:
                    self._loop.run(handle.close("cluster closing"), timeout=10)
                except Exception:
                    pass
        try:
            self._loop.run(self.scheduler.close(), timeout=10)
        except Exception:
            pass
        if self.processes:
            for handle in self.workers.values():
                handle.join(5)
                if handle.is_alive():
                    handle.kill()
                    handle.join(5)
        self.workers.clear()
        self._loop.stop()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LocalCluster {self.scheduler_address} workers={len(self.workers)}>"


def _total_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:
        return 0
