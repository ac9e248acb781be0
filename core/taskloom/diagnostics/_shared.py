"""What the diagnostics share: the tasks a compute will run, task-name prefixes, the recorder base."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, Generic, Self, TypeVar

from ..graph import Key, Task, to_task
from .callback import Callback

__all__ = ["Recorder", "describe_error", "key_prefix", "needed_tasks"]

R = TypeVar("R")


def needed_tasks(graph: Mapping[Any, Any], keys: Sequence[Any]) -> dict[Key, tuple[Key, ...] | None] | None:
    """Every key a compute of ``keys`` touches: a task's key maps to its dependencies, data to ``None``.

    This is the planner's culling (:func:`taskloom.order.plan`) without its ordering: a walk
    from the requested keys through the dependencies they need, converting each visited value
    once with :func:`taskloom.graph.to_task` -- a ``Task`` costs nothing to look at, a classic
    tuple is converted as the planner would.  The keys that map to dependencies are exactly
    the tasks the scheduler will run, unlike ``len(graph)``, which also counts data and tasks
    nothing asked for.  The walk costs a fraction of planning (one dict entry per key).  A graph
    the planner would reject (a missing or unhashable key) gives ``None``: the compute is about
    to fail.
    """
    found: dict[Key, tuple[Key, ...] | None] = {}
    stack = list(keys)
    pop, extend = stack.pop, stack.extend
    try:
        while stack:
            key = pop()
            if key in found:
                continue
            value = graph[key]
            if type(value) is not Task:
                value = to_task(value, graph)
                if type(value) is not Task:
                    found[key] = None
                    continue
            deps = found[key] = value.dependencies
            if deps:
                extend(deps)
    except (KeyError, TypeError):
        return None
    return found


def key_prefix(key: Any) -> str:
    """A task's name for grouping: ``"add"`` for ``"add-3f2a"``, ``"part"`` for ``("part", 0)``.

    A tuple key is named by its first element; a string by the part before its last ``-``
    (the token ``delayed`` and collections append); anything else by ``str(key)``.
    """
    while type(key) is tuple and key:
        key = key[0]
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    if isinstance(key, str):
        head, sep, _ = key.rpartition("-")
        return head if sep and head else key
    return str(key)


def describe_error(error: BaseException | None) -> str | None:
    """``"ValueError: bad input"`` for an exception; kept instead of the exception itself so a
    record does not hold its traceback (and the frames' data) alive."""
    if error is None:
        return None
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Recorder(Callback, Generic[R]):
    """A callback that collects records in :attr:`results`.

    ``with recorder:`` starts from empty results (as Dask's profilers do); :meth:`register`
    keeps adding to them until :meth:`clear`.  ``_lock`` guards the subclass's state against
    the scheduler's worker threads.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.results: list[R] = []

    def clear(self) -> None:
        """Forget every record collected so far."""
        with self._lock:
            self.results = []
            self._reset()

    def _reset(self) -> None:
        """Forget any per-compute state as well (override; called under ``_lock``)."""

    def __enter__(self) -> Self:
        entered = super().__enter__()  # refuses first if already active, keeping the records
        self.clear()
        return entered
