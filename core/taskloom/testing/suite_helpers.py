"""Task functions, journals and hook recorders the conformance suite runs and observes tasks with.

They live at module level so that every scheduler can ship them to its workers (a worker process
imports this module to unpickle them).  Third-party suites may use them too.
"""

from __future__ import annotations

import functools
import operator
import os
import threading
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import taskloom
import taskloom.plugins
from taskloom import Ref, Task

# -- task functions ------------------------------------------------------------------------------


def inc(x: int) -> int:
    return x + 1


def add(x: Any, y: Any) -> Any:
    return x + y


def mul(x: Any, y: Any) -> Any:
    return x * y


def collect(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """Return the arguments as they arrived, to see how references were filled in."""
    return (args, kwargs)


def recorded(journal: Any, event: str, value: Any, *deps: Any) -> Any:
    """Record ``event`` in ``journal`` and return ``value`` (``deps`` only order the task)."""
    journal.record(event)
    return value


class TaskFailure(Exception):
    """The exception the failing tasks raise."""


def failing_task(sink: list[BaseException], message: str, *deps: Any) -> Any:
    """Raise :class:`TaskFailure`; ``sink`` receives the exception object first."""
    exc = TaskFailure(message)
    sink.append(exc)
    raise exc


def make_adder(n: int) -> Callable[[int], int]:
    return functools.partial(operator.add, n)


class Point:
    """A small object for attribute access and method calls on delayed values."""

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y

    def norm2(self) -> int:
        return self.x * self.x + self.y * self.y

    def scaled(self, k: int) -> Point:
        return Point(self.x * k, self.y * k)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


# -- observing tasks -----------------------------------------------------------------------------


class MemoryJournal:
    """Events recorded by tasks that run in this process; a lock guards the list."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[str] = []
        self._token = uuid.uuid4().hex

    def record(self, event: str) -> None:
        with self._lock:
            self._events.append(event)

    def events(self) -> list[str]:
        with self._lock:
            return list(self._events)

    def count(self, event: str) -> int:
        return self.events().count(event)

    def __taskloom_tokenize__(self) -> str:  # pure calls taking a journal still get equal keys
        return self._token


class FileJournal:
    """Events recorded by tasks in any process on this machine: one new file per event."""

    def __init__(self, directory: Path) -> None:
        self.directory = str(directory)

    def record(self, event: str) -> None:
        open(os.path.join(self.directory, f"{event}.{uuid.uuid4().hex}"), "x").close()

    def events(self) -> list[str]:
        return sorted(name.rsplit(".", 1)[0] for name in os.listdir(self.directory))

    def count(self, event: str) -> int:
        return self.events().count(event)

    def __taskloom_tokenize__(self) -> str:
        return self.directory


class _Tracked:
    __slots__ = ("__weakref__", "value")

    def __init__(self, value: int) -> None:
        self.value = value


class LiveCounter:
    """Makes result objects and counts how many are alive at once (its ``peak``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.live = 0
        self.peak = 0

    def make(self, value: int) -> _Tracked:
        obj = _Tracked(value)
        with self._lock:
            self.live += 1
            self.peak = max(self.peak, self.live)
        weakref.finalize(obj, self._release)
        return obj

    def _release(self) -> None:
        with self._lock:
            self.live -= 1

    def leaf(self, i: int) -> _Tracked:
        return self.make(i)

    def combine(self, a: _Tracked, b: _Tracked) -> _Tracked:
        return self.make(a.value + b.value)


class HookRecorder:
    """A diagnostics plugin that records every hook call, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[Any, ...]] = []

    def _add(self, *event: Any) -> None:
        with self._lock:
            self.events.append(event)

    @taskloom.hookimpl
    def taskloom_compute_start(self, graph: Any, keys: Any, scheduler: str) -> None:
        self._add("compute_start", list(keys), scheduler)

    @taskloom.hookimpl
    def taskloom_task_start(self, key: Any, worker: str) -> None:
        self._add("task_start", key, worker)

    @taskloom.hookimpl
    def taskloom_task_finish(
        self, key: Any, worker: str, duration: float, error: BaseException | None
    ) -> None:
        self._add("task_finish", key, worker, duration, error)

    @taskloom.hookimpl
    def taskloom_compute_finish(self, keys: Any, error: BaseException | None) -> None:
        self._add("compute_finish", list(keys), error)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]


def tree_graph(
    leaves: int, leaf: Callable[[int], Any], combine: Callable[[Any, Any], Any]
) -> tuple[dict[Any, Any], Any, int]:
    """A pairwise reduction over ``leaves`` (a power of two): ``(graph, root key, depth)``."""
    graph: dict[Any, Any] = {}
    level = []
    for i in range(leaves):
        graph["tree", 0, i] = Task(leaf, i)
        level.append(("tree", 0, i))
    depth = 0
    while len(level) > 1:
        depth += 1
        upper = []
        for j in range(0, len(level), 2):
            key = ("tree", depth, j // 2)
            graph[key] = Task(combine, Ref(level[j]), Ref(level[j + 1]))
            upper.append(key)
        level = upper
    return graph, level[0], depth


def tasks_run_in_this_process(scheduler: Any, **kwargs: Any) -> bool:
    """Ask ``scheduler`` where its tasks run: True if in this process (a value for ``in_process``)."""
    return bool(taskloom.get({"pid": Task(os.getpid)}, "pid", scheduler=scheduler, **kwargs) == os.getpid())


def _note_text(exc: BaseException) -> str:
    return "\n".join([str(exc), *getattr(exc, "__notes__", ())])
