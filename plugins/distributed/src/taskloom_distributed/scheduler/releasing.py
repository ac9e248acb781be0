"""Releasing: a result nobody needs any more is dropped from its workers, and its task forgotten.

A task's data is dropped (``free-keys`` to every worker holding it; a task claimed ahead whose
inputs are not done is withdrawn) once no client wants it, no pending dependent needs it and no
part still to come of the graph it came in may need it (``held``).
The task stays known (``released``) while a known task depends on it, so that a lost result
downstream can be recomputed from it, and is forgotten after that, and so on upstream.  Still
events in, messages out, no I/O: functions of the :class:`~.state.SchedulerState`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import claims
from .tasks import EMPTY

if TYPE_CHECKING:
    from .state import SchedulerState
    from .tasks import Messages, TaskState


def release_keys(st: SchedulerState, client: Any, keys: Iterable[Any]) -> Messages:
    """``client`` wants ``keys`` no more (nor their state changes)."""
    out: Messages = []
    wanted = st.clients.get(client, set())
    for key in keys:
        ts = st.tasks.get(key)
        if ts is None:
            continue
        if client in ts.who_wants:
            ts.who_wants.discard(client)
        if client in ts.observers:
            ts.observers = ts.observers - {client}
        wanted.discard(ts)
        maybe_release(st, ts, out)
    return out


def unhold(st: SchedulerState, tasks: list[TaskState], out: Messages) -> None:
    """The rest of the graph ``tasks`` came in has arrived (or never will): they are held no more."""
    for ts in tasks:
        ts.held -= 1
        if not ts.held and not ts.who_wants and not ts.waiters:
            maybe_release(st, ts, out)


def maybe_release(st: SchedulerState, ts: TaskState, out: Messages) -> None:
    """Drop ``ts``'s data if no client wants it and no pending dependent needs it; forget it
    once no known task depends on it (and so on upstream)."""
    stack = [ts]
    while stack:
        t = stack.pop()
        if t.who_wants or t.waiters or t.held:
            continue
        if t.state == "processing":
            if not t.waiting_on:  # running (or about to): it finishes, then is released
                continue
            claims.unclaim(t, out)  # claimed ahead, its inputs not done: it never runs
        if t.state != "released" or t.who_has:
            for ws in t.who_has:
                ws.has_what.discard(t)
                ws.nbytes -= t.nbytes
                out.append((("worker", ws.address), {"op": "free-keys", "keys": [t.key]}))
            t.who_has.clear()
            t.relayed = None
            t.state = "released"
            t.waiting_on = EMPTY
            st.unrunnable.discard(t)
            for dep in t.dependencies:
                if t in dep.waiters:
                    dep.waiters.discard(t)
                    stack.append(dep)
        if not t.dependents and st.tasks.get(t.key) is t:
            del st.tasks[t.key]
            for dep in t.dependencies:
                dep.dependents.discard(t)
                stack.append(dep)
