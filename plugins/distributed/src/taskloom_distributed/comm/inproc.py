"""Connections within one process and event loop, without a socket: a client and the scheduler
of the ``LocalCluster`` it started, or in-process workers and their scheduler.

:func:`~.tcp.listen` registers each (plain TCP) server it starts here; :func:`~.tcp.connect` to
the address of one that is serving on the *running* event loop returns an :class:`InProcComm` pair instead of
opening a TCP connection, and the server's handler gets the other end, exactly as it would get
a TCP connection.  Messages still go through :func:`~.messages.dumps` / :func:`~.messages.loads`
(the same frames, the same handshake and authentication, the same tuples for lists and the same
refusal to unpickle before authentication), so both ends behave as over TCP; what is saved is
the socket: no system calls, no wake-up of the selector, no frame parsing -- about half of a
submit-to-result round trip on a small machine.  Frames that are views of someone else's memory
are copied on the way, as a socket would.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from . import tcp  # (tcp imports this module: its names are looked up when used)
from .messages import dumps, loads

Handler = Callable[[Any], Coroutine[Any, Any, None]]

_servers: dict[tuple[str, int], tuple[weakref.ref[asyncio.Server], asyncio.AbstractEventLoop, Handler]] = {}
_handler_tasks: set[asyncio.Task[None]] = set()
_ids = itertools.count(1)


def register(server: asyncio.Server, handler: Handler) -> None:
    """Connections from this process and loop to ``server``'s addresses go to ``handler`` directly."""
    loop = asyncio.get_running_loop()
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        _servers[(host, port)] = (weakref.ref(server), loop, handler)


def connect(host: str, port: int) -> InProcComm | None:
    """The client end of a new in-process connection to the server at ``host:port``, if one
    serves on the running loop (None: connect over TCP)."""
    entry = _servers.get((host, port))
    if entry is None:
        return None
    ref, loop, handler = entry
    server = ref()
    if server is None or not server.is_serving():
        del _servers[(host, port)]
        return None
    try:
        if asyncio.get_running_loop() is not loop:
            return None
    except RuntimeError:
        return None
    n = next(_ids)
    address = f"tcp://{host}:{port}"
    client = InProcComm(peer=address, local=f"inproc://{n}")
    served = InProcComm(peer=f"inproc://{n}", local=address)
    client._other, served._other = served, client
    task = loop.create_task(handler(served))
    _handler_tasks.add(task)
    task.add_done_callback(_handler_tasks.discard)
    return client


class InProcComm:
    """One end of an in-process connection, with the interface of :class:`~.tcp.Comm`."""

    def __init__(self, peer: str, local: str) -> None:
        self.peer = peer
        self.local = local
        self.unpickle = False  # set True once the peer has authenticated (the handshake does)
        self.peer_info: dict[str, Any] = {}
        self._other: InProcComm | None = None
        self._inbox: deque[list[Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False  # closed here
        self._peer_closed = False  # closed at the other end

    @property
    def closed(self) -> bool:
        return self._closed or self._peer_closed

    def set_authenticated(self) -> None:
        """Nothing to lift: there are no frame size limits in process."""

    async def read_frames(self, idle_timeout: float | None = None) -> list[Any]:
        """The next message as frames; ``idle_timeout`` as for :meth:`~.tcp.Comm.read_frames`."""
        while not self._inbox:
            if self.closed:
                raise tcp.CommClosedError(f"connection to {self.peer} is closed")
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                if idle_timeout:
                    await asyncio.wait_for(waiter, idle_timeout)
                else:
                    await waiter
            except TimeoutError:
                self.abort()
                raise tcp.CommTimeoutError(
                    f"no data from {self.peer} for {idle_timeout:g} s; connection aborted"
                ) from None
            finally:
                self._waiter = None
        return self._inbox.popleft()

    async def read(self, idle_timeout: float | None = None) -> Any:
        return loads(await self.read_frames(idle_timeout), unpickle=self.unpickle)

    async def write_frames(self, frames: list[Any], idle_timeout: float | None = None) -> int:
        return self._deliver(frames)

    def _deliver(self, frames: list[Any]) -> int:
        other = self._other
        if self.closed or other is None:
            raise tcp.CommClosedError(f"connection to {self.peer} is closed")
        copied = [f if type(f) is bytes else bytes(f) for f in frames]  # a view may change later
        other._inbox.append(copied)
        other._wake()
        return sum(len(f) for f in copied)

    async def write(self, msg: Any, idle_timeout: float | None = None) -> int:
        return self.send_nowait(msg)

    def send_nowait(self, msg: Any) -> int:
        """Send ``msg`` now (nothing to wait for in process); :class:`BatchedSend` uses this."""
        return self._deliver(dumps(msg))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Close both ways: what was sent before is still read at the other end, then it ends."""
        if self._closed:
            return
        self._closed = True
        self._wake()
        other = self._other
        if other is not None:
            other._peer_closed = True
            other._wake()

    def abort(self) -> None:
        self._inbox.clear()
        self.close()

    def __repr__(self) -> str:
        return f"<InProcComm {self.local} -> {self.peer}>"
