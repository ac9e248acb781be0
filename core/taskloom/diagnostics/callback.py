"""``Callback``: observe computations through the diagnostics hooks, only while it is active.

A callback is active for a ``with`` block or between :meth:`Callback.register` and
:meth:`Callback.unregister`.  While active it is registered on the plugin manager as a small
per-instance hookimpl object that carries *only* the hooks the callback listens to -- the
methods a subclass overrides and the functions passed to the constructor.  The engine skips the
per-task hooks entirely when nothing implements them (see :func:`taskloom.local.task_events`),
so a callback that only watches whole computations adds nothing per task, and an inactive one
costs nothing at all.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace, TracebackType
from typing import Any, Self

from .. import plugins
from ..plugins import hookimpl

__all__ = ["Callback"]

StartFunc = Callable[[Mapping[Any, Any], Sequence[Any], str], object]
TaskStartFunc = Callable[[Any, str], object]
TaskFinishFunc = Callable[[Any, str, float, BaseException | None], object]
FinishFunc = Callable[[Sequence[Any], BaseException | None], object]

_METHODS = ("start", "task_start", "task_finish", "finish")
_lock = threading.Lock()  # guards every callback's registration state


class Callback:
    """Receive the events of every computation while active.

    Subclass and override any of :meth:`start`, :meth:`task_start`, :meth:`task_finish` and
    :meth:`finish`, or pass plain functions with the same parameters::

        class Counter(Callback):
            def __init__(self) -> None:
                self.n = 0

            def task_finish(self, key, worker, duration, error):
                self.n += 1

        with Counter() as counter:  # active for the block
            x.compute()

        timer = Callback(finish=lambda keys, error: print("done", keys))
        timer.register()  # active until unregistered
        ...
        timer.unregister()

    An active callback sees the computations of *every* thread of the process, and
    ``task_start``/``task_finish`` run on the scheduler's worker threads, possibly several at
    once, so they must be thread-safe.  Different callbacks may be active together and nest
    freely; one instance can be active only once at a time.

    Exceptions are not caught: an exception raised by a callback propagates out of the hook
    call, fails the computation and reaches the caller of ``compute``.  A callback that must
    never disturb a computation catches its own errors.
    """

    _relay: SimpleNamespace | None = None  # the registered hookimpl object while active

    def __init__(
        self,
        start: StartFunc | None = None,
        task_start: TaskStartFunc | None = None,
        task_finish: TaskFinishFunc | None = None,
        finish: FinishFunc | None = None,
    ) -> None:
        for name, func in zip(_METHODS, (start, task_start, task_finish, finish)):
            if func is not None:
                setattr(self, name, func)  # shadows the method, as an override does

    # -- the events; override the ones you need ------------------------------------------------

    def start(self, graph: Mapping[Any, Any], keys: Sequence[Any], scheduler: str) -> None:
        """A computation of the flat key list ``keys`` of ``graph`` starts on ``scheduler``."""

    def task_start(self, key: Any, worker: str) -> None:
        """Task ``key`` is about to run on ``worker``."""

    def task_finish(self, key: Any, worker: str, duration: float, error: BaseException | None) -> None:
        """Task ``key`` ran for ``duration`` seconds on ``worker``; ``error`` is what it raised."""

    def finish(self, keys: Sequence[Any], error: BaseException | None) -> None:
        """The computation of ``keys`` ended; ``error`` is what it failed with, or ``None``."""

    # -- activation ----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True while this callback is registered."""
        return self._relay is not None

    def register(self) -> None:
        """Activate this callback process-wide until :meth:`unregister`.

        :raises RuntimeError: if it is already active.
        """
        with _lock:
            if self._relay is not None:
                raise RuntimeError(
                    f"{type(self).__qualname__} callback {self!r} is already active; a callback "
                    f"instance can be active only once at a time (use a second instance to nest)"
                )
            relay = _relay_for(self._listeners())
            plugins.register(relay, name=f"taskloom.diagnostics:{type(self).__qualname__}@{id(relay):#x}")
            self._relay = relay

    def unregister(self) -> None:
        """Deactivate this callback; does nothing if it is not active."""
        with _lock:
            relay, self._relay = self._relay, None
            if relay is not None:
                plugins.unregister(relay)

    def __enter__(self) -> Self:
        self.register()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unregister()

    def _listeners(self) -> dict[str, Callable[..., object]]:
        """Method name -> callable, for the events this callback overrides or was given."""
        given = getattr(self, "__dict__", {})
        return {
            name: getattr(self, name)
            for name in _METHODS
            if name in given or getattr(type(self), name) is not getattr(Callback, name)
        }


def _relay_for(listeners: Mapping[str, Callable[..., object]]) -> SimpleNamespace:
    """A fresh hookimpl object implementing only the hooks behind ``listeners``."""
    relay = SimpleNamespace()
    if (on_start := listeners.get("start")) is not None:

        def taskloom_compute_start(graph: Mapping[Any, Any], keys: Sequence[Any], scheduler: str) -> None:
            on_start(graph, keys, scheduler)

        relay.taskloom_compute_start = hookimpl(taskloom_compute_start)
    if (on_task_start := listeners.get("task_start")) is not None:

        def taskloom_task_start(key: Any, worker: str) -> None:
            on_task_start(key, worker)

        relay.taskloom_task_start = hookimpl(taskloom_task_start)
    if (on_task_finish := listeners.get("task_finish")) is not None:
        if _takes_nbytes(on_task_finish):  # only then do schedulers measure result sizes

            def taskloom_task_finish(
                key: Any, worker: str, duration: float, error: BaseException | None, nbytes: int | None
            ) -> None:
                on_task_finish(key, worker, duration, error, nbytes=nbytes)

            relay.taskloom_task_finish = hookimpl(taskloom_task_finish)
        else:

            def taskloom_task_finish_(
                key: Any, worker: str, duration: float, error: BaseException | None
            ) -> None:
                on_task_finish(key, worker, duration, error)

            relay.taskloom_task_finish = hookimpl(specname="taskloom_task_finish")(taskloom_task_finish_)
    if (on_finish := listeners.get("finish")) is not None:

        def taskloom_compute_finish(keys: Sequence[Any], error: BaseException | None) -> None:
            on_finish(keys, error)

        relay.taskloom_compute_finish = hookimpl(taskloom_compute_finish)
    return relay


def _takes_nbytes(func: Callable[..., object]) -> bool:
    """Whether ``func`` accepts an ``nbytes`` keyword argument."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "nbytes" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
