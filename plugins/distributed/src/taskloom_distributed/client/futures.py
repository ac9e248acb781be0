"""Futures: a handle on a remote result, kept alive on the cluster while a Future refers to it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client


class CancelledError(Exception):
    """The future was cancelled before it finished."""


class FutureState:
    """The client's knowledge of one key: pending, finished, error or cancelled."""

    __slots__ = ("callbacks", "cause", "event", "exception", "key", "status", "traceback", "type", "waiters")

    def __init__(self, key: Any) -> None:
        self.key = key
        self.status = "pending"
        self.event = threading.Event()
        self.exception: Any = None
        self.traceback: Any = None
        self.cause: Any = None  # the key whose failure this one inherits
        self.type = ""
        self.callbacks: list[Callable[[], None]] = []
        self.waiters: list[asyncio.Future[None]] = []

    def _set(self, status: str) -> None:
        self.status = status
        self.event.set()
        for w in self.waiters:
            if not w.done():
                w.get_loop().call_soon_threadsafe(_resolve, w)
        self.waiters.clear()
        callbacks, self.callbacks = self.callbacks, []
        for cb in callbacks:
            cb()

    def finish(self, type_name: str = "") -> None:
        self.type = type_name
        self._set("finished")

    def error(self, exception: Any, traceback: Any) -> None:
        self.exception, self.traceback = exception, traceback
        self._set("error")

    def cancel(self) -> None:
        self._set("cancelled")

    def reset(self) -> None:
        self.status = "pending"
        self.event.clear()

    def done(self) -> bool:
        return self.status != "pending"


def _resolve(w: asyncio.Future[None]) -> None:
    if not w.done():
        w.set_result(None)


class Future:
    """A remote computation's result: ``result()``, ``exception()``, ``cancel()``, ``await``."""

    def __init__(self, key: Any, client: Client) -> None:
        self.key = key
        self.client = client
        self._state = client._state_of(key)
        self._released = False
        client._inc_ref(key)

    def release(self) -> None:
        """Drop this future's hold on the result now, rather than when it is garbage-collected."""
        if not self._released:
            self._released = True
            self.client._dec_ref(self.key)

    @property
    def status(self) -> str:
        return self._state.status

    def done(self) -> bool:
        return self._state.done()

    def result(self, timeout: float | None = None) -> Any:
        """The value, once computed (raises the task's exception if it failed)."""
        return self.client._gather_sync([self], timeout=timeout)[0]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's exception, or None if it succeeded."""
        self._wait(timeout)
        if self._state.status == "error":
            return self.client._exception_of(self._state)
        return None

    def traceback(self, timeout: float | None = None) -> str | None:
        """The remote traceback text of a failed task."""
        self._wait(timeout)
        tb = self._state.traceback
        return None if tb is None else str(tb)

    def _wait(self, timeout: float | None) -> None:
        if not self._state.event.wait(timeout):
            raise TimeoutError(f"future {self.key!r} did not finish within {timeout} s")
        if self._state.status == "cancelled":
            raise CancelledError(f"future {self.key!r} was cancelled")

    def cancel(self) -> None:
        """Stop computing this key (if nothing else needs it) and mark the future cancelled."""
        self.client._cancel([self])

    def cancelled(self) -> bool:
        return self._state.status == "cancelled"

    def add_done_callback(self, fn: Callable[[Future], None]) -> None:
        """Call ``fn(self)`` when the future finishes (at once if it has)."""

        def call() -> None:
            fn(self)

        if self._state.done():
            call()
        else:
            self._state.callbacks.append(call)

    def __await__(self) -> Any:
        return self.client._gather_async([self]).__await__()

    def __repr__(self) -> str:
        return f"<Future {self.key!r} {self.status}>"

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a Future cannot be pickled; pass it as an argument to submit() instead")
