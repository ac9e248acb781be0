"""A stream of messages to one peer, sent in batches: everything queued meanwhile goes in one write."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .comm import Comm, CommClosedError

logger = logging.getLogger("taskloom.distributed")


class BatchedSend:
    """Queue messages with :meth:`send`; a background task writes them as one list per write.

    Messages produced while handling one event (or while the previous write was in flight) share
    a write, so per-task messages cost a fraction of a round trip.
    """

    def __init__(self, comm: Comm) -> None:
        self.comm = comm
        self.buffer: list[Any] = []
        self._wake = asyncio.Event()
        self._closed = False
        self.task = asyncio.get_running_loop().create_task(self._run())

    def send(self, *msgs: Any) -> None:
        if self._closed:
            raise CommClosedError(f"batched stream to {self.comm.peer} is closed")
        self.buffer.extend(msgs)
        self._wake.set()

    async def _run(self) -> None:
        try:
            while not self._closed or self.buffer:
                if not self.buffer:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch, self.buffer = self.buffer, []
                await self.comm.write(batch)
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
