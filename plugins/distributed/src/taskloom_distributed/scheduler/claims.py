"""Claims: waiting tasks sent ahead to the worker where all their unfinished inputs are processing.

When a task goes to a worker, a waiting dependent whose every unfinished input is processing on
that same worker (and which has at most ``CLAIM_MAX_DEPS`` inputs) goes there too, at once, and
so on downstream: the worker runs it as soon as its local inputs are done, with no round trip
through the scheduler (a chain runs at the worker's pace).  A claimed task is ``processing`` with
a non-empty ``waiting_on``.  Each task pulls at most ``nthreads`` dependents ahead with it, so a
fan-out is still spread over the workers when its input is done.  If an input of a claimed task
is sent elsewhere (rescheduled, stolen), fails, or the claimed task is no longer wanted, the
claim is withdrawn (``free-keys`` to its worker); a claimed task on a worker that dies is
rescheduled like any other task processing there.  A restricted task is claimed only on a worker
its restrictions allow.

Still events in, messages out, no I/O: functions of the :class:`~.state.SchedulerState`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .restrictions import allows

if TYPE_CHECKING:
    from .state import SchedulerState
    from .tasks import Messages, TaskState, WorkerInfo

CLAIM_MAX_DEPS = 8  # a task with more inputs than this is never claimed ahead (a reduction over many)


def claimer(st: SchedulerState, ts: TaskState) -> WorkerInfo | None:
    """The worker that may run waiting ``ts`` ahead: every unfinished input processes there."""
    if ts.state != "waiting" or not ts.waiting_on or len(ts.dependencies) > CLAIM_MAX_DEPS:
        return None
    ws = None
    for dep in ts.waiting_on:
        w = dep.processing_on
        if w is None or (ws is not None and w is not ws) or dep.claims >= w.nthreads:
            return None
        ws = w
    if ws is None or st.running.get(ws.address) is not ws:
        return None
    if ts.restrictions is not None and not allows(ts, ws):  # restricted elsewhere: not claimed here
        return None
    return ws


def claim(st: SchedulerState, ts: TaskState, ws: WorkerInfo, out: Messages) -> None:
    """Send waiting ``ts`` to ``ws`` ahead of its inputs there, and its dependents that can follow."""
    claim_one(st, ts, ws, out)
    if ts.dependents:
        claim_downstream(st, ts, ws, out)


def claim_one(st: SchedulerState, ts: TaskState, ws: WorkerInfo, out: Messages) -> None:
    """Send waiting ``ts`` alone to ``ws`` ahead of its inputs there."""
    for dep in ts.waiting_on:
        dep.claims += 1
    if ts.dependents:  # claimed on it when it was sent before: they follow it afresh
        withdraw_claims(st, ts, out)
    ts.state = "processing"
    ts.processing_on = ws
    ws.processing.add(ts)
    out.append((("worker", ws.address), st._compute_msg(ts)))


def claim_downstream(st: SchedulerState, ts: TaskState, ws: WorkerInfo, out: Messages) -> None:
    """The waiting dependents of ``ts`` (processing on ``ws``) that can follow it there, and theirs."""
    stack = [ts]
    while stack:
        for d in stack.pop().dependents:
            if d.state == "waiting" and claimer(st, d) is ws:
                claim_one(st, d, ws, out)
                if d.dependents:
                    stack.append(d)


def withdraw_claims(st: SchedulerState, ts: TaskState, out: Messages) -> None:
    """The dependents claimed ahead on ``ts`` (and downstream of them) go back to waiting:
    ``ts`` is about to run elsewhere, or again."""
    ts.claims = 0
    stack = [ts]
    while stack:
        t = stack.pop()
        for d in t.dependents:
            if d.state == "processing" and t in d.waiting_on:
                unclaim(d, out)
                d.state = "waiting"
                stack.append(d)


def unclaim(ts: TaskState, out: Messages) -> None:
    """Take ``ts`` back from the worker it was sent to (``free-keys`` there)."""
    ws = ts.processing_on
    if ws is not None:
        ws.processing.discard(ts)
        out.append((("worker", ws.address), {"op": "free-keys", "keys": [ts.key]}))
    ts.processing_on = None
    ts.claims = 0
