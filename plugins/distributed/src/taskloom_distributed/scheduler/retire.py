"""Graceful retirement as rules: which results to copy where before workers leave, and when they may go.

No I/O: :class:`Retirement` reads the :class:`~.state.SchedulerState` and returns the messages to
send (``acquire-replicas`` to the workers that are to receive copies); the driver
(:mod:`.retirement`) sends them, waits, and asks again until every leaving worker is *drained*.

* The leaving workers stop taking new tasks (status ``closing_gracefully``); what they are
  already processing runs to the end there, and its results are copied like the rest.
* A result is *unique* to the leaving workers when every worker that holds it is leaving.  Each
  unique result is copied (worker to worker: the recipient fetches it from a holder) to the
  running, non-leaving worker that holds the fewest bytes so far, counting the copies already
  assigned to it in this retirement.  The scheduler learns of each copy when the recipient
  reports it (``add-keys``), as for any fetched input.
* A leaving worker is *drained* once it holds no unique result and processes nothing: it can be
  removed and closed without losing or recomputing anything.  One with unique results and no
  worker to copy them to (none running but the leaving ones) is *stuck*: it is not retired.
* A copy that has not arrived after ``retry_after`` seconds (its recipient left or is slow) is
  asked for again, possibly from another recipient.

:func:`workers_to_close` picks the workers whose departure costs least, for ``scale(n)`` down.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from .state import Messages, SchedulerState, WorkerInfo

LEAVING = "closing_gracefully"


def held_bytes(ws: WorkerInfo) -> int:
    """Bytes of the results ``ws`` holds (replicas included)."""
    return sum(ts.nbytes for ts in ws.has_what)


def unique_results(st: SchedulerState, ws: WorkerInfo, leaving: frozenset[str]) -> list[Any]:
    """The results ``ws`` holds that only workers in ``leaving`` hold (as TaskStates)."""
    return [
        ts
        for ts in ws.has_what
        if ts.state == "memory" and all(holder.address in leaving for holder in ts.who_has)
    ]


def workers_to_close(st: SchedulerState, n: int, candidates: Iterable[str] | None = None) -> list[str]:
    """The addresses of the ``n`` workers whose departure costs least: those processing nothing
    first, then those holding the fewest bytes (ties: the most recently registered)."""
    pool = [st.workers[a] for a in (st.workers if candidates is None else candidates) if a in st.workers]
    order = {a: i for i, a in enumerate(st.workers)}  # registration order
    pool.sort(key=lambda ws: (len(ws.processing), held_bytes(ws), -order[ws.address]))
    return [ws.address for ws in pool[: max(n, 0)]]


@attrs.define
class RetireStep:
    """What one :meth:`Retirement.step` decided."""

    messages: Messages = attrs.Factory(list)
    drained: list[str] = attrs.Factory(list)  # may be removed and closed now
    stuck: dict[str, str] = attrs.Factory(dict)  # address -> why it cannot be retired
    gone: list[str] = attrs.Factory(list)  # left the cluster meanwhile (died, closed)
    copies: int = 0  # copies asked for in this step


@attrs.define
class Retirement:
    """The retirement of the workers at ``leaving``; see the module docstring."""

    leaving: frozenset[str]
    retry_after: float = 5.0
    requested: dict[Any, tuple[str, float]] = attrs.Factory(dict)  # key -> (recipient, when asked)
    previous: dict[str, str] = attrs.Factory(dict)  # address -> its status before it started leaving
    moved: dict[str, int] = attrs.Factory(dict)  # address -> results copied off it

    def start(self, st: SchedulerState) -> Messages:
        """The leaving workers take no new task from now on."""
        out: Messages = []
        for address in sorted(self.leaving):
            ws = st.workers.get(address)
            if ws is not None:
                self.previous[address] = ws.status
                out += st.worker_status(address, LEAVING)
        return out

    def abort(self, st: SchedulerState, addresses: Iterable[str]) -> Messages:
        """These workers stay after all: back to the status they had (new tasks for the running)."""
        out: Messages = []
        for address in addresses:
            ws = st.workers.get(address)
            if ws is not None and ws.status == LEAVING:
                out += st.worker_status(address, self.previous.get(address, "running"))
        return out

    def step(self, st: SchedulerState, now: float) -> RetireStep:
        """Ask for the copies still missing; report which leaving workers are drained or stuck."""
        result = RetireStep()
        recipients = [ws for a, ws in st.running.items() if a not in self.leaving]
        waiting_room = [ws for a, ws in st.workers.items() if a not in self.leaving and ws.status == "paused"]
        load = {ws.address: held_bytes(ws) for ws in recipients}
        for key, (recipient, _) in self.requested.items():  # copies asked for and still coming
            ts = st.tasks.get(key)
            if recipient in load and ts is not None and ts.state == "memory":
                load[recipient] += ts.nbytes
        batches: dict[str, dict[Any, list[str]]] = {}
        for address in sorted(self.leaving):
            ws = st.workers.get(address)
            if ws is None:
                result.gone.append(address)
                continue
            unique = unique_results(st, ws, self.leaving)
            if not unique:
                if not ws.processing:
                    result.drained.append(address)
                continue
            if not recipients:
                if not waiting_room:  # a paused worker may resume and take them: wait for it
                    result.stuck[address] = (
                        f"no other running worker to move its {len(unique)} unique result(s) to"
                    )
                continue
            for ts in sorted(unique, key=lambda t: t.priority):
                asked = self.requested.get(ts.key)
                if asked is not None and asked[0] in load and now - asked[1] < self.retry_after:
                    continue
                recipient = min(recipients, key=lambda w: (load[w.address], w.address)).address
                load[recipient] += ts.nbytes
                self.requested[ts.key] = (recipient, now)
                batches.setdefault(recipient, {})[ts.key] = sorted(h.address for h in ts.who_has)
                result.copies += 1
        for recipient, who_has in batches.items():
            result.messages.append((("worker", recipient), {"op": "acquire-replicas", "who_has": who_has}))
        return result

    def count_moved(self, st: SchedulerState) -> None:
        """Credit each leaving worker with the copies that have arrived (for the report)."""
        for key, (recipient, _) in list(self.requested.items()):
            ts = st.tasks.get(key)
            if ts is None or ts.state != "memory":  # released meanwhile: no copy needed
                del self.requested[key]
                continue
            if any(h.address == recipient for h in ts.who_has):
                for h in ts.who_has:
                    if h.address in self.leaving:
                        self.moved[h.address] = self.moved.get(h.address, 0) + 1
                del self.requested[key]
