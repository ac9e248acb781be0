"""``wait``: block until futures are done -- all of them, the first one, or the first failure."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterable
from typing import Any, NamedTuple

from .futures import Future, FutureState, wake

ALL_COMPLETED = "ALL_COMPLETED"
FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
_RETURN_WHEN = (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION)


class DoneAndNotDoneFutures(NamedTuple):
    """What :func:`wait` returns: the futures that are done and those that are not."""

    done: set[Future]
    not_done: set[Future]


def as_future_list(futures: Any, what: str) -> list[Future]:
    """A Future or an iterable of them, as a list; anything else is a TypeError naming it."""
    items = [futures] if isinstance(futures, Future) else list(futures)
    for f in items:
        if not isinstance(f, Future):
            raise TypeError(f"{what} takes taskloom Futures, got {type(f).__name__}: {f!r}")
    return items


class _Until:
    """Counts states as they finish; fires once ``return_when`` is met."""

    def __init__(self, states: Iterable[FutureState], return_when: str) -> None:
        unique = {id(st): st for st in states}.values()
        self.return_when = return_when
        self.pending = [st for st in unique if st.status == "pending"]
        self.remaining = len(self.pending)
        self.lock = threading.Lock()
        self.fire: Any = None  # set by the caller before arm()
        self.callbacks: list[tuple[FutureState, Any]] = []
        done = len(unique) - self.remaining
        self.met = (
            self.remaining == 0
            or (return_when == FIRST_COMPLETED and done > 0)
            or (return_when == FIRST_EXCEPTION and any(st.status == "error" for st in unique))
        )

    def _one(self, st: FutureState) -> None:
        with self.lock:
            self.remaining -= 1
            hit = (
                self.remaining == 0
                or self.return_when == FIRST_COMPLETED
                or (self.return_when == FIRST_EXCEPTION and st.status == "error")
            )
            fire = hit and not self.met
            self.met = self.met or hit
        if fire:
            self.fire()

    def arm(self) -> None:
        for st in self.pending:
            cb = functools.partial(self._one, st)
            if st.add_callback(cb):
                self.callbacks.append((st, cb))
            else:
                cb()

    def disarm(self) -> None:
        for st, cb in self.callbacks:
            if st.status == "pending":
                st.discard_callback(cb)


def _split(futures: list[Future]) -> DoneAndNotDoneFutures:
    done = {f for f in futures if f.done()}
    return DoneAndNotDoneFutures(done, {f for f in futures if f not in done})


def _timeout_error(futures: list[Future], timeout: float | None) -> TimeoutError:
    pending = sum(1 for f in futures if not f.done())
    return TimeoutError(f"{pending} of {len(futures)} futures were still pending after {timeout} s")


def wait(futures: Any, timeout: float | None = None, return_when: str = ALL_COMPLETED) -> Any:
    """Wait until the futures are done; return ``(done, not_done)`` sets.

    ``return_when``: ``"ALL_COMPLETED"`` (the default), ``"FIRST_COMPLETED"`` or
    ``"FIRST_EXCEPTION"`` (the first failure, else all).  After ``timeout`` seconds a
    ``TimeoutError`` says how many were still pending.  With an asynchronous client,
    ``await wait(...)``.
    """
    if return_when not in _RETURN_WHEN:
        raise ValueError(f"return_when must be one of {', '.join(_RETURN_WHEN)}, not {return_when!r}")
    items = as_future_list(futures, "wait")
    until = _Until([f._state for f in items], return_when)
    if items and items[0].client.asynchronous:
        return _wait_async(items, until, timeout)
    if not until.met:
        event = threading.Event()
        until.fire = event.set
        until.arm()
        try:
            if not event.wait(timeout):
                raise _timeout_error(items, timeout)
        finally:
            until.disarm()
    return _split(items)


async def _wait_async(items: list[Future], until: _Until, timeout: float | None) -> DoneAndNotDoneFutures:
    if not until.met:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        until.fire = lambda: wake(waiter)
        until.arm()
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise _timeout_error(items, timeout) from None
        finally:
            until.disarm()
    return _split(items)
