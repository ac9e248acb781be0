"""The bridge that drives Dask's callbacks from taskloom's diagnostics hooks.

Dask's schedulers call the active ``dask.callbacks.Callback`` s -- ``ProgressBar``,
``Profiler``, ``CacheProfiler``, ``dask.cache.Cache``, user subclasses -- at five points:

=============================================  ==============================================
Dask callback                                  when the bridge calls it
=============================================  ==============================================
``_start(dsk)``                                before conversion, so it may edit ``dsk``
``_start_state(dsk, state)``                   once ``state`` is built, before any task runs
``_pretask(key, dsk, state)``                  on ``taskloom_task_start``
``_posttask(key, result, dsk, state, id)``     on ``taskloom_task_finish`` without error
``_finish(dsk, state, errored)``               after the compute, also when it failed
=============================================  ==============================================

``dsk`` is the graph in Dask's task spec (``convert_legacy_graph`` of the graph given), as Dask's
own schedulers pass it.  ``state`` is the dict Dask's ``local.py`` keeps, with the same keys and
kept up to date from the hook events: ``dependencies``, ``dependents``, ``waiting``,
``waiting_data``, ``ready``, ``running``, ``finished``, ``released`` and ``cache``.  (``ready`` is a
set, not Dask's stack: nothing is popped from it here.)  ``id`` is the taskloom worker's name
(``"taskloom-threads-3"``, a process or a dask worker address) where Dask passes a thread ident
or a pid.

``result`` is the task's value when the task ran in this process (``sync``, ``threads``,
``pool``, ``dask`` on an in-process cluster): each task is then wrapped in a small function that
hands its value to the bridge.  Tasks that run in other processes (``processes``, remote dask
workers) keep their values there, and ``result`` is ``None``; ``state["cache"]`` then holds only
the graph's data.

The hooks run on the thread that runs (or learns about) the task, possibly several at once; the
bridge calls the Dask callbacks under one lock, one at a time, as Dask's single scheduler thread
does.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from dask._task_spec import convert_legacy_graph
from dask.callbacks import unpack_callbacks
from dask.utils import ensure_dict
from taskloom import Ref, Task
from taskloom.diagnostics import Callback

from .convert import Key, convert

__all__ = ["DaskCallbacks", "capture"]

_live: dict[str, DaskCallbacks] = {}  # token -> bridge, for capture() in this process
_tokens = itertools.count()
_MISSING: Any = object()


def capture(token: str, key: Key, value: Any) -> Any:
    """Return ``value``, first handing it to the bridge ``token`` if that lives in this process."""
    bridge = _live.get(token)
    if bridge is not None and bridge.pid == os.getpid():  # not a forked copy
        bridge.results[key] = value
    return value


class DaskCallbacks:
    """Dask's callbacks ``callbacks`` (5-tuples) around one compute of ``outputs`` of ``dsk``.

    Use as a context manager: entering calls ``_start`` and ``_start_state``, converts the graph
    (``graph``, the taskloom graph to compute) and starts listening to taskloom's task hooks;
    leaving stops listening and calls ``_finish``.
    """

    def __init__(
        self,
        callbacks: Sequence[tuple[Callable[..., Any] | None, ...]],
        dsk: Mapping[Key, Any],
        outputs: Sequence[Key],
        cache: Mapping[Key, Any] | None = None,
    ) -> None:
        self.pid = os.getpid()
        self.token = f"{self.pid}-{next(_tokens)}"
        self.results: dict[Key, Any] = {}
        self.graph: dict[Key, Any] = {}
        self.dsk: dict[Key, Any] = {}
        self.state: dict[str, Any] = {}
        self._callbacks = list(callbacks)
        self._input = dsk
        self._outputs = set(outputs)
        self._output_list = list(outputs)
        self._cache = cache
        self._started: list[tuple[Callable[..., Any] | None, ...]] = []
        self._lock = threading.RLock()
        self._tasks: set[Key] = set()
        self._listener: Callback | None = None
        _, start_state, pretask, posttask, _ = unpack_callbacks(self._callbacks)
        self._pretask: list[Callable[..., Any]] = list(pretask)
        self._posttask: list[Callable[..., Any]] = list(posttask)
        self._start_state: list[Callable[..., Any]] = list(start_state)

    # -- the compute ---------------------------------------------------------------------------
    def __enter__(self) -> Self:
        try:
            self._enter()
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _enter(self) -> None:
        cache = self._cache
        all_keys = None
        dsk = ensure_dict(self._input)
        if cache:
            all_keys = set(dsk) | set(cache)
        self.dsk = convert_legacy_graph(dsk, all_keys=all_keys)
        for cb in self._callbacks:
            if cb[0] is not None:
                cb[0](self.dsk)
            self._started.append(cb)
        self.graph = convert(self.dsk, cache)
        self.state = self._initial_state()
        for f in self._start_state:
            f(self.dsk, self.state)
        if self._posttask:
            _live[self.token] = self
            token, graph = self.token, self.graph
            for key in self._tasks:
                graph[key] = Task(capture, token, key, graph[key])
        if self._pretask or self._posttask:
            self._listener = Callback(task_start=self._task_start, task_finish=self._task_finish)
            self._listener.register()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._listener is not None:
            self._listener.unregister()
            self._listener = None
        _live.pop(self.token, None)
        self.results.clear()
        errored = exc_type is not None
        for cb in self._started:
            if cb[4] is not None:
                cb[4](self.dsk, self.state, errored)
        self._started = []

    # -- the state Dask's callbacks read -------------------------------------------------------------
    def _initial_state(self) -> dict[str, Any]:
        """Dask's scheduler state for the tasks the outputs need, before any has run."""
        graph = self.graph
        tasks = self._tasks
        cache: dict[Key, Any] = {}
        dependencies: dict[Key, set[Key]] = {}
        dependents: dict[Key, set[Key]] = {}
        waiting: dict[Key, set[Key]] = {}
        waiting_data: dict[Key, set[Key]] = {}
        ready: set[Key] = set()
        stack = list(self._output_list)
        while stack:
            key = stack.pop()
            if key in dependencies:
                continue
            value = graph.get(key, _MISSING)
            if value is _MISSING:  # taskloom reports it before anything runs
                dependencies[key] = set()
                continue
            dependents.setdefault(key, set())
            if type(value) is Task:
                deps = {d for d in value.dependencies if d in graph}
            elif type(value) is Ref:
                deps = {value.key} if value.key in graph else set()
            else:
                dependencies[key] = set()
                cache[key] = value
                continue
            tasks.add(key)
            dependencies[key] = deps
            for d in deps:
                dependents.setdefault(d, set()).add(key)
                waiting_data.setdefault(d, set()).add(key)
                stack.append(d)
        for key in tasks:
            pending = {d for d in dependencies[key] if d in tasks}
            if pending:
                waiting[key] = pending
            else:
                ready.add(key)
        return {
            "dependencies": dependencies,
            "dependents": dependents,
            "waiting": waiting,
            "waiting_data": waiting_data,
            "cache": cache,
            "ready": ready,
            "running": set(),
            "finished": set(),
            "released": set(),
        }

    # -- taskloom's hooks ------------------------------------------------------------------------
    def _task_start(self, key: Key, worker: str) -> None:
        if key not in self._tasks:  # a task of another compute
            return
        with self._lock:
            state = self.state
            if key in state["ready"]:
                state["ready"].discard(key)
            else:  # handed out before its dependencies finished (a worker that runs in order)
                state["waiting"].pop(key, None)
            state["running"].add(key)
            for f in self._pretask:
                f(key, self.dsk, state)

    def _task_finish(self, key: Key, worker: str, duration: float, error: BaseException | None) -> None:
        if key not in self._tasks:
            return
        value = self.results.pop(key, _MISSING)
        with self._lock:
            state = self.state
            state["running"].discard(key)
            if error is not None:  # Dask calls no _posttask for a failed task
                return
            if value is not _MISSING:
                state["cache"][key] = value
            waiting, ready = state["waiting"], state["ready"]
            for dependent in state["dependents"].get(key, ()):
                pending = waiting.get(dependent)
                if pending is not None:
                    pending.discard(key)
                    if not pending:
                        del waiting[dependent]
                        ready.add(dependent)
            waiting_data, outputs = state["waiting_data"], self._outputs
            for dep in state["dependencies"][key]:
                users = waiting_data.get(dep)
                if users is not None:
                    users.discard(key)
                    if not users and dep not in outputs:
                        del waiting_data[dep]
                        state["released"].add(dep)
                        state["cache"].pop(dep, None)
            state["finished"].add(key)
            result = None if value is _MISSING else value
            for f in self._posttask:
                f(key, result, self.dsk, state, worker)
