"""The stall watchdog: a warning naming the stuck tasks when nothing has progressed for a while.

:class:`StallDetector` holds the rules, without I/O: at each check it is given the time and the
:class:`~.state.SchedulerState`.  *Progress* is a task finishing or failing, or the set of known
tasks changing (a graph submitted, results released); an idle cluster (nothing pending) is not
stalled.  Once ``timeout`` seconds pass without progress while tasks are pending, it reports a
:class:`Stall`: how long, how many tasks are pending, and the first few of them -- those
processing first (with the worker they are on), then those no worker can take, then those
waiting (with the inputs they wait for).  It reports again after each further ``timeout`` of the
same stall, and :class:`Resumed` when progress comes back.  The check is cheap (two counters)
until a stall is suspected; only then are the tasks scanned.

:class:`Watchdog` runs it on the scheduler's loop every ``min(timeout / 4, 1)`` seconds and logs
the reports on ``taskloom.distributed.scheduler`` (``distributed.scheduler.stall_timeout``
seconds; 0 or ``False`` turns it off).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import attrs
from taskloom import config

from .state import SchedulerState, TaskState

if TYPE_CHECKING:
    from .server import Scheduler

logger = logging.getLogger("taskloom.distributed.scheduler")

MAX_LISTED = 10  # stuck tasks named in a warning


@attrs.frozen
class Stall:
    """Nothing progressed for ``seconds`` while ``pending`` tasks were pending."""

    seconds: float
    pending: int
    tasks: list[dict[str, Any]]  # the first stuck tasks: key, state, worker, name, waiting_on
    timeout: float

    def message(self) -> str:
        listed = "; ".join(_describe(t) for t in self.tasks)
        more = self.pending - len(self.tasks)
        if more > 0:
            listed += f"; and {more} more"
        return (
            f"stalled: no task has finished for {self.seconds:.1f} s while {self.pending} task(s) are "
            f"pending (distributed.scheduler.stall_timeout = {self.timeout:g} s). Stuck: {listed}. "
            "client.dump_cluster_state(filename) writes the whole cluster state"
        )


@attrs.frozen
class Resumed:
    """Progress came back after a reported stall of ``seconds``."""

    seconds: float

    def message(self) -> str:
        return f"tasks are progressing again after a stall of {self.seconds:.1f} s"


def _describe(task: dict[str, Any]) -> str:
    key = repr(task["key"])
    if task["state"] == "processing":
        return f"{key} processing on {task['worker']} ({task['name']})"
    if task["state"] == "no-worker":
        if task.get("restrictions"):
            return f"{key} ready, but no running worker it may run on (workers={task['restrictions']!r})"
        return f"{key} ready, but no running worker can take it"
    waiting = task.get("waiting_on") or []
    return f"{key} waiting on {waiting!r}"


def stuck_tasks(st: SchedulerState, limit: int = MAX_LISTED) -> tuple[list[dict[str, Any]], int]:
    """The first ``limit`` pending tasks (processing, then without a worker, then waiting), and
    how many are pending in all."""
    processing: list[TaskState] = []
    waiting: list[TaskState] = []
    for ts in st.tasks.values():
        if ts.state == "processing" and not ts.waiting_on:
            processing.append(ts)
        elif ts.state == "processing" or (ts.state == "waiting" and ts not in st.unrunnable):
            waiting.append(ts)  # (processing: claimed ahead on a worker, its inputs not done)
    unrunnable = [ts for ts in st.unrunnable if ts.state == "waiting"]
    total = len(processing) + len(unrunnable) + len(waiting)
    chosen: list[dict[str, Any]] = []
    for ts in sorted(processing, key=lambda t: t.priority)[:limit]:
        ws = ts.processing_on
        worker, name = (ws.address, ws.name) if ws is not None else ("?", "?")
        chosen.append({"key": ts.key, "state": "processing", "worker": worker, "name": name})
    for ts in sorted(unrunnable, key=lambda t: t.priority)[: limit - len(chosen)]:
        restrictions = sorted(ts.restrictions) if ts.restrictions is not None and not ts.loose else None
        chosen.append(
            {"key": ts.key, "state": "no-worker", "worker": None, "name": None, "restrictions": restrictions}
        )
    for ts in sorted(waiting, key=lambda t: t.priority)[: limit - len(chosen)]:
        on = sorted((d.key for d in ts.waiting_on), key=repr)
        chosen.append({"key": ts.key, "state": "waiting", "worker": None, "name": None, "waiting_on": on[:5]})
    return chosen, total


@attrs.define
class StallDetector:
    """See the module docstring; ``check`` once in a while with the current time."""

    timeout: float
    signature: tuple[int, int] | None = None
    since: float = 0.0  # when progress was last seen
    warned: float | None = None  # when this stall was last reported (None: not reported)
    last: Stall | None = None  # the latest stall reported

    def check(self, st: SchedulerState, now: float) -> Stall | Resumed | None:
        signature = (st.progress, len(st.tasks))
        if signature != self.signature:
            resumed = Resumed(now - self.since) if self.warned is not None else None
            self.signature, self.since, self.warned = signature, now, None
            return resumed
        if now - self.since < self.timeout:
            return None
        if self.warned is not None and now - self.warned < self.timeout:
            return None
        listed, pending = stuck_tasks(st)
        if not pending:  # idle, not stalled
            self.since = now
            return None
        self.warned = now
        self.last = Stall(now - self.since, pending, listed, self.timeout)
        return self.last


def stall_timeout() -> float:
    """``distributed.scheduler.stall_timeout`` in seconds (0: no watchdog)."""
    value = config.get("distributed.scheduler.stall_timeout", 60)
    if value in (None, False):
        return 0.0
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        raise ValueError(
            f"distributed.scheduler.stall_timeout must be a number of seconds (or False), not {value!r}"
        ) from None


class Watchdog:
    """Owned by a :class:`~.server.Scheduler`: runs a :class:`StallDetector` on its loop."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.timeout = stall_timeout()
        self.detector = StallDetector(self.timeout)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.timeout > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        interval = min(max(self.timeout / 4, 0.05), 1.0)
        while True:
            await asyncio.sleep(interval)
            try:
                self.tick(time.monotonic())
            except Exception:  # the watchdog must not die of what it watches
                logger.exception("the stall watchdog failed")

    def tick(self, now: float) -> Stall | Resumed | None:
        st = self.scheduler.state
        report = self.detector.check(st, now)
        if isinstance(report, Stall):
            logger.warning("%s", report.message())
            st.events.append(("stall", [repr(t["key"]) for t in report.tasks]))
        elif isinstance(report, Resumed):
            logger.warning("%s", report.message())
            st.events.append(("stall-resumed", round(report.seconds, 3)))
        return report
