"""What the scheduler knows of each task and each worker (:class:`TaskState`, :class:`WorkerInfo`).

Plain records, moved by :class:`~.state.SchedulerState`; also the shape of what it returns
(:data:`Messages`: ``(recipient, message)`` pairs, the recipient ``("worker", address)`` or
``("client", client_id)``).
"""

from __future__ import annotations

from typing import Any

import attrs

# the shared empty default of the containers most tasks leave empty (fewer objects per task for
# the garbage collector to scan): assigned, never mutated -- a site that adds to one makes its own
EMPTY: Any = frozenset()
NO_DEATHS: Any = ()

Recipient = tuple[str, Any]
Messages = list[tuple[Recipient, dict[str, Any]]]


@attrs.define(eq=False, repr=False)
class TaskState:
    key: Any
    spec: Any = None
    priority: tuple[int, int] = (0, 0)
    state: str = "released"
    dependencies: set[TaskState] = attrs.Factory(set)
    dependents: set[TaskState] = attrs.Factory(set)
    waiting_on: set[TaskState] = EMPTY
    waiters: set[TaskState] = attrs.Factory(set)  # dependents that still need this value
    who_has: set[WorkerInfo] = attrs.Factory(set)
    processing_on: WorkerInfo | None = None
    who_wants: set[Any] = EMPTY
    nbytes: int = 0
    type: str = ""
    exception: Any = None
    traceback: Any = None
    erred_on: Any = None  # key of the task whose error this one inherits
    retries: int = 0
    # clients that want every state change (diagnostics); a shared empty frozenset until the first
    observers: set[Any] | frozenset[Any] = frozenset()
    deaths: list[dict[str, Any]] = NO_DEATHS  # workers that died while running it
    claims: int = 0  # dependents claimed ahead onto the worker running it (see :mod:`.claims`)
    inline: bool = False  # its small result goes to the clients with the news it is done
    # its small result (serializer name, frames), kept to relay to the workers of its dependents
    relayed: tuple[str, list[bytes]] | None = None
    # worker restrictions: addresses or names it may run on (None: any); ``loose``: only a preference
    restrictions: frozenset[str] | None = None
    loose: bool = False
    # parts of a graph still to come may depend on it: kept, even if nothing needs it yet
    held: int = 0

    def __repr__(self) -> str:
        return f"<TaskState {self.key!r} {self.state}>"


@attrs.define(eq=False, repr=False)
class WorkerInfo:
    address: str
    name: str = ""
    nthreads: int = 1
    memory_limit: int = 0
    pid: int = 0
    processing: set[TaskState] = attrs.Factory(set)
    has_what: set[TaskState] = attrs.Factory(set)
    nbytes: int = 0
    metrics: dict[str, Any] = attrs.Factory(dict)
    nanny: str | None = None  # the id of the nanny that started it, if any
    log: str = ""  # where its output goes (a file its nanny keeps)
    status: str = "running"  # only "running" workers get new tasks ("closing", "paused", ...)
    last_seen: float = 0.0  # when the scheduler last heard from it (server clock)

    def __repr__(self) -> str:
        return f"<WorkerInfo {self.address}>"
