"""The worker's task threads: they take tasks from one queue and report results to the event loop in batches.

The event loop queues a task with :meth:`TaskRunner.submit` (no future, no asyncio task per
task); one of ``nthreads`` threads runs it and appends the outcome to a result queue.  The loop
is woken once for however many results pile up meanwhile (one ``call_soon_threadsafe``), so
short tasks cost no round trip through the loop each: the worker may queue a few more tasks
than it has threads (:attr:`~.state.WorkerState.prefetch`), and a thread goes from one to the
next without waiting for the loop.

*Followers* (:meth:`TaskRunner.follow`): a task whose one missing input is a task queued or
running here is run by the same thread right after that input, which it first stores (``store``)
where the task reads its inputs -- a chain runs at the thread's pace, not the loop's.  If the
input fails, its followers are not run: they are reported with the value :data:`SKIPPED`.
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

SKIPPED = object()  # the value of the outcome of a follower whose input failed: it did not run


@attrs.define(slots=True)
class Outcome:
    """What running one task gave: ``value`` or (``ok`` False) the packed error."""

    key: Any
    epoch: int
    ok: bool
    value: Any
    start: float
    stop: float
    stored: bool = False  # the value is in the worker's data already (followers read it there)


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
        store: Callable[[Any, Any, int], None] | None = None,
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
        self._store = store
        self._pending: set[Any] = set()  # keys queued, running or following, not finished (if tracked)
        self._followers: dict[Any, list[tuple[Any, Any, int]]] = {}  # key -> tasks to run after it
        self._follows: dict[Any, Any] = {}  # follower key -> the key it runs after
        self.threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(nthreads)
        ]
        for t in self.threads:
            t.start()

    def submit(self, key: Any, spec: Any, epoch: int) -> None:
        if self._store is not None:
            with self._lock:
                self._pending.add(key)
        self._queue.put((key, spec, epoch))

    def follow(self, after: Any, key: Any, spec: Any, epoch: int) -> bool:
        """Run ``key`` right after ``after`` on the same thread; False if ``after`` is done already
        (or followers are off: no ``store``)."""
        if self._store is None:
            return False
        with self._lock:
            if after not in self._pending:
                return False
            self._pending.add(key)
            self._followers.setdefault(after, []).append((key, spec, epoch))
            self._follows[key] = after
            return True

    def unfollow(self, key: Any) -> bool:
        """Do not run follower ``key`` after all (freed); False if it has started already."""
        with self._lock:
            after = self._follows.pop(key, None)
            followers = self._followers.get(after) if after is not None else None
            if not followers:
                return False
            kept = [item for item in followers if item[0] != key]
            if len(kept) == len(followers):
                return False
            if kept:
                self._followers[after] = kept
            else:
                del self._followers[after]
            self._pending.discard(key)
            return True

    def stop(self, deadline: float) -> None:
        """Let the threads finish what they run (until ``deadline``, monotonic) and end."""
        for _ in self.threads:
            self._queue.put(None)
        for t in self.threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        get, run, done, lock = self._queue.get, self._run, self._done, self._lock
        item = None
        while True:
            if item is None:
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
            followers = None
            stored = False
            if self._store is not None:
                with lock:
                    self._pending.discard(key)
                    followers = self._followers.pop(key, None)
                    if followers:
                        for item in followers:
                            self._follows.pop(item[0], None)
                if followers and ok:
                    self._store(key, value, epoch)
                    stored = True
            done.append(Outcome(key, epoch, ok, value, start, time.time(), stored))
            item = None
            if followers:
                if ok:
                    item = followers[0]
                    for other in followers[1:]:
                        self._queue.put(other)
                else:
                    self._skip(followers)
            with lock:
                if self._posted:
                    continue
                self._posted = True
            try:
                self._loop.call_soon_threadsafe(self._flush)
            except RuntimeError:  # the loop has closed: nobody wants the results any more
                return

    def _skip(self, followers: list[tuple[Any, Any, int]]) -> None:
        """Followers of a failed task, and theirs: reported as not run."""
        now = time.time()
        stack = list(followers)
        while stack:
            key, _, epoch = stack.pop()
            with self._lock:
                self._pending.discard(key)
                self._follows.pop(key, None)
                stack.extend(self._followers.pop(key, ()))
            self._done.append(Outcome(key, epoch, False, SKIPPED, now, now))

    def _flush(self) -> None:
        with self._lock:
            self._posted = False
        batch: list[Outcome] = []
        done = self._done
        while done:
            batch.append(done.popleft())
        if batch:
            self._report(batch)
