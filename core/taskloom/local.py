"""The shared local engine: dependency counting, a priority ready queue, releasing, errors.

Every local scheduler runs a :class:`~taskloom.order.Plan` (the graph culled, converted,
validated and numbered depth-first by :func:`taskloom.order.plan`) on this engine:

* :func:`execute_inline` runs the plan's tasks one after another in priority order on the
  calling thread -- the post-order numbering is already a topological order, so no queue is
  needed.  This is the ``sync`` scheduler.
* :class:`ExecutionState` is the state machine the parallel schedulers share.  It takes events
  (``pop`` a ready task, ``finish`` one with its value) and keeps the bookkeeping: for each task
  the number of dependencies still missing, a heap of ready tasks ordered by static priority,
  and for each value the number of tasks that still need it, so an intermediate is dropped the
  moment its last dependent has run.  It holds no lock and starts no thread: the caller
  serialises access (the ``threads`` pool holds one lock around it), and the sockets, threads
  or processes that run tasks stay outside.

A task that raises reaches the caller as the *same* exception object -- its own type and its
own traceback -- with a note naming the task's key (see :func:`annotate`).

Per-task diagnostics hooks cost a pluggy call each, so they are looked up once per compute
(:func:`task_events`) and skipped entirely when nothing implements them.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Callable
from typing import Any

import attrs

from . import gcpause
from .graph import Key, Task
from .order import Plan
from .plugins import get_plugin_manager
from .sizeof import sizeof


def cpu_count() -> int:
    """The number of CPUs this process may use: the default ``num_workers`` of local pools."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@attrs.define(slots=True, frozen=True)
class TaskEvents:
    """The per-task diagnostics hooks of one compute, or ``None`` where nothing listens."""

    start: Callable[..., Any] | None
    finish: Callable[..., Any] | None
    sizes: bool = False  # a finish listener takes ``nbytes``: measure each result's size

    @property
    def active(self) -> bool:
        return self.start is not None or self.finish is not None

    def nbytes(self, value: Any) -> int | None:
        """The ``nbytes`` argument of ``finish`` for a task that returned ``value``."""
        return sizeof(value) if self.sizes else None


def task_events() -> TaskEvents:
    """The ``taskloom_task_start`` / ``taskloom_task_finish`` callers, if anything implements them."""
    hook = get_plugin_manager().hook
    start = hook.taskloom_task_start
    finish = hook.taskloom_task_finish
    finish_impls = finish.get_hookimpls()
    return TaskEvents(
        start if start.get_hookimpls() else None,
        finish if finish_impls else None,
        any("nbytes" in impl.argnames for impl in finish_impls),
    )


def annotate(exc: BaseException, key: Key, scheduler: str) -> None:
    """Add a note naming the failing task to ``exc`` (once, even if it is raised again)."""
    note = f"taskloom: raised by task {key!r} (scheduler {scheduler!r})"
    notes = getattr(exc, "__notes__", None)
    if not notes or note not in notes:
        exc.add_note(note)


def execute_inline(
    plan: Plan, events: TaskEvents | None = None, worker: str = "sync", scheduler: str = "sync"
) -> dict[Key, Any]:
    """Run ``plan`` on the calling thread; return ``{output key: value}``.

    A task's exception propagates from inside the task's own frame, so a post-mortem debugger
    lands in the task.  ``plan`` is consumed (its reference counts are spent).
    """
    data = dict(plan.literals)
    tasks = plan.tasks
    refcount = plan.refcount
    if events is not None and events.active:
        _execute_inline_observed(plan, data, events, worker, scheduler)
    else:
        for key in plan.order:
            task = tasks[key]
            try:
                data[key] = task(data)
            except BaseException as exc:
                annotate(exc, key, scheduler)
                raise
            for dep in task.dependencies:
                n = refcount[dep] - 1
                if n:
                    refcount[dep] = n
                else:
                    del data[dep]
    return {k: data[k] for k in plan.outputs}


def _execute_inline_observed(
    plan: Plan, data: dict[Key, Any], events: TaskEvents, worker: str, scheduler: str
) -> None:
    tasks = plan.tasks
    refcount = plan.refcount
    start_hook, finish_hook = events.start, events.finish
    clock = time.perf_counter
    for key in plan.order:
        task = tasks[key]
        if start_hook is not None:
            start_hook(key=key, worker=worker)
        t0 = clock()
        try:
            data[key] = task(data)
        except BaseException as exc:
            annotate(exc, key, scheduler)
            if finish_hook is not None:
                finish_hook(key=key, worker=worker, duration=clock() - t0, error=exc, nbytes=None)
            raise
        if finish_hook is not None:
            duration = clock() - t0
            nbytes = events.nbytes(data[key])
            finish_hook(key=key, worker=worker, duration=duration, error=None, nbytes=nbytes)
        for dep in task.dependencies:
            n = refcount[dep] - 1
            if n:
                refcount[dep] = n
            else:
                del data[dep]


FOLLOW_MAX_DEPS = 8
_STORED: Any = object()


