"""A stream of messages to one peer, sent in batches: everything queued meanwhile goes in one write."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from .comm import Comm, CommClosedError, dumps

logger = logging.getLogger("taskloom.distributed")

# sub-millisecond intervals need a clock finer than uvloop's loop.time() (whole milliseconds)
_clock = time.perf_counter


class BatchedSend:
    """Queue messages with :meth:`send`; a background task writes them as one list per write.

    Messages produced while handling one event (or while the previous write was in flight) share
    a write, so per-task messages cost a fraction of a round trip.  ``interval`` (seconds): a
    message queued sooner than that after the last write waits until then, with whatever else
    comes meanwhile (a stream of task results becomes a few writes); one after a quiet spell goes
    at once, so a lone request pays no delay.
    """

    def __init__(self, comm: Comm, interval: float = 0.0) -> None:
        self.comm = comm
        # an in-process peer (comm.inproc) takes a batch at once, with no write to wait for
        self._direct: Callable[[Any], int] | None = getattr(comm, "send_nowait", None)
        # with an interval, the first batch after a quiet spell is written at once, from send()
        self._now: Callable[[list[Any]], bool] | None = (
            getattr(comm, "write_frames_nowait", None) if interval else None
        )
        self._writing = False  # the background task is writing a batch
        self.buffer: list[Any] = []
        self.interval = interval
        self.writes = 0  # writes so far (each a batch of messages)
        self._last = 0.0  # when the last write was (time.perf_counter)
        self._wake = asyncio.Event()
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self.task = self._loop.create_task(self._run())

    def send(self, *msgs: Any) -> None:
        if self._closed:
            raise CommClosedError(f"batched stream to {self.comm.peer} is closed")
        if self._direct is not None:
            self._send_direct(list(msgs))
            return
        if (
            self._now is not None
            and not self.buffer
            and not self._writing
            and _clock() - self._last >= self.interval
            and self._write_now(list(msgs))
        ):
            return
        self.buffer.extend(msgs)
        self._wake.set()

    def _write_now(self, batch: list[Any]) -> bool:
        """Write ``batch`` without waiting for the background task; False if the connection
        cannot take it at once (a large frame, a full buffer, a write under way)."""
        assert self._now is not None
        try:
            frames = dumps(batch)
        except Exception:  # as in _run
            logger.exception("batched stream to %s failed", self.comm.peer)
            self._closed = True
            self.comm.close()
            return True
        if not self._now(frames):
            return False
        self.writes += 1
        self._last = _clock()
        return True

    def _send_direct(self, batch: list[Any]) -> None:
        assert self._direct is not None
        try:
            self._direct(batch)
        except CommClosedError:
            self._closed = True
            raise
        except Exception:  # as in _run: an unpicklable message ends the stream, loudly
            logger.exception("batched stream to %s failed", self.comm.peer)
            self._closed = True
            self.comm.close()
            return
        self.writes += 1

    async def _run(self) -> None:
        try:
            while not self._closed or self.buffer:
                if not self.buffer:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if self.interval and not self._closed:
                    wait = self._last + self.interval - _clock()
                    if wait > 0:
                        await asyncio.sleep(wait)
                batch, self.buffer = self.buffer, []
                self.writes += 1
                self._writing = True
                try:
                    await self.comm.write(batch)
                finally:
                    self._writing = False
                self._last = _clock()
        except CommClosedError:
            self._closed = True
        except Exception:  # an unpicklable message must not kill the stream silently
            logger.exception("batched stream to %s failed", self.comm.peer)
            self._closed = True
            self.comm.close()

    async def close(self) -> None:
        """Flush what is queued, then stop."""
        self._closed = True
        self._wake.set()
        try:
            await asyncio.wait_for(self.task, 5)
        except (TimeoutError, CommClosedError):
            pass
