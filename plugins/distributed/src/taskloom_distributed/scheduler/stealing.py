"""Work stealing: tasks queued on a busy worker move to an idle one (a worker that just joined).

The scheduler sends every ready task to a worker at once, so without this a worker that joins
later -- scaled up by ``cluster.adapt()`` or ``cluster.scale()`` -- would get nothing of a burst
already queued elsewhere.  :class:`WorkStealing` holds the rules, without I/O:

* :meth:`~WorkStealing.balance` (called every ``INTERVAL``): for each *idle* running worker
  (fewer tasks than threads), tasks are taken from the most loaded workers (tasks per thread,
  any status: a paused or retiring worker's queue is fair game) until the two loads differ by
  at most one task per thread.  The tasks taken are those the victim would run last (lowest
  priority) and only when moving their inputs costs less than half the wait it saves, and never
  a task whose worker restrictions (``workers=``, without ``allow_other_workers``) exclude the thief.  Each
  becomes a ``steal-request`` to the victim; the task stays assigned to it meanwhile.
* :meth:`~WorkStealing.response`: the victim answers ``stolen`` (the task had not started: it
  dropped it) -- then the task is sent to the thief, or to the best running worker if the thief
  is gone -- or not (it is running or done there already: nothing changes).
  A request unanswered after ``TIMEOUT`` seconds is forgotten (the task may be stolen again).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from typing import TYPE_CHECKING, Any

import attrs
from taskloom import config

from .state import BANDWIDTH, Messages, SchedulerState, TaskState, WorkerInfo, allows
from .tasks import EMPTY

if TYPE_CHECKING:
    from .server import Scheduler

logger = logging.getLogger("taskloom.distributed.scheduler")

INTERVAL = 0.1  # seconds between two rounds of balancing
TIMEOUT = 5.0  # seconds after which an unanswered steal request is forgotten
MAX_PER_ROUND = 200  # steal requests sent in one round, at most


def _load(ws: WorkerInfo, extra: int = 0) -> float:
    return (len(ws.processing) + extra) / max(ws.nthreads, 1)


@attrs.define
class WorkStealing:
    """See the module docstring."""

    pending: dict[Any, tuple[str, str, float]] = attrs.Factory(dict)  # key -> (victim, thief, when)
    started: dict[Any, str] = attrs.Factory(dict)  # key -> the worker that said it runs it already
    stolen: int = 0  # tasks moved so far

    def balance(self, st: SchedulerState, now: float) -> Messages:
        for key, (_, _, when) in list(self.pending.items()):
            if now - when > TIMEOUT:
                del self.pending[key]
        for key, address in list(self.started.items()):
            ts = st.tasks.get(key)
            if ts is None or ts.processing_on is None or ts.processing_on.address != address:
                del self.started[key]
        idle = [ws for ws in st.running.values() if len(ws.processing) < ws.nthreads]
        if not idle:
            return []
        incoming: dict[str, int] = {}  # address -> tasks being stolen for it / from it (negative)
        for from_address, to_address, _ in self.pending.values():
            incoming[to_address] = incoming.get(to_address, 0) + 1
            incoming[from_address] = incoming.get(from_address, 0) - 1
        victims = [ws for ws in st.workers.values() if len(ws.processing) > ws.nthreads]
        if not victims:
            return []
        out: Messages = []
        chosen: dict[str, list[TaskState]] = {}  # victim address -> tasks left to offer, last first
        for thief in sorted(idle, key=lambda w: _load(w, incoming.get(w.address, 0))):
            while len(out) < MAX_PER_ROUND:
                victim = max(victims, key=lambda w: _load(w, incoming.get(w.address, 0)))
                thief_load = _load(thief, incoming.get(thief.address, 0) + 1)
                if victim is thief or _load(victim, incoming.get(victim.address, 0) - 1) < thief_load:
                    break  # even: one more move would only turn the imbalance around
                candidates = chosen.get(victim.address)
                if candidates is None:
                    candidates = chosen[victim.address] = self._candidates(victim)
                ts = self._pick(st, candidates, thief, victim, incoming)
                if ts is None:
                    victims = [v for v in victims if v is not victim]
                    if not victims:
                        break
                    continue
                self.pending[ts.key] = (victim.address, thief.address, now)
                incoming[thief.address] = incoming.get(thief.address, 0) + 1
                incoming[victim.address] = incoming.get(victim.address, 0) - 1
                out.append((("worker", victim.address), {"op": "steal-request", "key": ts.key}))
            if not victims or len(out) >= MAX_PER_ROUND:
                break
        return out

    def _candidates(self, victim: WorkerInfo) -> list[TaskState]:
        """The victim's tasks it would run last, last first (enough for one round)."""
        n = min(len(victim.processing) - victim.nthreads, MAX_PER_ROUND + len(self.pending))
        return heapq.nlargest(max(n, 0), victim.processing, key=lambda t: t.priority)

    def _pick(
        self,
        st: SchedulerState,
        candidates: list[TaskState],
        thief: WorkerInfo,
        victim: WorkerInfo,
        incoming: dict[str, int],
    ) -> TaskState | None:
        saved = (
            _load(victim, incoming.get(victim.address, 0)) - _load(thief, incoming.get(thief.address, 0))
        ) * st.mean_duration
        while candidates:
            ts = candidates.pop(0)
            if (
                ts.waiting_on
                or ts.key in self.pending
                or ts.processing_on is not victim
                or ts.key in self.started
                or not (ts.loose or allows(ts, thief))
            ):
                continue  # (waiting_on: claimed, its inputs are computed there first)
            missing = sum(d.nbytes for d in ts.dependencies if thief not in d.who_has)
            if missing / BANDWIDTH < saved / 2:
                return ts
        return None

    def response(self, st: SchedulerState, worker: str, key: Any, stolen: bool) -> Messages:
        """``worker`` answered the steal request for ``key``."""
        asked = self.pending.pop(key, None)
        if not stolen:
            self.started[key] = worker  # not asked for again while it runs there
            return []
        ts = st.tasks.get(key)
        victim = st.workers.get(worker)
        if ts is None or victim is None or ts.state != "processing" or ts.processing_on is not victim:
            return []  # released, or rescheduled meanwhile: the victim dropped a task nobody needs there
        victim.processing.discard(ts)
        ts.processing_on = None
        thief = (st.running.get(asked[1]) if asked is not None else None) or st.decide_worker(ts)
        if thief is None:  # no running worker left: it waits for one
            ts.state = "waiting"
            ts.waiting_on = EMPTY
            st.unrunnable.add(ts)
            return []
        out: Messages = []
        st.withdraw_claims(ts, out)  # dependents claimed ahead on the victim wait for it again
        ts.processing_on = thief
        thief.processing.add(ts)
        self.stolen += 1
        return [*out, (("worker", thief.address), st._compute_msg(ts))]


class Stealer:
    """Owned by a :class:`~.server.Scheduler`: balances every ``INTERVAL`` s on its loop
    (``distributed.scheduler.work_stealing``: False turns it off)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.rules = WorkStealing()
        self.enabled = bool(config.get("distributed.scheduler.work_stealing", True))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            try:
                self.scheduler._send(self.rules.balance(self.scheduler.state, time.monotonic()))
            except Exception:  # balancing must not die of a state it did not expect
                logger.exception("work stealing failed")

    def response(self, worker: str, msg: dict[str, Any]) -> None:
        self.scheduler._send(self.rules.response(self.scheduler.state, worker, msg["key"], msg["stolen"]))