class ExecutionState:
    """Bookkeeping of one parallel execution of a :class:`Plan`: events in, ready tasks out.

    Tasks are identified by their priority ``i`` (index in ``plan.order``).  Not thread-safe:
    the driver serialises calls.
    """

    __slots__ = (
        "claimed",
        "data",
        "dependents",
        "error",
        "plan",
        "ready",
        "released",
        "remaining",
        "running",
        "waiting",
    )  # fmt: skip

    def __init__(self, plan: Plan) -> None:
        with gcpause.paused():  # a list per task, none freed: collections would only rescan the graph
            self._build(plan)

    def _build(self, plan: Plan) -> None:
        self.plan = plan
        self.data: dict[Key, Any] = dict(plan.literals)
        order = plan.order
        tasks = plan.tasks
        index = {k: i for i, k in enumerate(order)}
        waiting = [0] * len(order)
        dependents: list[list[int]] = [[] for _ in order]
        ready = []
        get = index.get
        for i, key in enumerate(order):
            count = 0
            for dep in tasks[key].dependencies:
                j = get(dep)
                if j is not None:
                    dependents[j].append(i)
                    count += 1
            if count:
                waiting[i] = count
            else:
                ready.append(i)  # increasing i: already a heap
        self.ready: list[int] = ready
        self.waiting = waiting
        self.dependents = dependents
        self.remaining = len(order)
        self.running = 0
        self.error: BaseException | None = None
        self.released: list[Key] | None = None  # set to a list to be told which keys were dropped
        self.claimed: set[int] = set()  # handed out before their dependencies finished

    @property
    def complete(self) -> bool:
        """All tasks have finished, or one has failed and none is still running."""
        return self.remaining == 0 or (self.error is not None and self.running == 0)

    def pop(self) -> tuple[int, Key, Task] | None:
        """Take the highest-priority ready task, or ``None`` if none is ready (or after an error)."""
        if not self.ready or self.error is not None:
            return None
        i = heapq.heappop(self.ready)
        self.running += 1
        key = self.plan.order[i]
        return i, key, self.plan.tasks[key]

    def pop_batch(self, n: int, follow: int | None = None) -> list[tuple[int, Key, Task]]:
        """Up to ``n`` ready tasks, plus the dependents that can run right after them, in priority order.

        A dependent joins the batch when each of its dependencies is finished or in the batch
        (and it has at most ``FOLLOW_MAX_DEPS`` of them): running the batch in priority order is
        then the same depth-first order the sync scheduler follows, so batching keeps its memory
        behaviour -- a subtree is reduced inside the batch instead of leaving its leaves waiting.
        ``follow`` caps how many dependents may join; by default any number may when more than
        one task is picked, and none when one is.
        """
        ready = self.ready
        if not ready or self.error is not None:
            return []
        picked = [heapq.heappop(ready) for _ in range(min(n, len(ready)))]
        order, tasks, data = self.plan.order, self.plan.tasks, self.data
        if follow is None:
            follow = len(ready) + len(order) if len(picked) > 1 else 0
        if follow > 0:
            waiting, dependents, claimed = self.waiting, self.dependents, self.claimed
            inside = {order[i] for i in picked}
            stack = list(picked)
            while stack and follow:
                for j in dependents[stack.pop()]:
                    w = waiting[j]
                    if w == 0 or w > FOLLOW_MAX_DEPS or j in claimed:
                        continue
                    key = order[j]
                    for d in tasks[key].dependencies:
                        if d not in data and d not in inside:
                            break
                    else:
                        claimed.add(j)
                        picked.append(j)
                        inside.add(key)
                        stack.append(j)
                        follow -= 1
                        if not follow:
                            break
            if len(picked) > 1:
                picked.sort()
        self.running += len(picked)
        return [(i, order[i], tasks[order[i]]) for i in picked]

    def finish(self, i: int, value: Any = _STORED) -> int:
        """Task ``i`` produced ``value``: release what it no longer needs, return how many became ready.

        Omit ``value`` when the runner has already put it in ``data`` itself.
        """
        plan = self.plan
        key = plan.order[i]
        data = self.data
        if value is not _STORED:
            data[key] = value
        self.running -= 1
        self.remaining -= 1
        refcount = plan.refcount
        for dep in plan.tasks[key].dependencies:
            n = refcount[dep] - 1
            if n:
                refcount[dep] = n
            else:
                data.pop(dep, None)  # a batch may have dropped it already (see pop_batch)
                if self.released is not None:
                    self.released.append(dep)
        newly = 0
        waiting = self.waiting
        claimed = self.claimed
        for j in self.dependents[i]:
            n = waiting[j] - 1
            waiting[j] = n
            if not n:
                if claimed and j in claimed:
                    claimed.discard(j)
                    continue
                heapq.heappush(self.ready, j)
                newly += 1
        return newly

    def claim(self, i: int) -> None:
        """Hand out task ``i`` before its dependencies have finished.

        For backends that run a worker's tasks in order: once every dependency of ``i`` is
        finished or queued ahead of it on the same worker, ``i`` can follow them there without a
        round trip.  A claimed task never enters the ready queue; ``finish`` it as usual.
        """
        self.claimed.add(i)
        self.running += 1

    def fail(self, i: int, exc: BaseException) -> None:
        """Task ``i`` raised ``exc``: no further task is handed out; the first error wins."""
        self.running -= 1
        if self.error is None:
            self.error = exc

    def cancel(self, exc: BaseException) -> None:
        """Stop handing out tasks (the caller was interrupted); running ones are discarded."""
        if self.error is None:
            self.error = exc

    def results(self) -> dict[Key, Any]:
        """``{output key: value}`` once complete without error."""
        data = self.data
        return {k: data[k] for k in self.plan.outputs}
