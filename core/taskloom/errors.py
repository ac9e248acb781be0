"""The exception types taskloom users catch."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


class TaskloomError(Exception):
    """Base class of every taskloom error."""


class ConfigError(TaskloomError, ValueError):
    """A configuration file or value is invalid."""


class GraphError(TaskloomError, ValueError):
    """A task graph is malformed; raised before any task runs."""


class CycleError(GraphError):
    """The graph has a cycle; ``keys`` lists the keys on it, in order."""

    def __init__(self, keys: Sequence[Any]) -> None:
        self.keys = list(keys)
        path = " -> ".join(repr(k) for k in [*self.keys, self.keys[0]])
        super().__init__(f"the graph has a cycle: {path}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.keys,))


class MissingDependencyError(GraphError, KeyError):
    """A task refers to a key that is not in the graph."""

    def __init__(self, key: Any, dependent: Any) -> None:
        self.key = key
        self.dependent = dependent
        super().__init__(f"task {dependent!r} depends on {key!r}, which is not in the graph")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.dependent))

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class KeysNotFoundError(GraphError, KeyError):
    """Keys requested from a graph are not in it."""

    def __init__(self, keys: Iterable[Any]) -> None:
        self.keys = list(keys)
        shown = ", ".join(repr(k) for k in self.keys[:10])
        more = f" (and {len(self.keys) - 10} more)" if len(self.keys) > 10 else ""
        super().__init__(f"requested keys not in the graph: {shown}{more}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.keys,))

    def __str__(self) -> str:
        return str(self.args[0])


class SchedulerNotFoundError(TaskloomError, ValueError):
    """No installed plugin provides the requested scheduler."""


class PluginError(TaskloomError):
    """A plugin misbehaved (bad hook result, failing worker-plugin setup, ...)."""


class WorkerPluginError(PluginError):
    """A worker plugin's ``setup`` raised; no task ran on that worker."""

    def __init__(self, name: str, worker: Any, error: BaseException) -> None:
        self.name = name
        self.worker = worker
        self.error = error
        super().__init__(
            f"worker plugin {name!r} failed to set up on worker {worker!r}: {type(error).__name__}: {error}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.worker, self.error))


class KilledWorkerError(TaskloomError, RuntimeError):
    """A task killed every worker it ran on and is not tried again.

    ``deaths`` has one mapping per worker it killed, in order, with the keys ``worker`` (its
    address), ``name``, ``pid``, ``how`` (e.g. ``"killed by signal SIGKILL"``, ``"exit code 3"``,
    ``"memory: ..."``) and ``log`` (the path of that worker's log file, or ``""``).
    """

    def __init__(self, key: Any, deaths: Sequence[Any], allowed_failures: int | None = None) -> None:
        self.key = key
        self.deaths = [dict(d) for d in deaths]
        self.allowed_failures = allowed_failures
        limit = (
            ""
            if allowed_failures is None
            else f" (distributed.scheduler.allowed_failures = {allowed_failures})"
        )
        lines = [
            f"task {key!r} was tried on {len(self.deaths)} worker(s) and each died while running it; "
            f"it will not be tried again{limit}:"
        ]
        for d in self.deaths:
            who = ", ".join(
                str(x) for x in (d.get("name"), f"pid {d.get('pid')}" if d.get("pid") else None) if x
            )
            log = d.get("log") or "no log kept"
            lines.append(f"  - {d.get('worker')} ({who}): {d.get('how')}; log: {log}")
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.deaths, self.allowed_failures))
