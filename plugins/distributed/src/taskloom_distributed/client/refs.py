"""What a client holds: a state per key, counted references, and messages queued for the scheduler.

Every Future of a key shares the key's :class:`FutureState`; the client keeps the key on the
cluster while any Future refers to it.  Releases are counted on the client's loop in batches
(dropping ten thousand futures costs no lock each) and sent in order with everything else that
is queued in the outbox: a burst of calls costs one wake-up of the loop and one write.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from taskloom.graph import Key

from ..batched import BatchedSend
from ..comm import CommClosedError
from .futures import Future, FutureState
from .graphs import collect_futures

if TYPE_CHECKING:
    from .client import Client


class KeyRefs:
    """The key bookkeeping and outbox of :class:`~.client.Client` (a part of it, not used alone)."""

    # set up by Client.__init__
    status: str
    asynchronous: bool
    loop: asyncio.AbstractEventLoop | None
    _states: dict[Key, FutureState]
    _lock: threading.RLock
    _outbox: deque[dict[str, Any]]
    _unheld: deque[FutureState]  # released by Futures, not yet counted
    _releasing: dict[Key, int]  # key -> barrier after its release (see _queue_release)
    _barriers: dict[int, list[Key]]
    _flush_scheduled: bool
    _stream: BatchedSend | None
    _rids: Iterator[int]

    if TYPE_CHECKING:  # in Results

        def _drop_inline(self, st: FutureState) -> None: ...

    def _post(self, msg: dict[str, Any]) -> None:
        """Queue ``msg`` for the scheduler; from any thread, in order, batched per loop turn."""
        self._outbox.append(msg)
        self._wake_flush()

    def _wake_flush(self) -> None:
        if self._flush_scheduled:
            return
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        self._flush_scheduled = True
        try:
            loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop closed meanwhile
            self._flush_scheduled = False

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._unheld:
            self._release_unheld()
        outbox = self._outbox
        msgs = []
        while outbox:
            msgs.append(outbox.popleft())
        if msgs and self._stream is not None:
            try:
                self._stream.send(*msgs)
            except CommClosedError:
                pass

    def _hold(self, key: Key, new: set[Key] | None = None) -> FutureState:
        """The state of ``key``, held once more (a fresh one if the last run failed or was
        cancelled); the key goes into ``new`` when the client did not hold it already."""
        with self._lock:
            st = self._states.get(key)
            if st is None or st.status in ("error", "cancelled"):
                st = self._states[key] = FutureState(key, self._lock)
                if new is not None:
                    new.add(key)
            st.refcount += 1
            return st

    def _unhold(self, st: FutureState) -> None:
        """A Future of ``st`` was released (from any thread, often the garbage collector): counted
        on the loop, in batches, so dropping many futures costs no lock each."""
        self._unheld.append(st)
        self._wake_flush()

    def _release_unheld(self) -> None:
        released = []
        unheld = self._unheld
        with self._lock:
            while unheld:
                st = unheld.popleft()
                st.refcount -= 1
                if st.refcount <= 0 and self._states.get(st.key) is st:
                    del self._states[st.key]
                    released.append(st.key)
                    self._drop_inline(st)
            if released:
                self._queue_release(released)

    def _queue_release(self, keys: list[Key]) -> None:
        """Tell the scheduler the client no longer wants ``keys`` (the caller holds the lock).

        News about these keys that the scheduler sent before it handled the release is stale: a
        Future made meanwhile for the same key must not take it (the result it announces is being
        dropped).  A barrier request follows the release; until its reply arrives, such news is
        ignored.
        """
        if self.status != "running":
            return
        rid = next(self._rids)
        self._outbox.append({"op": "release-keys", "keys": keys})
        self._outbox.append({"op": "who-has", "keys": [], "rid": rid})
        self._barriers[rid] = keys
        for k in keys:
            self._releasing[k] = rid

    def _barrier_passed(self, rid: int) -> None:
        with self._lock:
            for k in self._barriers.pop(rid, ()):
                if self._releasing.get(k) == rid:
                    del self._releasing[k]

    def _futures(self, keys: list[Key], new: set[Key] | None = None) -> list[Future]:
        """One Future per key (repeats allowed), taking the state lock once; keys the client did
        not hold yet go into ``new``."""
        with self._lock:
            states = [self._hold(k, new) for k in keys]
        client = cast("Client", self)
        return [Future(k, client, st) for k, st in zip(keys, states)]

    def cancel(self, futures: Any) -> Any:
        """Cancel futures (a Future or a nesting of them): their tasks are released on the cluster
        and ``result()`` raises :class:`CancelledError`."""
        flat: list[Future] = []
        collect_futures(futures, flat)
        keys = []
        with self._lock:
            for f in flat:
                if self._states.get(f.key) is f._state:
                    del self._states[f.key]
                    keys.append(f.key)
                    self._drop_inline(f._state)
            if keys:
                self._queue_release(keys)
        self._wake_flush()
        for f in flat:
            f._state.cancel()
        return _done_awaitable() if self.asynchronous else None


def _done_awaitable() -> asyncio.Future[None] | None:
    """An awaitable that is already done (so ``await client.cancel(f)`` works), if in a loop."""
    try:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    except RuntimeError:
        return None
    fut.set_result(None)
    return fut
