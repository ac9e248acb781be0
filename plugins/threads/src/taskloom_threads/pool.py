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
import logging
import os
import threading
import time
from typing import Any

from taskloom.errors import WorkerPluginError
from taskloom.graph import Key, Task
from taskloom.local import ExecutionState, TaskEvents, annotate
from taskloom.order import Plan
from taskloom.worker import Worker, WorkerRuntime, registry_version, worker_plugins

_local = threading.local()
logger = logging.getLogger(__name__)


_MAX_BATCH = 32
_MAX_FOLLOW = 256  # dependents that may join a batch of short tasks (a chain runs in batches of this)
_BATCH_BELOW = 50e-6  # seconds: tasks shorter than this on average are handed out in batches


def _drop_consumed(
    task: Task, inside: set[Key], uses: dict[Key, int], refcount: dict[Key, int], data: dict[Key, Any]
) -> None:
    """Drop the inputs of ``task`` made inside its batch once the batch has used them up."""
    for d in task.dependencies:
        if d in inside:
            u = uses.get(d, 0) + 1
            if u == refcount[d]:
                data.pop(d, None)
            else:
                uses[d] = u


class _Run:
    __slots__ = ("done", "events", "helped", "mean_duration", "scheduler", "state")

    def __init__(self, state: ExecutionState, events: TaskEvents, scheduler: str) -> None:
        self.state = state
        self.events = events
        self.done = threading.Event()
        self.helped = False
        self.scheduler = scheduler
        self.mean_duration = float("inf")  # batching starts once tasks prove short


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
        self._busy: set[int | None] = set()  # idents of threads running tasks
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

    def _record(self, run: _Run, done: list[int], failed: tuple[int, BaseException] | None,
                elapsed: float) -> None:  # fmt: skip
        """Under the lock: tasks ``done`` of ``run`` finished (values in its data; one perhaps failed)."""
        state = run.state
        if state.error is not None:  # the run already failed or was cancelled: drop the results
            return
        if failed is not None:
            state.fail(*failed)
            self._end(run)
            return
        newly = 0
        for i in done:
            newly += state.finish(i)  # the value is in state.data already
        # exponentially weighted mean task duration decides whether batching pays
        mean = elapsed / len(done)
        previous = run.mean_duration
        run.mean_duration = mean if previous == float("inf") else 0.8 * previous + 0.2 * mean
        if state.remaining == 0:
            self._end(run)
        elif newly > 1:
            self._wake(newly - 1)  # the recording thread takes one itself

    def _next(self) -> tuple[_Run, list[tuple[int, Key, Task]]] | None:
        """Under the lock: the next tasks to run, from the oldest run that has one ready.

        Short tasks are handed out in batches (a share of the ready queue, at most
        ``_MAX_BATCH``) so the lock is taken once per batch rather than once per task; tasks
        that take longer than ``_BATCH_BELOW`` seconds go one at a time, for balance.
        """
        for run in self._runs:
            state = run.state
            if run.mean_duration < _BATCH_BELOW:
                batch = state.pop_batch(1 + min(_MAX_BATCH, len(state.ready) // self.size), _MAX_FOLLOW)
            else:
                batch = state.pop_batch(1, 0)
            if batch:
                return run, batch
        return None

    def _execute(
        self, run: _Run, batch: list[tuple[int, Key, Task]], runtime: WorkerRuntime
    ) -> tuple[Any, ...]:
        """Run a batch of ``run``'s tasks (outside the lock); stop at the first error."""
        if runtime.version != registry_version() or not runtime.installed_set_up:
            try:
                runtime.sync(*worker_plugins())
            except WorkerPluginError as exc:  # no task runs on a half-set-up worker
                return run, [], (batch[0][0], exc), 0.0
        events = run.events
        data = run.state.data
        worker = runtime.worker.name
        transitions = runtime.observes_transitions
        done: list[int] = []
        clock = time.perf_counter
        t_batch = clock()
        observed = events.active
        # A value made and fully consumed inside this batch is dropped at once: no other thread
        # can need it (its consumers are all here), so memory stays depth-first frugal.
        inside = {key for _, key, _ in batch} if len(batch) > 1 else None
        refcount = run.state.plan.refcount
        uses: dict[Key, int] = {}
        if not observed and not transitions:  # the common case, kept lean
            for i, key, task in batch:
                try:
                    data[key] = task(data)
                except BaseException as exc:
                    annotate(exc, key, run.scheduler)
                    return run, done, (i, exc), clock() - t_batch
                if inside is not None:
                    _drop_consumed(task, inside, uses, refcount, data)
                done.append(i)
            return run, done, None, clock() - t_batch
        for i, key, task in batch:
            t0 = clock() if observed else 0.0
            ran = False
            try:  # hooks too: an exception from a callback fails the compute, never the thread
                if transitions:
                    runtime.transition(key, "ready", "executing")
                if observed and events.start is not None:
                    events.start(key=key, worker=worker)
                data[key] = task(data)  # visible at once to tasks later in this batch
                ran = True
                if observed and events.finish is not None:
                    duration, nbytes = clock() - t0, events.nbytes(data[key])
                    events.finish(key=key, worker=worker, duration=duration, error=None, nbytes=nbytes)
                if transitions:
                    runtime.transition(key, "executing", "memory")
                if inside is not None:
                    _drop_consumed(task, inside, uses, refcount, data)
            except BaseException as exc:
                annotate(exc, key, run.scheduler)
                try:
                    if events.finish is not None and not ran:  # a failing finish hook is not re-told
                        events.finish(key=key, worker=worker, duration=clock() - t0, error=exc, nbytes=None)
                    if transitions:
                        runtime.transition(key, "executing", "error")
                except BaseException:
                    logger.exception("a hook failed while reporting the error of task %r", key)
                return run, done, (i, exc), clock() - t_batch
            done.append(i)
        return run, done, None, clock() - t_batch

    def _work(self) -> None:
        _local.pool = self
        runtime = _local.runtime = WorkerRuntime(Worker(threading.current_thread().name, "thread"))
        runtime.bind()
        cond = self._cond
        result: tuple[Any, ...] | None = None
        try:
            while True:
                with cond:
                    if result is not None:
                        self._record(*result)
                        result = None
                    item = self._next()
                    while item is None:
                        if self._closed:
                            return
                        self._idle += 1
                        cond.wait()
                        self._idle -= 1
                        item = self._next()
                me = threading.get_ident()
                self._busy.add(me)
                try:
                    result = self._execute(*item, runtime)
                except BaseException as exc:  # a bug of ours: fail the run, keep the thread
                    result = (item[0], [], (item[1][0][0], exc), 0.0)
                finally:
                    self._busy.discard(me)
        finally:
            try:
                runtime.close()
            except Exception:
                logger.exception("worker plugin teardown failed on %s", runtime.worker.name)

    def _help(self, run: _Run) -> None:
        """Run ``run``'s tasks on this (pool) thread until it is complete: a nested compute."""
        runtime: WorkerRuntime = _local.runtime
        cond = self._cond
        result: tuple[Any, ...] | None = None
        with cond:
            run.helped = True
            self._helpers += 1
        try:
            while True:
                with cond:
                    if result is not None:
                        self._record(*result)
                        result = None
                    while True:
                        if run.done.is_set():
                            return
                        item = run.state.pop()
                        if item is not None:
                            break
                        cond.wait()
                result = self._execute(run, [item], runtime)
        finally:
            with cond:
                self._helpers -= 1

    def shutdown(self, wait: bool = True, timeout: float | None = None, idle_only: bool = False) -> None:
        """Stop the threads once they are idle (running tasks finish first; plugins tear down).

        ``timeout`` bounds the wait for each thread; ``idle_only`` waits only for threads not
        running a task (at interpreter exit, a task nobody waits for must not delay it).
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                if t is not threading.current_thread() and (not idle_only or t.ident not in self._busy):
                    t.join(timeout)


_pools: dict[int, ThreadPool] = {}
_pools_lock = threading.Lock()
_hooks_installed = False
_EXIT_TIMEOUT = 5.0  # seconds per thread at interpreter exit


def get_pool(size: int) -> ThreadPool:
    """The process's shared pool of ``size`` threads (created on first use)."""
    pool = _pools.get(size)
    if pool is not None:
        return pool
    global _hooks_installed
    with _pools_lock:
        if not _hooks_installed:
            atexit.register(shutdown, timeout=_EXIT_TIMEOUT, idle_only=True)
            os.register_at_fork(after_in_child=_pools.clear)
            _hooks_installed = True
        pool = _pools.get(size)
        if pool is None:
            pool = _pools[size] = ThreadPool(size)
        return pool


def shutdown(wait: bool = True, timeout: float | None = None, idle_only: bool = False) -> None:
    """Shut down every shared pool; ``wait`` (up to ``timeout`` s a thread) for their threads."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait, timeout, idle_only)
