"""Futures: a handle on a remote result, kept alive on the cluster while a Future refers to it.

A :class:`FutureState` is the client's knowledge of one key, shared by every Future of that key.
It changes on the client's event loop when the scheduler reports (or on the caller's thread for
``cancel``); whoever waits on it registers a callback (``wait``, ``as_completed``, ``gather``,
the executor) instead of holding a lock or an event per future.  User callbacks
(:meth:`Future.add_done_callback`) run on the client's callback thread, never on its event loop.
"""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client


class CancelledError(concurrent.futures.CancelledError):
    """The future was cancelled before it finished; ``key`` names it."""

    def __init__(self, key: Any, reason: str = "") -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"future {key!r} was cancelled" + (f": {reason}" if reason else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.reason))


class Gate:
    """A one-shot ``threading.Event`` for threads waiting on a future: a bare lock, held until
    :meth:`open` (several times cheaper to make, open and pass than an Event).  Every waiter
    passes once it is open; to wait for something else, make a new one."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def open(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # open already
            pass

    def wait(self, timeout: float | None = None) -> bool:
        """Block until open (False if ``timeout`` seconds passed first)."""
        if not self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            return False
        try:  # let the next waiter through
            self._lock.release()
        except RuntimeError:  # opened again meanwhile: open either way
            pass
        return True


class FutureState:
    """The client's knowledge of one key: pending, finished, error or cancelled.

    ``lock`` is the client's state lock: it orders status changes against callback
    registration, so a callback is never lost to a concurrent finish.
    """

    __slots__ = (
        "callbacks",
        "cause",
        "event",
        "exception",
        "key",
        "lock",
        "refcount",
        "status",
        "traceback",
        "type",
        "value",
        "who_has",
    )

    def __init__(self, key: Any, lock: threading.RLock) -> None:
        self.key = key
        self.lock = lock
        self.status = "pending"
        self.event: Gate | None = None  # made by the first thread that blocks on it
        self.exception: Any = None
        self.traceback: Any = None
        self.cause: Any = None  # the key whose failure this one inherits
        self.type = ""
        self.who_has: list[str] | None = None  # workers that hold the result, when the scheduler said
        self.refcount = 0
        self.callbacks: list[Callable[[], None]] = []
        # the result itself, (serializer name, frames), when it came with the news (small results)
        self.value: tuple[str, list[bytes]] | None = None

    def _set(self, status: str) -> None:
        with self.lock:
            self.status = status
            callbacks, self.callbacks = self.callbacks, []
        event = self.event
        if event is not None:
            event.open()
        for cb in callbacks:
            cb()

    def finish(
        self,
        type_name: str = "",
        who_has: list[str] | None = None,
        value: tuple[str, list[bytes]] | None = None,
    ) -> None:
        self.type = type_name
        self.who_has = who_has
        self.value = value
        self._set("finished")

    def error(self, exception: Any, traceback: Any) -> None:
        self.exception, self.traceback = exception, traceback
        self._set("error")

    def cancel(self) -> None:
        self._set("cancelled")

    def reset(self) -> None:
        """A failed key runs again (``retry``): pending, its error forgotten."""
        with self.lock:
            if self.status != "error":
                return
            self.status = "pending"
            self.exception = self.traceback = self.cause = None
            self.event = None  # threads that wait from now on wait for the next outcome

    def done(self) -> bool:
        return self.status != "pending"

    def add_callback(self, cb: Callable[[], None]) -> bool:
        """Call ``cb()`` (on the thread that changes the state) when done; False if done already."""
        with self.lock:
            if self.status != "pending":
                return False
            self.callbacks.append(cb)
            return True

    def discard_callback(self, cb: Callable[[], None]) -> None:
        with self.lock:
            try:
                self.callbacks.remove(cb)
            except ValueError:
                pass

    def wait(self, timeout: float | None) -> bool:
        """Block this thread until done (False if ``timeout`` seconds passed first)."""
        if self.status != "pending":
            return True
        with self.lock:
            if self.event is None:
                self.event = Gate()
            if self.status != "pending":
                return True
            event = self.event
        return event.wait(timeout)

    async def wait_async(self) -> None:
        """Wait on the running event loop until done."""
        if self.status != "pending":
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if self.add_callback(lambda: wake(waiter)):
            await waiter


def wake(waiter: asyncio.Future[Any], result: Any = None) -> None:
    """Resolve ``waiter`` from any thread (at once when called on its own loop)."""
    loop = waiter.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        if not waiter.done():
            waiter.set_result(result)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(_resolve, waiter, result)


def _resolve(waiter: asyncio.Future[Any], result: Any) -> None:
    if not waiter.done():
        waiter.set_result(result)


async def wait_states(states: list[FutureState], stop_on_error: bool = False) -> None:
    """Wait on the running loop until every state is done (or, ``stop_on_error``, one failed)."""
    pending = [st for st in states if st.status == "pending"]
    if not pending:
        return
    if stop_on_error and any(st.status in ("error", "cancelled") for st in states):
        return
    waiter = asyncio.get_running_loop().create_future()
    lock = threading.Lock()
    remaining = [len(pending)]

    def one_done(st: FutureState) -> None:
        with lock:
            remaining[0] -= 1
            over = remaining[0] == 0 or (stop_on_error and st.status != "finished")
        if over:
            wake(waiter)

    registered = []
    for st in pending:
        cb = functools.partial(one_done, st)
        if st.add_callback(cb):
            registered.append((st, cb))
        else:
            one_done(st)
    try:
        await waiter
    finally:
        if not waiter.done() or waiter.cancelled() or remaining[0] > 0:
            for st, cb in registered:
                if st.status == "pending":
                    st.discard_callback(cb)


LIVE: set[int] = set()  # ids of the Future objects in this process (none: no graph holds one)


class Future:
    """A remote computation's result: ``result()``, ``exception()``, ``cancel()``, ``await``.

    With an asynchronous client, ``result``, ``exception`` and ``traceback`` return awaitables
    (and ``await future`` is its result).
    """

    __slots__ = ("__weakref__", "_released", "_state", "client", "key")

    def __init__(self, key: Any, client: Client, state: FutureState | None = None) -> None:
        LIVE.add(id(self))
        self.key = key
        self.client = client
        self._state = state if state is not None else client._hold(key)
        self._released = False

    def release(self) -> None:
        """Drop this future's hold on the result now, rather than when it is garbage-collected."""
        if not self._released:
            self._released = True
            self.client._unhold(self._state)

    @property
    def status(self) -> str:
        """``"pending"``, ``"finished"``, ``"error"`` or ``"cancelled"``."""
        return self._state.status

    @property
    def type(self) -> str:
        """The type name of the result, once finished (``""`` before)."""
        return self._state.type

    def done(self) -> bool:
        """Whether the future finished, failed or was cancelled (does not wait)."""
        return self._state.done()

    def cancelled(self) -> bool:
        return self._state.status == "cancelled"

    def result(self, timeout: float | None = None) -> Any:
        """The value, once computed: raises the task's exception if it failed, ``CancelledError`` if
        it was cancelled, ``TimeoutError`` if ``timeout`` seconds pass first."""
        return self.client._result(self, timeout)

    def exception(self, timeout: float | None = None) -> Any:
        """The task's exception, or None if it succeeded (waits up to ``timeout`` seconds)."""
        if self.client.asynchronous:
            return self._async_outcome(timeout, self._exception_now)
        self._wait(timeout)
        return self._exception_now()

    def traceback(self, timeout: float | None = None) -> Any:
        """The remote traceback of a failed task, as a traceback object (None if it succeeded).

        Its frames are the worker's: ``traceback.format_tb(future.traceback())`` shows where the
        task raised.
        """
        if self.client.asynchronous:
            return self._async_outcome(timeout, self._traceback_now)
        self._wait(timeout)
        return self._traceback_now()

    def _exception_now(self) -> BaseException | None:
        if self._state.status == "error":
            return self.client._exception_of(self._state)
        return None

    def _traceback_now(self) -> TracebackType | None:
        if self._state.status != "error" or not self._state.traceback:
            return None
        from .pickling import remote_traceback

        return remote_traceback(str(self._state.traceback))

    def _wait(self, timeout: float | None) -> None:
        if not self._state.wait(timeout):
            raise TimeoutError(f"future {self.key!r} did not finish within {timeout} s")
        if self._state.status == "cancelled":
            raise CancelledError(self.key)

    async def _async_outcome(self, timeout: float | None, outcome: Callable[[], Any]) -> Any:
        try:
            await asyncio.wait_for(self._state.wait_async(), timeout)
        except TimeoutError:
            raise TimeoutError(f"future {self.key!r} did not finish within {timeout} s") from None
        if self._state.status == "cancelled":
            raise CancelledError(self.key)
        return outcome()

    def cancel(self) -> None:
        """Mark the future cancelled and release its task on the cluster (unless other futures
        of this client still hold the key).  ``result()`` then raises :class:`CancelledError`."""
        self.client.cancel([self])

    def retry(self) -> Any:
        """Run this failed task again, in place (see :meth:`Client.retry`): this future is
        pending until the new outcome; a future that did not fail is left as it is."""
        return self.client.retry([self])

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(self)`` on the client's callback thread when the future is done (at once if
        it is).  An exception in ``fn`` is logged on the ``taskloom.distributed`` logger."""
        client = self.client

        def call() -> None:
            client._run_callback(fn, self)

        if not self._state.add_callback(call):
            call()

    def __await__(self) -> Any:
        return self.client._result_async(self).__await__()

    def __taskloom_tokenize__(self) -> Any:
        return ("future", self.key)

    def __repr__(self) -> str:
        extra = f", type: {self.type}" if self.type else ""
        return f"<Future: {self.status}{extra}, key: {self.key!r}>"

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass
        LIVE.discard(id(self))

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a Future cannot be pickled; pass it as an argument to submit() instead")
