"""Failures: a failed task's error spreads downstream, and :func:`retry` runs failed tasks again.

A task that fails for good (``erred``) tells the clients that want it, every task downstream of
it fails with its error (``erred_on`` names the task it came from; a dependent claimed ahead is
withdrawn from its worker), and the inputs they no longer need are released.  ``retry`` releases
the failed tasks asked for, their failed causes upstream and the dependents that inherited their
errors, and runs them again under the same keys.  Still events in, messages out, no I/O:
functions of the :class:`~.state.SchedulerState`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import claims
from .tasks import EMPTY, NO_DEATHS

if TYPE_CHECKING:
    from .state import SchedulerState
    from .tasks import Messages, TaskState


def retry(st: SchedulerState, keys: Iterable[Any]) -> Messages:
    """Run failed ``keys`` again in place, with their failed causes and inheritors (see the module)."""
    out: Messages = []
    upstream: set[TaskState] = set()
    stack = [ts for ts in map(st.tasks.get, keys) if ts is not None and ts.state == "erred"]
    while stack:  # the failed tasks and their inputs not in memory: the error came from there
        t = stack.pop()
        if t in upstream:
            continue
        upstream.add(t)
        stack.extend(d for d in t.dependencies if d.state in ("erred", "released") and d.spec is not None)
    causes = {t.key for t in upstream}
    revive = {t for t in upstream if t.state == "erred"}
    stack, seen = list(upstream), set(upstream)
    while stack:  # dependents that failed because of them (through released ones between)
        for d in stack.pop().dependents:
            if d in seen or d.state not in ("erred", "released") or d.erred_on not in causes:
                continue
            seen.add(d)
            stack.append(d)
            if d.state == "erred":
                revive.add(d)
    for t in revive:
        t.state = "released"
        t.exception = t.traceback = t.erred_on = None
        t.deaths = NO_DEATHS
        for client in t.who_wants:
            out.append((("client", client), {"op": "task-retried", "key": t.key}))
    for t in sorted(revive, key=lambda t: t.priority):
        st._activate(t, out)
    return out


def fail(st: SchedulerState, ts: TaskState, exception: Any, traceback: Any, out: Messages) -> None:
    """``ts`` failed for good: its clients are told, and everything downstream fails with it."""
    ts.state = "erred"
    ts.exception, ts.traceback, ts.erred_on = exception, traceback, ts.key
    ts.waiting_on = EMPTY
    st.unrunnable.discard(ts)
    for client in ts.who_wants:
        out.append((("client", client), st._erred_msg(ts)))
    for dep in list(ts.dependents):
        inherit_error(st, dep, ts, out)
    drop_inputs(st, ts, out)


def inherit_error(st: SchedulerState, ts: TaskState, cause: TaskState, out: Messages) -> None:
    """``ts`` and everything downstream of it fail with ``cause``'s error."""
    stack = [ts]
    while stack:
        t = stack.pop()
        if t.state in ("erred", "memory"):
            continue
        if t.processing_on is not None:  # claimed ahead there: its worker drops it
            claims.unclaim(t, out)
        st.unrunnable.discard(t)
        t.state = "erred"
        t.exception, t.traceback, t.erred_on = cause.exception, cause.traceback, cause.erred_on
        t.waiting_on = EMPTY
        for client in t.who_wants:
            out.append((("client", client), st._erred_msg(t)))
        stack.extend(t.dependents)
        drop_inputs(st, t, out)


def drop_inputs(st: SchedulerState, ts: TaskState, out: Messages) -> None:
    """A failed task needs its inputs no more."""
    for dep in list(ts.dependencies):
        if ts in dep.waiters:
            dep.waiters.discard(ts)
            st._maybe_release(dep, out)
