"""``as_completed``: futures in the order they finish, while more can be added to the set."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from .futures import CancelledError, Future, wake
from .wait import as_future_list


class as_completed:
    """Iterate over futures as they finish (``for f in as_completed(futures)``).

    Futures can be added while iterating (:meth:`add`, :meth:`update`); a future added twice is
    yielded twice.  ``with_results=True`` yields ``(future, result)`` pairs; a failed or
    cancelled future then raises its exception from the iteration, or with
    ``raise_errors=False`` yields ``(future, exception)``.  :meth:`batches` yields lists of
    everything that finished since the previous batch.  With an asynchronous client, use
    ``async for``.
    """

    def __init__(
        self, futures: Iterable[Future] | None = None, with_results: bool = False, raise_errors: bool = True
    ) -> None:
        self.with_results = with_results
        self.raise_errors = raise_errors
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[Future, int] = {}  # future -> times added and not yet finished
        self._npending = 0
        self._queue: deque[Future] = deque()
        self._waiter: asyncio.Future[None] | None = None
        if futures is not None:
            self.update(futures)

    # -- the set -------------------------------------------------------------------------------
    def add(self, future: Future) -> None:
        """Add a future; it is yielded once it is done (at the next step if it already is)."""
        [future] = as_future_list(future, "as_completed")
        with self._cond:
            self._pending[future] = self._pending.get(future, 0) + 1
            self._npending += 1
        done = functools.partial(self._done, future)
        if not future._state.add_callback(done):
            done()

    def update(self, futures: Iterable[Future]) -> None:
        """Add several futures."""
        for f in as_future_list(futures, "as_completed"):
            self.add(f)

    def _done(self, future: Future) -> None:
        with self._cond:
            n = self._pending.get(future)
            if n is None:  # cleared meanwhile
                return
            if n > 1:
                self._pending[future] = n - 1
            else:
                del self._pending[future]
            self._npending -= 1
            self._queue.append(future)
            self._cond.notify_all()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            wake(waiter)

    def count(self) -> int:
        """How many futures are still to be yielded (pending or ready)."""
        with self._cond:
            return self._npending + len(self._queue)

    def is_empty(self) -> bool:
        return self.count() == 0

    def has_ready(self) -> bool:
        """Whether a future is done and waiting to be yielded."""
        return bool(self._queue)

    def clear(self) -> None:
        """Forget every future, pending or ready."""
        with self._cond:
            self._pending.clear()
            self._npending = 0
            self._queue.clear()

    # -- synchronous iteration ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        with self._cond:
            self._cond.wait_for(lambda: self._queue or not self._npending)
            if not self._queue:
                raise StopIteration
            future = self._queue.popleft()
        if not self.with_results:
            return future
        return self._outcome(future, lambda f: f.result())

    def next_batch(self, block: bool = True) -> list[Any]:
        """Everything done now (with ``block``, waiting for at least one; StopIteration when
        nothing is left)."""
        with self._cond:
            if block:
                self._cond.wait_for(lambda: self._queue or not self._npending)
                if not self._queue:
                    raise StopIteration
            batch = list(self._queue)
            self._queue.clear()
        if not self.with_results:
            return batch
        return self._with_results(batch)

    def batches(self) -> Iterator[list[Any]]:
        """Lists of futures (or ``(future, result)`` pairs) as they finish, until none is left."""
        while True:
            try:
                yield self.next_batch(block=True)
            except StopIteration:
                return

    def _outcome(self, future: Future, value_of: Any) -> Any:
        status = future.status
        if status == "finished":
            return future, value_of(future)
        exc: BaseException = (
            CancelledError(future.key)
            if status == "cancelled"
            else future.client._exception_of(future._state)
        )
        if self.raise_errors:
            raise exc
        return future, exc

    def _with_results(self, batch: list[Future]) -> list[Any]:
        """``(future, result)`` for a batch, gathered together; on a failure (``raise_errors``)
        what finished before it is returned and the rest goes back to the front of the queue."""
        if self.raise_errors:
            bad = next((i for i, f in enumerate(batch) if f.status != "finished"), None)
            if bad is not None:
                with self._cond:
                    self._queue.extendleft(reversed(batch[bad + (bad == 0) :]))
                if bad == 0:
                    self._outcome(batch[0], None)  # raises
                batch = batch[:bad]
        finished = [f for f in batch if f.status == "finished"]
        values: dict[Any, Any] = {}
        by_client: dict[int, list[Future]] = {}
        for f in finished:
            by_client.setdefault(id(f.client), []).append(f)
        for group in by_client.values():
            values.update(zip([f.key for f in group], group[0].client.gather(group)))
        return [self._outcome(f, lambda f: values[f.key]) for f in batch]

    # -- asynchronous iteration --------------------------------------------------------------------
    def __aiter__(self) -> as_completed:
        return self

    async def __anext__(self) -> Any:
        while True:
            with self._cond:
                if self._queue:
                    future = self._queue.popleft()
                    break
                if not self._npending:
                    raise StopAsyncIteration
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter
        if not self.with_results:
            return future
        if future.status == "finished":
            return future, await future
        return self._outcome(future, None)

    def __repr__(self) -> str:
        return f"<as_completed: waiting={self._npending} ready={len(self._queue)}>"
