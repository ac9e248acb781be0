"""The client's end of the scheduler stream: messages read and dispatched, requests and their replies."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from taskloom.errors import TaskloomError
from taskloom.graph import Key

from ..batched import BatchedSend
from ..comm import Comm, CommClosedError
from .futures import Future, FutureState
from .pickling import unpack_exception

logger = logging.getLogger("taskloom.distributed")


def _call_logged(fn: Callable[[Future], Any], future: Future) -> None:
    try:
        fn(future)
    except Exception:
        logger.exception("done callback %r of %r raised", fn, future)


class SchedulerStream:
    """What arrives from the scheduler, for :class:`~.client.Client` (a part of it, not used alone)."""

    # set up by Client.__init__
    status: str
    scheduler_address: str | None
    _states: dict[Key, FutureState]
    _lock: threading.RLock
    _releasing: dict[Key, int]
    _barriers: dict[int, list[Key]]
    _rids: Iterator[int]
    _replies: dict[int, asyncio.Future[Any]]
    _stream: BatchedSend | None
    _callback_pool: ThreadPoolExecutor | None
    _events: Any
    _aliases: dict[Key, Key]
    _quiet: set[Key]
    _errors: dict[Key, BaseException]
    _event_error: BaseException | None

    if TYPE_CHECKING:  # the other parts of the Client

        def _check_running(self) -> None: ...

        def _flush(self) -> None: ...

        def _barrier_passed(self, rid: int) -> None: ...

        def _keep_inline(self, value: Any) -> tuple[str, list[bytes]] | None: ...

        def _drop_inline(self, st: FutureState) -> None: ...

    async def _read_loop(self, comm: Comm) -> None:
        try:
            while True:
                for msg in await comm.read():
                    self._handle(msg)
        except CommClosedError:
            pass
        finally:
            if self.status == "running":
                self.status = "scheduler-lost"
                lost = TaskloomError(f"the scheduler at {self.scheduler_address} went away")
                with self._lock:
                    states = list(self._states.values())
                for st in states:
                    if not st.done():
                        st.error(lost, None)
                for fut in self._replies.values():
                    if not fut.done():
                        fut.set_exception(lost)

    def _handle(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "key-in-memory":
            key = msg["key"]
            st = self._states.get(key)
            if st is not None and key not in self._releasing:
                st.finish(msg.get("type", ""), msg.get("who_has"), self._keep_inline(msg.get("value")))
        elif op == "task-erred":
            key = msg["key"]
            st = self._states.get(key)
            if st is not None and key not in self._releasing:
                st.cause = msg.get("cause")
                st.error(msg.get("exception"), msg.get("traceback"))
        elif op == "reply":
            rid = msg["rid"]
            if rid in self._barriers:
                self._barrier_passed(rid)
            fut = self._replies.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif op == "task-event":
            self._task_event(msg)
        elif op == "task-retried":  # failed, and now running again (client.retry): pending again
            st = self._states.get(msg["key"])
            if st is not None and msg["key"] not in self._releasing:
                st.reset()
        elif op == "lost-data":  # its only holder died; it is being recomputed: pending again
            st = self._states.get(msg["key"])
            if st is not None and st.status == "finished":
                with st.lock:
                    st.status, st.who_has = "pending", None
                    self._drop_inline(st)
                    st.event = None  # threads that wait from now on wait for the recomputed result
        elif op == "graph-error":
            for key in msg["keys"]:
                st = self._states.get(key)
                if st is not None and key not in self._releasing:
                    st.error(TaskloomError(msg["error"]), None)

    async def _request(self, op: str, **kwargs: Any) -> Any:
        self._check_running()
        assert self._stream is not None
        self._flush()  # what was submitted before this request reaches the scheduler first
        rid = next(self._rids)
        fut = self._replies[rid] = asyncio.get_running_loop().create_future()
        self._stream.send({"op": op, "rid": rid, **kwargs})
        reply = await fut
        if "error" in reply:
            raise TaskloomError(f"the scheduler could not {op}: {reply['error']}")
        return reply["result"]

    def _task_event(self, msg: dict[str, Any]) -> None:
        """A task finished or failed: the diagnostics hooks of the observed compute fire here."""
        events = self._events
        if events is None or msg["key"] in self._quiet:
            return
        key = self._aliases.get(msg["key"], msg["key"])
        error = msg.get("error")
        try:
            if error is not None:
                error = self._errors.get(msg["key"]) or unpack_exception(error, None, key)
                self._errors[msg["key"]] = error
            if events.start is not None:
                events.start(key=key, worker=msg["worker"])
            if events.finish is not None:
                nbytes = None if error is not None else msg.get("nbytes")
                worker, duration = msg["worker"], msg["duration"]
                events.finish(key=key, worker=worker, duration=duration, error=error, nbytes=nbytes)
        except BaseException as exc:  # a callback's error reaches the caller of the compute
            if self._event_error is None:
                self._event_error = exc

    def _run_callback(self, fn: Callable[[Future], Any], future: Future) -> None:
        """Run a user's done callback on the client's callback thread (errors are logged)."""
        pool = self._callback_pool
        if pool is None:
            with self._lock:
                if self._callback_pool is None:
                    self._callback_pool = ThreadPoolExecutor(1, thread_name_prefix="taskloom-client-callback")
                pool = self._callback_pool
        try:
            pool.submit(_call_logged, fn, future)
        except RuntimeError:  # the client closed: run it here rather than drop it
            _call_logged(fn, future)
