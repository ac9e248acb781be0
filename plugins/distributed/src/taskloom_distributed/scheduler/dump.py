"""The cluster's state in one structure of plain data, for ``client.dump_cluster_state``.

``{"scheduler": ..., "workers": {address: ...}, "version": 1}``: the scheduler's part
(:func:`scheduler_state`) and each worker's (:func:`~..worker.dump.worker_state`, asked for over
its stream; a worker that does not answer within ``timeout`` is ``{"error": "no reply"}``).
Task keys appear as their ``repr``; task results and specifications never appear.  The file
format is in :mod:`..cluster_dump`.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import attrs

from .. import logbuffer
from ..worker.dump import plain

if TYPE_CHECKING:
    from .server import Scheduler
    from .state import TaskState

DUMP_VERSION = 1


def _state(ts: TaskState) -> str:
    """``waiting`` for a task claimed ahead on a worker (``processing_on``) whose inputs are not done."""
    return "waiting" if ts.state == "processing" and ts.waiting_on else ts.state


def _task(ts: TaskState) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": repr(ts.key),
        "state": _state(ts),
        "priority": list(ts.priority),
        "dependencies": sorted(repr(d.key) for d in ts.dependencies),
        "waiting_on": sorted(repr(d.key) for d in ts.waiting_on),
        "who_has": sorted(ws.address for ws in ts.who_has),
        "processing_on": ts.processing_on.address if ts.processing_on is not None else None,
        "who_wants": sorted(str(c) for c in ts.who_wants),
        "nbytes": ts.nbytes,
        "type": ts.type,
        "retries": ts.retries,
    }
    if ts.state == "erred":
        out["exception"] = _text(ts.exception)
        out["traceback"] = ts.traceback if isinstance(ts.traceback, str) else None
        out["erred_on"] = repr(ts.erred_on)
    if ts.deaths:
        out["deaths"] = plain(ts.deaths)
    if ts.restrictions is not None:  # workers= of its submission: where it may run (or prefers to)
        out["restrictions"] = sorted(ts.restrictions)
        out["loose"] = ts.loose
    return out


def _text(exception: Any) -> str:
    """An exception as text, without unpickling a user's (it stays frames on the scheduler)."""
    if exception is None or isinstance(exception, str):
        return exception or ""
    if isinstance(exception, BaseException):
        return f"{type(exception).__name__}: {exception}"
    return repr(exception)


def scheduler_state(scheduler: Scheduler) -> dict[str, Any]:
    """The scheduler's tasks (by state), workers, clients, recent events and log records."""
    st = scheduler.state
    by_state: dict[str, list[str]] = {}
    tasks = []
    for ts in st.tasks.values():
        entry = _task(ts)
        tasks.append(entry)
        by_state.setdefault(entry["state"], []).append(entry["key"])
    info = scheduler.info()
    for address, ws in st.workers.items():
        info["workers"][address].update(
            processing=sorted(repr(ts.key) for ts in ws.processing),
            has_what=sorted(repr(ts.key) for ts in ws.has_what),
            log=ws.log,
            nanny=ws.nanny,
            last_seen_ago=round(time.monotonic() - ws.last_seen, 3) if ws.last_seen else None,
        )
    watchdog = getattr(scheduler, "watchdog", None)
    last_stall = watchdog.detector.last if watchdog is not None else None
    return {
        "address": scheduler.address,
        "pid": os.getpid(),
        "time": time.time(),
        "workers": plain(info["workers"]),
        "task_counts": st.task_counts(),
        "tasks_by_state": by_state,
        "tasks": tasks,
        "unrunnable": sorted(repr(ts.key) for ts in st.unrunnable),
        "clients": {str(c): sorted(repr(ts.key) for ts in wanted) for c, wanted in st.clients.items()},
        "mean_task_duration": st.mean_duration,
        "tasks_finished": st.progress,
        "last_stall": plain(attrs.asdict(last_stall)) if last_stall is not None else None,
        "events": [plain(e) for e in list(st.events)],
        "logs": [list(r) for r in logbuffer.recent_logs()],
    }


async def cluster_state(scheduler: Scheduler, timeout: float = 10.0) -> dict[str, Any]:
    """The scheduler's state and every worker's, as one structure of plain data."""
    replies = await scheduler._broadcast({"op": "dump-state"}, timeout)
    workers = {
        address: reply["state"] if "state" in reply else {"error": str(reply.get("error", "no reply"))}
        for address, reply in replies.items()
    }
    return {"version": DUMP_VERSION, "scheduler": scheduler_state(scheduler), "workers": workers}
