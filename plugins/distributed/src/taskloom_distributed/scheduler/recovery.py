"""What the scheduler's state machine does when workers die, go quiet or are restarted.

Still events in, messages out, no I/O (:class:`~.state.SchedulerState` delegates here):

* A worker leaves (its connection dropped, its nanny reported its death, it stopped sending
  heartbeats, or it closed): the tasks it was processing are sent elsewhere, and every result
  only it held is recomputed (its clients are told: ``lost-data``, their futures are pending
  again until ``key-in-memory``) from its inputs -- walking back through inputs that are no longer
  in memory anywhere, which the state keeps known (``released``) for as long as something
  downstream of them is.  Dependents that were already sent to other workers with the dead
  worker as the source of an input are withdrawn there and sent again once the input is back.
* Unless the departure was expected, the tasks that were *executing* there (as the nanny read
  them from the worker's slots, :mod:`..nanny.slots`; every task sent there when that is not
  known) record the death: worker, how it died, where its log is.  A task that has seen
  ``allowed_failures`` workers die under it fails with :class:`~taskloom.errors.KilledWorkerError`
  and is not tried again; its dependents fail with it; the rest of the graph carries on.
* A worker could not fetch an input from the worker the scheduler named (``missing-data``): that
  replica is dropped; if it was the last one the value is recomputed.
* ``restart``: every task is forgotten and each client with a future is told it was cancelled.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from taskloom.errors import KilledWorkerError

from ..nanny.slots import key_digest
from . import claims

if TYPE_CHECKING:
    from .state import Messages, SchedulerState, TaskState, WorkerInfo


def remove_worker(
    st: SchedulerState,
    address: str,
    reason: str,
    how: str | None,
    executing: Iterable[bytes] | None,
    expected: bool,
) -> Messages:
    out: Messages = []
    ws = st.workers.pop(address, None)
    if ws is None:
        return out
    st.running.pop(address, None)
    st.events.append(("remove-worker", (address, reason)))
    rerun = sorted(ws.processing, key=lambda t: t.priority)
    ws.processing.clear()
    lost = []
    for ts in ws.has_what:
        ts.who_has.discard(ws)
        if not ts.who_has and ts.state == "memory":
            lost.append(ts)
    ws.has_what.clear()
    ws.nbytes = 0
    culprits: list[TaskState] = []
    if not expected and rerun:
        if executing is None:  # claimed tasks still waiting for their inputs there never ran
            culprits = [ts for ts in rerun if not ts.waiting_on]
        else:
            digests = set(executing)
            culprits = [ts for ts in rerun if key_digest(ts.key) in digests]
        death = {"worker": address, "name": ws.name, "pid": ws.pid, "how": how or reason, "log": ws.log}
        for ts in culprits:
            ts.deaths = [*ts.deaths, death]
    for ts in rerun:
        ts.processing_on = None
        ts.state = "released"
    for ts in culprits:
        if len(ts.deaths) >= max(st.allowed_failures, 1):
            error = KilledWorkerError(ts.key, ts.deaths, st.allowed_failures)
            event = {"op": "task-event", "key": ts.key, "worker": address, "duration": 0.0, "error": error}
            out.extend((("client", client), event) for client in ts.observers)
            st.fail(ts, error, None, out)
    _recover(st, rerun, lost, f"its worker {address} left ({how or reason})", out)
    return out


def _recover(
    st: SchedulerState, rerun: list[TaskState], lost: list[TaskState], why: str, out: Messages
) -> None:
    """Run ``rerun`` (now ``released``) again and recompute the ``lost`` results that are needed."""
    for ts in lost:
        ts.state = "released"
        if ts.spec is None:  # scattered data cannot be recomputed
            st.fail(ts, f"the data of {ts.key!r} was lost: {why}; it was scattered, not computed", None, out)
        else:  # its futures are pending again until it is back
            out.extend((("client", c), {"op": "lost-data", "key": ts.key}) for c in ts.who_wants)
    again = list(rerun)
    for ts in lost:
        for dependent in list(ts.waiters):
            if dependent.state == "waiting":
                if dependent.waiting_on:
                    dependent.waiting_on.add(ts)
                else:
                    dependent.waiting_on = {ts}
            elif dependent.state == "processing":  # sent elsewhere to fetch ts from a dead worker
                _withdraw(dependent, out)
                again.append(dependent)
    for ts in sorted(lost + again, key=lambda t: t.priority):
        if ts.state != "released":
            continue
        if ts.waiters or ts.who_wants:
            st._activate(ts, out)
        else:
            st._maybe_release(ts, out)


def _withdraw(ts: TaskState, out: Messages) -> None:
    """Take ``ts`` back from the worker it was sent to; it will be sent again."""
    claims.unclaim(ts, out)
    ts.state = "released"


def missing_data(st: SchedulerState, worker: str, key: Any, errant_worker: str) -> Messages:
    out: Messages = []
    ts = st.tasks.get(key)
    ws = st.workers.get(worker)
    errant = st.workers.get(errant_worker)
    if ts is None or ws is None:
        return out
    if errant is None or errant not in ts.who_has:  # that holder's loss was dealt with, or it retired:
        if ts.state != "memory" or not ts.who_has:  # being recomputed, its dependents sent again after
            return out
    else:  # others may hold it: the dependents waiting on it there are sent again below
        ts.who_has.discard(errant)
        errant.has_what.discard(ts)
        errant.nbytes -= ts.nbytes
        out.append((("worker", errant_worker), {"op": "free-keys", "keys": [key]}))
    lost = [ts] if ts.state == "memory" and not ts.who_has else []
    again = []
    if not lost:  # others hold it: send the dependents waiting on it there again
        for dependent in list(ts.waiters):
            if dependent.state == "processing" and dependent.processing_on is ws:
                _withdraw(dependent, out)
                again.append(dependent)
    _recover(st, again, lost, f"{errant_worker} did not have it", out)
    return out


def restart(st: SchedulerState, reason: str) -> Messages:
    from ..client.futures import CancelledError

    out: Messages = []
    for ts in st.tasks.values():
        if ts.state == "erred":
            continue
        for client in ts.who_wants:
            msg = {
                "op": "task-erred",
                "key": ts.key,
                "exception": CancelledError(ts.key, f"its result was forgotten: {reason}"),
                "traceback": None,
                "cause": ts.key,
            }
            out.append((("client", client), msg))
    st.tasks.clear()
    st.unrunnable.clear()
    st.held.clear()  # (the rest of a graph coming in parts fails: its dependencies are gone)
    for wanted in st.clients.values():
        wanted.clear()
    for w in st.workers.values():
        _clear(w)
    st.events.append(("restart", reason))
    return out


def _clear(ws: WorkerInfo) -> None:
    ws.processing.clear()
    ws.has_what.clear()
    ws.nbytes = 0
