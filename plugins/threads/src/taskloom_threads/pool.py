"""A persistent pool of worker threads that runs plans on the shared local engine.

Each pool owns ``size`` daemon threads, started on first use and reused by every later compute.
All state lives behind one lock: the active *runs* (one per compute, each an
:class:`~taskloom.local.ExecutionState`) and the count of idle threads.  A worker thread takes
the lock once per task: it records the result of the task it just ran and, in the same critical
section, pops the next ready task (highest static priority of the oldest run that has one).  A
thread that makes more tasks ready wakes only as many idle threads as it cannot run itself, so a
chain runs on one thread without any hand-off.

A compute called from *inside* a task that runs on this pool (a nested compute) does not wait
for pool threads -- they may all be busy waiting on it -- but runs its own run's tasks on the
calling thread, so nesting never deadlocks.

The caller of :meth:`ThreadPool.run` only waits; ``KeyboardInterrupt`` there cancels the run at
once (tasks already running finish on their threads and their results are dropped).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import Any

from taskloom.graph import Key, Task
from taskloom.local import ExecutionState, TaskEvents, annotate
from taskloom.order import Plan

_local = threading.local()


class _Run:
    __slots__ = ("state", "events", "done", "helped", "scheduler")

    def __init__(self, state: ExecutionState, events: TaskEvents, scheduler: str) -> None:
        self.state = state
        self.events = events
        self.done = threading.Event()
        self.helped = False
        self.scheduler = scheduler


class ThreadPool:
    """``size`` reusable worker threads running plans; thread-safe, shared by concurrent computes."""

    def __init__(self, size: int, name: str = "taskloom-threads") -> None:
        if size < 1:
            raise ValueError(f"num_workers must be at least 1, got {size}")
        self.size = size
        self.name = name
        self._cond = threading.Condition(threading.Lock())
        self._runs: list[_Run] = []
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._helpers = 0
        self._closed = False

    @property
    def threads(self) -> list[threading.Thread]:
        """The pool's worker threads (started lazily)."""
        return list(self._threads)

    def run(self, plan: Plan, events: TaskEvents, scheduler: str = "threads") -> dict[Key, Any]:
        """Execute ``plan`` on the pool; return ``{output key: value}`` or raise the task's error."""
        state = ExecutionState(plan)
        if state.remaining == 0:
            return state.results()
        run = _Run(state, events, scheduler)
        cond = self._cond
        with cond:
            if self._closed:
                raise RuntimeError(f"thread pool {self.name!r} has been shut down")
            self._runs.append(run)
            if len(self._threads) < self.size:
                self._start_threads()
            self._wake(len(state.ready))
        if getattr(_local, "pool", None) is self:
            self._help(run)
        else:
            try:
                run.done.wait()
            except BaseException as exc:  # KeyboardInterrupt: stop handing out this run's tasks
                with cond:
                    self._end(run, exc)
                raise
        if state.error is not None:
            raise state.error
        return state.results()

    # -- internals; every method below named _locked_* or called under the lock says so --------
    def _start_threads(self) -> None:
        for i in range(len(self._threads), self.size):
            t = threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
            self._threads.append(t)
            t.start()

    def _wake(self, n: int) -> None:
        """Under the lock: wake up to ``n`` idle threads for newly ready tasks."""
        if self._helpers:
            self._cond.notify_all()
        elif n > 0 and self._idle:
            self._cond.notify(min(n, self._idle))

    def _end(self, run: _Run, exc: BaseException | None = None) -> None:
        """Under the lock: ``run`` is complete (or cancelled with ``exc``)."""
        if exc is not None:
            run.state.cancel(exc)
        if run in self._runs:
            self._runs.remove(run)
        run.done.set()
        if run.helped:
            self._cond.notify_all()

    def _record(self, run: _Run, i: int, value: Any, exc: BaseException | None) -> None:
        """Under the lock: task ``i`` of ``run`` finished with ``value`` or raised ``exc``."""
        state = run.state
        if state.error is not None:  # the run already failed or was cancelled: drop the result
            state.running -= 1
            return
        if exc is not None:
            state.fail(i, exc)
            self._end(run)
            return
        newly = state.finish(i, value)
        if state.remaining == 0:
            self._end(run)
        elif newly > 1:
            self._wake(newly - 1)  # the recording thread takes one itself

    def _next(self) -> tuple[_Run, int, Key, Task] | None:
        """Under the lock: the next task to run, from the oldest run that has one ready."""
        for run in self._runs:
            item = run.state.pop()
            if item is not None:
                return (run, *item)
        return None

    def _execute(self, run: _Run, i: int, key: Key, task: Task, worker: str) -> tuple[Any, Any, Any, Any]:
        events = run.events
        if events.start is not None:
            events.start(key=key, worker=worker)
        t0 = time.perf_counter()
        try:
            value = task(run.state.data)
        except BaseException as exc:
            annotate(exc, key, run.scheduler)
            if events.finish is not None:
                events.finish(key=key, worker=worker, duration=time.perf_counter() - t0, error=exc)
            return run, i, None, exc
        if events.finish is not None:
            events.finish(key=key, worker=worker, duration=time.perf_counter() - t0, error=None)
        return run, i, value, None

    def _work(self) -> None:
        _local.pool = self
        worker = threading.current_thread().name
        cond = self._cond
        done: tuple[Any, Any, Any, Any] | None = None
        while True:
            with cond:
                if done is not None:
                    self._record(*done)
                    done = None
                item = self._next()
                while item is None:
                    if self._closed:
                        return
                    self._idle += 1
                    cond.wait()
                    self._idle -= 1
                    item = self._next()
            done = self._execute(*item, worker)

    def _help(self, run: _Run) -> None:
        """Run ``run``'s tasks on this (pool) thread until it is complete: a nested compute."""
        worker = threading.current_thread().name
        cond = self._cond
        done = None
        with cond:
            run.helped = True
            self._helpers += 1
        try:
            while True:
                with cond:
                    if done is not None:
                        self._record(*done)
                        done = None
                    while True:
                        if run.done.is_set():
                            return
                        item = run.state.pop()
                        if item is not None:
                            break
                        cond.wait()
                done = self._execute(run, *item, worker)
        finally:
            with cond:
                self._helpers -= 1

    def shutdown(self, wait: bool = True) -> None:
        """Stop the threads once they are idle; running tasks finish first."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()


_pools: dict[int, ThreadPool] = {}
_pools_lock = threading.Lock()
_hooks_installed = False


def default_size() -> int:
    """The number of CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def get_pool(size: int) -> ThreadPool:
    """The process's shared pool of ``size`` threads (created on first use)."""
    pool = _pools.get(size)
    if pool is not None:
        return pool
    global _hooks_installed
    with _pools_lock:
        if not _hooks_installed:
            atexit.register(shutdown, wait=False)
            os.register_at_fork(after_in_child=_pools.clear)
            _hooks_installed = True
        pool = _pools.get(size)
        if pool is None:
            pool = _pools[size] = ThreadPool(size)
        return pool


def shutdown(wait: bool = True) -> None:
    """Shut down every shared pool; ``wait`` for their threads to finish their current task."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait)
