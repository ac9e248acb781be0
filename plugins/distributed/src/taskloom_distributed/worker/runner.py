"""The worker's task threads: they take tasks from one queue and report results to the event loop in batches.

The event loop queues a task with :meth:`TaskRunner.submit` (no future, no asyncio task per
task); one of ``nthreads`` threads runs it and appends the outcome to a result queue.  The loop
is woken once for however many results pile up meanwhile (one ``call_soon_threadsafe``), so
short tasks cost no round trip through the loop each: the worker may queue a few more tasks
than it has threads (:attr:`~.state.WorkerState.prefetch`), and a thread goes from one to the
next without waiting for the loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs


@attrs.define(slots=True)
class Outcome:
    """What running one task gave: ``value`` or (``ok`` False) the packed error."""

    key: Any
    epoch: int
    ok: bool
    value: Any
    start: float
    stop: float


class TaskRunner:
    """``nthreads`` threads running ``run(key, spec)``; ``report(outcomes)`` on the loop, in batches.

    ``mark``/``unmark`` (optional) are called on the running thread around each task (the
    nanny's slots: which tasks were running if the process dies).
    """

    def __init__(
        self,
        nthreads: int,
        loop: asyncio.AbstractEventLoop,
        run: Callable[[Any, Any], tuple[bool, Any]],
        report: Callable[[list[Outcome]], None],
        mark: Callable[[Any], Any] | None = None,
        unmark: Callable[[Any], None] | None = None,
        name: str = "taskloom-worker",
    ) -> None:
        self._loop = loop
        self._run = run
        self._report = report
        self._mark = mark
        self._unmark = unmark
        self._queue: queue.SimpleQueue[tuple[Any, Any, int] | None] = queue.SimpleQueue()
        self._done: deque[Outcome] = deque()
        self._lock = threading.Lock()
        self._posted = False  # a _flush is already scheduled on the loop
        self.threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(nthreads)
        ]
        for t in self.threads:
            t.start()

    def submit(self, key: Any, spec: Any, epoch: int) -> None:
        self._queue.put((key, spec, epoch))

    def stop(self, deadline: float) -> None:
        """Let the threads finish what they run (until ``deadline``, monotonic) and end."""
        for _ in self.threads:
            self._queue.put(None)
        for t in self.threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        get, run, done = self._queue.get, self._run, self._done
        while True:
            item = get()
            if item is None:
                return
            key, spec, epoch = item
            slot = self._mark(key) if self._mark is not None else None
            start = time.time()
            try:
                ok, value = run(key, spec)
            finally:
                if self._unmark is not None:
                    self._unmark(slot)
            done.append(Outcome(key, epoch, ok, value, start, time.time()))
            with self._lock:
                if self._posted:
                    continue
                self._posted = True
            try:
                self._loop.call_soon_threadsafe(self._flush)
            except RuntimeError:  # the loop has closed: nobody wants the results any more
                return

    def _flush(self) -> None:
        with self._lock:
            self._posted = False
        batch: list[Outcome] = []
        done = self._done
        while done:
            batch.append(done.popleft())
        if batch:
            self._report(batch)
