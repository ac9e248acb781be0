"""``client.get_executor()``: a ``concurrent.futures.Executor`` that runs calls on the cluster.

Each call becomes a task; its ``concurrent.futures.Future`` is completed when the task is:
finished results are fetched in batches on the client's loop (one request per worker for all
that finished together), so ``concurrent.futures.wait`` / ``as_completed`` and ``map`` work as
with any executor.  Cancelling such a future while the task is pending or running releases the
task on the cluster.  The task's result is held by the ``concurrent.futures.Future`` only: the
cluster forgets it once it has been delivered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from taskloom.errors import TaskloomError

from .futures import Future

if TYPE_CHECKING:
    from .client import Client

_ALLOWED = ("pure", "retries")


class ClientExecutor(cf.Executor):
    """An Executor backed by a :class:`Client`; ``submit_kwargs`` (``pure``, ``retries``) apply
    to every call.  ``shutdown()`` leaves the client open."""

    def __init__(self, client: Client, **submit_kwargs: Any) -> None:
        unknown = sorted(set(submit_kwargs) - set(_ALLOWED))
        if unknown:
            raise TypeError(
                f"get_executor() got unknown option(s) {', '.join(unknown)}; it accepts {', '.join(_ALLOWED)}"
            )
        self._client = client
        self._kwargs = {"pure": False, **submit_kwargs}
        self._lock = threading.Lock()
        self._shutdown = False
        self._remote: dict[cf.Future[Any], Future] = {}  # not yet delivered
        self._to_deliver: list[tuple[cf.Future[Any], Future]] = []
        self._delivering = False

    # -- the Executor API ----------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Run ``fn(*args, **kwargs)`` on the cluster."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        remote = self._client._submit(fn, args, kwargs, **self._kwargs)
        return self._wrap(remote)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """``fn`` over zipped ``iterables``, submitted together; results in order.

        ``timeout`` counts from this call: a result not ready by then raises TimeoutError.
        """
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        end = None if timeout is None else time.monotonic() + timeout
        futures = [self._wrap(r) for r in self._client._map(fn, iterables, {}, **self._kwargs)]

        def results() -> Iterator[Any]:
            try:
                futures.reverse()
                while futures:
                    f = futures.pop()
                    try:
                        yield f.result() if end is None else f.result(end - time.monotonic())
                    except BaseException:
                        f.cancel()  # timed out (or the consumer stopped): it is not wanted any more
                        raise
            finally:
                for f in futures:
                    f.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more calls; ``cancel_futures`` cancels what has not finished, ``wait``
        waits for the rest.  The client stays open."""
        with self._lock:
            self._shutdown = True
            pending = list(self._remote)
        if cancel_futures:
            for f in pending:
                f.cancel()
        if wait:
            cf.wait(pending)

    # -- plumbing ------------------------------------------------------------------------------------
    def _wrap(self, remote: Future) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        with self._lock:
            self._remote[future] = remote
        future.add_done_callback(self._on_local_done)

        def remote_done() -> None:
            self._queue_delivery(future, remote)

        if not remote._state.add_callback(remote_done):
            remote_done()
        return future

    def _on_local_done(self, future: cf.Future[Any]) -> None:
        """Our future is done: delivered, or cancelled by the user (then cancel the task too)."""
        with self._lock:
            remote = self._remote.pop(future, None)
        if future.cancelled():
            try:
                future.set_running_or_notify_cancel()  # wakes concurrent.futures.wait()
            except RuntimeError:
                pass
            if remote is not None and not remote.done():
                remote.cancel()
        if remote is not None:
            remote.release()

    def _queue_delivery(self, future: cf.Future[Any], remote: Future) -> None:
        with self._lock:
            self._to_deliver.append((future, remote))
            if self._delivering:
                return
            self._delivering = True
        loop = self._client.loop
        assert loop is not None
        loop.call_soon_threadsafe(self._start_delivery, loop)

    def _start_delivery(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.create_task(self._deliver())

    async def _deliver(self) -> None:
        """Complete every future whose task is done, fetching finished results together."""
        while True:
            with self._lock:
                batch, self._to_deliver = self._to_deliver, []
                if not batch:
                    self._delivering = False
                    return
            finished = [(f, r) for f, r in batch if r.status == "finished" and not f.done()]
            values: dict[Any, Any] = {}
            fetch_error: BaseException | None = None
            if finished:
                try:
                    values = await self._client._gather_values([r for _, r in finished], errors="skip")
                except Exception as exc:  # e.g. a result that cannot be unpickled here
                    fetch_error = exc
            for future, remote in batch:
                _complete(future, remote, values, fetch_error)


def _complete(
    future: cf.Future[Any], remote: Future, values: dict[Any, Any], fetch_error: BaseException | None
) -> None:
    if future.done():
        return
    status = remote.status
    try:
        if status == "finished" and remote.key in values:
            future.set_result(values[remote.key])
        elif status == "finished":
            future.set_exception(fetch_error or TaskloomError(f"the result of {remote.key!r} was lost"))
        elif status == "cancelled":
            future.cancel()
        else:
            future.set_exception(remote.client._exception_of(remote._state))
    except cf.InvalidStateError:  # cancelled by the user meanwhile
        pass
