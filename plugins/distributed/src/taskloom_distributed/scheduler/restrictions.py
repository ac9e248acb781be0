"""Worker restrictions (``workers=`` of a submission): which workers a task may run on.

A restricted task goes only to a running worker it names (by address, with or without the
scheme, or by name) and is claimed only there; while there is none it waits in ``unrunnable``
until one joins.  With ``allow_other_workers`` (``loose``) the named workers are preferred.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .tasks import TaskState, WorkerInfo

logger = logging.getLogger("taskloom.distributed.scheduler")


def restrict(
    tasks: list[TaskState], workers: Iterable[str], loose: bool, known: Iterable[WorkerInfo]
) -> None:
    """Restrict ``tasks`` to ``workers`` (a preference only if ``loose``); a restriction naming none
    of the ``known`` workers is accepted (its tasks wait for such a worker to join), with a warning."""
    restrictions = frozenset(workers)
    for ts in tasks:
        ts.restrictions, ts.loose = restrictions, loose
    names = {n for ws in known for n in _names(ws)}
    unknown = sorted(restrictions - names)
    if unknown and tasks:
        logger.warning(
            "tasks %s are restricted to worker(s) %s, which the scheduler does not know%s",
            _some_keys(tasks),
            ", ".join(map(repr, unknown)),
            " (they may run elsewhere)" if loose else ": they wait for such a worker",
        )


def _names(ws: WorkerInfo) -> tuple[str, ...]:
    """What a restriction may call ``ws``: its address (with or without the scheme) or its name."""
    return (ws.address, ws.address.split("://", 1)[-1], ws.name)


def allows(ts: TaskState, ws: WorkerInfo) -> bool:
    """Whether ``ts``'s worker restrictions name ``ws`` (True for an unrestricted task)."""
    r = ts.restrictions
    return r is None or any(n in r for n in _names(ws))


def _some_keys(tasks: list[TaskState], limit: int = 5) -> str:
    shown = ", ".join(repr(ts.key) for ts in tasks[:limit])
    return shown + (f" and {len(tasks) - limit} more" if len(tasks) > limit else "")
