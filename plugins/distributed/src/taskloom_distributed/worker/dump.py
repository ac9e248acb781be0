"""A worker's state as plain data (str, numbers, lists, dicts), for ``client.dump_cluster_state``.

Task keys appear as their ``repr``, so any key fits JSON and msgpack; user data never does.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .. import logbuffer
from .memory import SpillBuffer

if TYPE_CHECKING:
    from .server import Worker


def plain(value: Any) -> Any:
    """``value`` with every key and leaf JSON/msgpack can hold as is; anything else as its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, str) else repr(k): plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return repr(value)


def _event(event: tuple[float, str, Any]) -> list[Any]:
    """``[time, op, repr(key)]``, or ``[time, op, [repr(key), ...]]`` for a message about keys."""
    when, op, keys = event
    if isinstance(keys, list):
        return [when, op, [repr(k) for k in keys]]
    return [when, op, repr(keys)]


def worker_state(worker: Worker) -> dict[str, Any]:
    """What ``worker`` runs, waits for, fetches and holds, with its recent events and logs."""
    import psutil

    state = worker.state
    tasks = []
    by_state: dict[str, list[str]] = {}
    for key, ts in list(state.tasks.items()):
        k = repr(key)
        by_state.setdefault(ts.state, []).append(k)
        tasks.append(
            {
                "key": k,
                "state": ts.state,
                "priority": list(ts.priority),
                "dependencies": sorted(repr(d) for d in ts.dependencies),
                "missing": sorted(repr(d) for d in ts.missing),
                "who_has": list(ts.who_has),
            }
        )
    data = worker.data
    if isinstance(data, SpillBuffer):
        in_memory = [repr(k) for k in list(data.fast)] + [repr(k) for k in list(data.pinned)]
        spilled = [repr(k) for k in list(data.slow)]
    else:
        in_memory, spilled = [repr(k) for k in list(data)], []
    try:
        rss = int(psutil.Process().memory_info().rss)
    except psutil.Error:
        rss = 0
    return {
        "address": worker.address,
        "name": worker.name or worker.address,
        "pid": os.getpid(),
        "time": time.time(),
        "scheduler": worker.scheduler_address,
        "nthreads": worker.nthreads,
        "status": "closing" if worker.closed.is_set() else ("paused" if state.paused else "running"),
        "memory_limit": worker.memory_limit,
        "memory": rss,
        "tasks": tasks,
        "tasks_by_state": by_state,
        "executing": sorted(repr(k) for k in state.executing),
        "ready": [repr(k) for _, _, k in sorted(state.ready)],
        "in_flight": {peer: sorted(repr(k) for k in keys) for peer, keys in state.in_flight.items() if keys},
        "data": {"memory": in_memory, "spilled": spilled},
        "events": [_event(e) for e in list(getattr(worker, "events", ()))],
        "logs": [list(r) for r in logbuffer.recent_logs()],
    }
