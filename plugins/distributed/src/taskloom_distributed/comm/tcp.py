"""TCP (and TLS) transport: length-prefixed frames read straight into their own buffers.

Wire format of one message: an 8-byte little-endian frame count ``n``, ``n`` 8-byte frame
lengths, then the frames.  The receiving side is an ``asyncio.BufferedProtocol``: each large
frame is read by the kernel directly into a buffer of its length (a NumPy ``uint8`` array when
NumPy is installed: allocated without being zeroed first, see :func:`_allocate`), so a large
array is copied once (socket to its final buffer), the buffer is writable, and the array
unpickled from it is a view of it.  Small headers are parsed from a reusable scratch buffer.
Sending writes each frame from its own memory, large ones in bounded chunks (never joined).
Reads and writes may take an *idle timeout*: a peer that sends (or reads) nothing for that long
gets its connection aborted and :class:`CommTimeoutError` (see :mod:`.timeouts`).

Until a connection has authenticated (:meth:`Comm.set_authenticated`, called by the handshake)
a message may hold only a few small frames, so an unauthenticated peer cannot make us allocate
much.  A TLS server accepts each connection itself and then starts TLS on it
(:class:`TLSServer`), so that a failed handshake is logged with the peer's address.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from . import inproc
from .messages import dumps, loads

logger = logging.getLogger("taskloom.distributed.comm")

_U64 = struct.Struct("<Q")
MAX_FRAMES = 1 << 20
MAX_FRAME_BYTES = 1 << 40
PREAUTH_MAX_FRAMES = 4  # the handshake's messages are one small frame each
PREAUTH_MAX_FRAME_BYTES = 1 << 16
TLS_HANDSHAKE_TIMEOUT = 10.0
_SCRATCH = 1 << 16
_BIG = 1 << 16  # frames larger than this are received in place
_CHUNK = 1 << 18  # large frames are written in chunks, draining between them


def _allocate(size: int) -> Any:
    """A writable buffer of ``size`` bytes for a large frame, not zeroed first.

    ``bytearray(size)`` writes zeros over the whole buffer before the socket overwrites them: for
    a 500 MB frame that costs more than the transfer.  A NumPy ``uint8`` array is allocated
    without being touched (and NumPy asks for huge pages), so each page is written once, by the
    kernel, as the data arrives; a NumPy array unpickled from it is a view of it, not a copy.
    """
    global _empty
    if _empty is None:
        try:
            import numpy

            _empty = functools.partial(numpy.empty, dtype=numpy.uint8)
        except ImportError:  # a scheduler or client without NumPy
            _empty = bytearray
    return _empty(size)


_empty: Callable[[int], Any] | None = None


class CommClosedError(ConnectionError):
    """The other side closed the connection (or it broke)."""


class ProtocolError(CommClosedError):
    """The other side sent bytes that are not taskloom messages; the connection was closed."""


class CommTimeoutError(CommClosedError, TimeoutError):
    """Nothing came from the other side (or it read nothing) for too long; the connection was aborted."""


class _FrameProtocol(asyncio.BufferedProtocol):
    """Reassembles messages (lists of frames) from the byte stream.

    Small data is received into a scratch buffer and parsed from there (several small messages
    per system call); the remainder of a large frame is received straight into that frame's own
    buffer.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._messages: deque[list[Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed: BaseException | None = None
        self._buf = bytearray(_SCRATCH)
        self._start = 0  # unparsed data is self._buf[self._start:self._end]
        self._end = 0
        self._lengths: list[int] | None = None  # of the message being received
        self._frames: list[Any] = []
        self._big: bytearray | None = None  # a large frame being received in place
        self._big_have = 0
        self._paused = False
        self._drain_waiters: deque[asyncio.Future[None]] = deque()
        self.received = 0  # bytes, ever: progress, for idle timeouts
        self.max_frames = PREAUTH_MAX_FRAMES
        self.max_frame_bytes = PREAUTH_MAX_FRAME_BYTES

    # -- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._big_have :]
        if self._end == len(self._buf):  # make room: move unparsed bytes to the front
            pending = self._end - self._start
            if self._start == 0:
                self._buf.extend(bytes(len(self._buf)))
            else:
                self._buf[:pending] = self._buf[self._start : self._end]
                self._start, self._end = 0, pending
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        if self._big is not None:
            self._big_have += nbytes
            if self._big_have == len(self._big):
                self._frames.append(self._big)
                self._big = None
                self._complete_if_done()
            return
        self._end += nbytes
        try:
            self._parse()
        except CommClosedError as exc:
            self._fail(exc)
            if self.transport is not None:
                self.transport.abort()

    def _parse(self) -> None:
        buf = self._buf
        while True:
            avail = self._end - self._start
            if self._lengths is None:
                if avail < 8:
                    break
                n = _U64.unpack_from(buf, self._start)[0]
                if not 0 < n <= self.max_frames:
                    raise ProtocolError(f"malformed message: {n} frames (at most {self.max_frames})")
                if avail < 8 + 8 * n:
                    break
                self._lengths = list(struct.unpack_from(f"<{n}Q", buf, self._start + 8))
                if any(x > self.max_frame_bytes for x in self._lengths):
                    raise ProtocolError(
                        f"malformed message: a frame of {max(self._lengths)} bytes "
                        f"(at most {self.max_frame_bytes})"
                    )
                self._start += 8 + 8 * n
                self._frames = []
                continue
            size = self._lengths[len(self._frames)]
            if size > _BIG:  # take what has arrived, receive the rest in place
                frame = _allocate(size)
                got = min(avail, size)
                frame[:got] = buf[self._start : self._start + got]
                self._start += got
                if got < size:
                    self._big, self._big_have = frame, got
                    self._reset_if_empty()
                    return
                self._frames.append(frame)
            elif avail >= size:
                self._frames.append(bytes(buf[self._start : self._start + size]))
                self._start += size
            else:
                break
            self._complete_if_done()
        self._reset_if_empty()

    def _reset_if_empty(self) -> None:
        if self._start == self._end:
            self._start = self._end = 0
            if len(self._buf) > 4 * _SCRATCH:
                self._buf = bytearray(_SCRATCH)

    def _complete_if_done(self) -> None:
        if self._lengths is not None and len(self._frames) == len(self._lengths):
            self._messages.append(self._frames)
            self._lengths, self._frames = None, []
            self._wake()

    def eof_received(self) -> bool:
        self._fail(CommClosedError("connection closed by the other side"))
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail(CommClosedError(f"connection lost: {exc}" if exc else "connection closed"))
        for w in self._drain_waiters:
            if not w.done():
                w.set_exception(CommClosedError("connection closed"))
        self._drain_waiters.clear()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        while self._drain_waiters:
            w = self._drain_waiters.popleft()
            if not w.done():
                w.set_result(None)

    # -- helpers -------------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
        self._wake()

    def _closed_error(self) -> CommClosedError:
        """Why the connection closed, as a fresh exception of the same kind."""
        kind = type(self._closed) if isinstance(self._closed, CommClosedError) else CommClosedError
        return kind(str(self._closed))

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def read_frames(self, idle_timeout: float | None = None) -> list[Any]:
        """The next message; :class:`_Idle` if no byte arrives for ``idle_timeout`` seconds."""
        while not self._messages:
            if self._closed is not None:
                raise self._closed_error()
            if self._waiter is None or self._waiter.done():
                self._waiter = asyncio.get_running_loop().create_future()
            if idle_timeout is None:
                await self._waiter
                continue
            before = self.received
            await asyncio.wait((self._waiter,), timeout=idle_timeout)
            if not self._waiter.done() and self.received == before:
                raise _Idle("received nothing")
        return self._messages.popleft()

    async def drain(self, idle_timeout: float | None = None) -> None:
        """Wait while the transport's buffer is full; :class:`_Idle` if the peer reads nothing
        for ``idle_timeout`` seconds."""
        if self._closed is not None:
            raise self._closed_error()
        if self._paused:
            w = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(w)
            if idle_timeout is None:
                await w
            else:
                await asyncio.wait((w,), timeout=idle_timeout)
                if not w.done():
                    self._drain_waiters.remove(w)
                    w.cancel()
                    raise _Idle("it read nothing")
                w.result()


class _Idle(Exception):
    """No progress on a connection within its idle timeout (becomes :class:`CommTimeoutError`)."""


class Comm:
    """One connection: ``await read()`` a message, ``await write(msg)`` one; ``close()``."""

    def __init__(self, transport: asyncio.Transport, protocol: _FrameProtocol, peer: str) -> None:
        self.transport = transport
        self.protocol = protocol
        self.peer = peer
        host, port = (transport.get_extra_info("sockname") or ("?", 0))[:2]  # None: closed already
        self.local = f"{peer.partition('://')[0] or 'tcp'}://{host}:{port}"
        self.unpickle = False  # set True once the peer has authenticated
        self.peer_info: dict[str, Any] = {}
        self._write_lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        return self.transport.is_closing() or self.protocol._closed is not None

    def set_authenticated(self) -> None:
        """The peer has authenticated: lift the size limits on its messages."""
        self.protocol.max_frames = MAX_FRAMES
        self.protocol.max_frame_bytes = MAX_FRAME_BYTES

    async def read_frames(self, idle_timeout: float | None = None) -> list[Any]:
        """The next message as frames.

        ``idle_timeout``: give up when no byte arrives for that many seconds (a message that
        keeps arriving, however slowly, is waited for): the connection, now in the middle of a
        message, is aborted and :class:`CommTimeoutError` raised.
        """
        try:
            return await self.protocol.read_frames(idle_timeout)
        except _Idle:
            self.abort()
            raise CommTimeoutError(
                f"no data from {self.peer} for {idle_timeout:g} s; connection aborted"
            ) from None

    async def read(self, idle_timeout: float | None = None) -> Any:
        """The next message (pickled values are unpickled only once the peer has authenticated)."""
        return loads(await self.read_frames(idle_timeout), unpickle=self.unpickle)

    async def write_frames(self, frames: list[Any], idle_timeout: float | None = None) -> int:
        """Send one message; ``idle_timeout`` as for :meth:`read_frames`, when the peer reads nothing."""
        try:
            return await self._write_frames(frames, idle_timeout)
        except _Idle:
            self.abort()
            raise CommTimeoutError(
                f"{self.peer} read nothing for {idle_timeout:g} s; connection aborted"
            ) from None

    async def _write_frames(self, frames: list[Any], idle_timeout: float | None) -> int:
        sizes = [len(f) if type(f) is bytes else memoryview(f).nbytes for f in frames]
        header = _U64.pack(len(frames)) + struct.pack(f"<{len(frames)}Q", *sizes)
        async with self._write_lock:
            if self.closed:
                if self.protocol._closed is not None:
                    raise self.protocol._closed_error()
                raise CommClosedError(f"connection to {self.peer} is closed")
            if max(sizes) <= _CHUNK and all(type(f) is bytes for f in frames):  # the usual message
                self.transport.write(header + b"".join(frames))
                await self.protocol.drain(idle_timeout)
                return sum(sizes)
            small: list[Any] = [header]
            for f in frames:
                view = memoryview(f).cast("B")
                if view.nbytes <= _CHUNK:
                    small.append(view)
                    continue
                self.transport.write(b"".join(small))
                small = []
                # asyncio's write buffer copies and shifts what it cannot send at once: feed it
                # bounded chunks so a large frame costs one copy, not a quadratic shuffle
                for offset in range(0, view.nbytes, _CHUNK):
                    self.transport.write(view[offset : offset + _CHUNK])
                    await self.protocol.drain(idle_timeout)
            if small:
                self.transport.write(b"".join(small))
            await self.protocol.drain(idle_timeout)
        return sum(sizes)

    def write_frames_nowait(self, frames: list[Any]) -> bool:
        """Write a message of small ``bytes`` frames at once, if the connection can take it now
        (no write under way, its buffer not full); False and nothing written otherwise."""
        if self._write_lock.locked() or self.closed or self.protocol._paused:
            return False
        for f in frames:
            if type(f) is not bytes or len(f) > _CHUNK:
                return False
        header = _U64.pack(len(frames)) + struct.pack(f"<{len(frames)}Q", *map(len, frames))
        self.transport.write(header + b"".join(frames))
        return True

    async def write(self, msg: Any, idle_timeout: float | None = None) -> int:
        return await self.write_frames(dumps(msg), idle_timeout)

    def close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    def __repr__(self) -> str:
        return f"<Comm {self.local} -> {self.peer}>"


def parse_address(
    address: str, default_port: int = 8786, default_scheme: str = "tcp"
) -> tuple[str, str, int]:
    """``"tcp://host:port"``, ``"tls://host:port"`` or ``"host:port"`` -> (scheme, host, port)."""
    scheme = default_scheme
    if "://" in address:
        scheme, address = address.split("://", 1)
    if scheme not in ("tcp", "tls"):
        raise ValueError(f"unsupported address scheme {scheme!r} in {address!r}; use tcp:// or tls://")
    host, _, port = address.rpartition(":")
    if not host:
        host, port = port, str(default_port)
    try:
        number = int(port)
    except ValueError:
        raise ValueError(
            f"cannot read a port number in the address {address!r} (expected HOST:PORT)"
        ) from None
    return scheme, host.strip("[]") or "127.0.0.1", number


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def connect(
    address: str, ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0, local: bool = True
) -> Comm:
    """Open a connection to ``address`` (no handshake: see :mod:`.handshake`).

    An address without a scheme is ``tls://`` when ``ssl_context`` is given, else ``tcp://``.
    A ``tcp://`` server that serves on the running event loop is connected to in process
    (:mod:`.inproc`), unless ``local`` is False.
    """
    scheme, host, port = parse_address(address, default_scheme="tls" if ssl_context else "tcp")
    if scheme == "tls" and ssl_context is None:
        raise ValueError(
            f"{address} needs TLS: pass security=Security(tls_ca_file=..., tls_cert=..., tls_key=...) "
            "or set distributed.comm.tls.ca_file/cert/key"
        )
    if local and scheme == "tcp":  # a server on this very loop: no socket needed
        pair = inproc.connect(host, port)
        if pair is not None:
            return pair  # type: ignore[return-value]  # the same interface as Comm
    loop = asyncio.get_running_loop()
    tls = ssl_context if scheme == "tls" else None
    try:
        transport, protocol = await asyncio.wait_for(
            loop.create_connection(
                _FrameProtocol,
                host,
                port,
                ssl=tls,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if tls else None,
            ),
            timeout,
        )
    except ssl.SSLError as exc:
        raise OSError(f"TLS handshake with {scheme}://{host}:{port} failed: {exc}") from exc
    except TimeoutError as exc:
        raise OSError(f"could not connect to {address} within {timeout:g} s") from exc
    except OSError as exc:
        raise OSError(f"could not connect to {address}: {exc}") from exc
    _nodelay(transport)
    return Comm(transport, protocol, f"{scheme}://{host}:{port}")


class TLSServer:
    """A listening socket whose connections are accepted here and then wrapped in TLS
    (``loop.connect_accepted_socket``), so that a failed handshake is an exception we log with
    the peer's address.  (A plain server's ``loop.start_tls`` cannot be used for this on uvloop:
    it starts reading after ``connection_made``, so the client's first TLS bytes would reach the
    wrong protocol.)  It has what callers use of an ``asyncio.Server``."""

    def __init__(self, sock: socket.socket, accepting: asyncio.Task[None]) -> None:
        self.sockets = [sock]
        self._accepting = accepting

    def close(self) -> None:
        self._accepting.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._accepting, return_exceptions=True)


async def listen(
    host: str,
    port: int,
    handler: Callable[[Comm], Coroutine[Any, Any, None]],
    ssl_context: ssl.SSLContext | None = None,
) -> asyncio.Server | TLSServer:
    """Serve connections on ``host:port`` (0: any free port); ``handler`` gets each new Comm.

    With ``ssl_context`` every connection first completes a TLS handshake; one that fails is
    logged (with the peer's address) and closed, and ``handler`` never sees it.
    """
    loop = asyncio.get_running_loop()
    if ssl_context is not None:
        return await _listen_tls(host, port, handler, ssl_context)

    def factory() -> _FrameProtocol:
        proto = _FrameProtocol()
        original = proto.connection_made

        def made(transport: asyncio.BaseTransport) -> None:
            original(transport)
            _nodelay(transport)
            peer = transport.get_extra_info("peername")
            _serve(handler(Comm(transport, proto, f"tcp://{peer[0]}:{peer[1]}")))  # type: ignore[arg-type]

        proto.connection_made = made  # type: ignore[method-assign]
        return proto

    server = await loop.create_server(factory, host, port)
    inproc.register(server, handler)  # plain TCP only: a TLS server is always reached through TLS
    return server


async def _listen_tls(
    host: str, port: int, handler: Callable[[Comm], Coroutine[Any, Any, None]], ssl_context: ssl.SSLContext
) -> TLSServer:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first, as addresses are shown
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise

    async def welcome(conn: socket.socket, peer: str) -> None:
        made: list[_FrameProtocol] = []  # uvloop returns its TLS protocol rather than ours

        def factory() -> _FrameProtocol:
            made.append(_FrameProtocol())
            return made[0]

        try:
            transport, _ = await loop.connect_accepted_socket(
                factory, conn, ssl=ssl_context, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT
            )
        except (OSError, TimeoutError, ConnectionError) as exc:
            logger.warning("refused connection from %s: TLS handshake failed: %s", peer, exc)
            conn.close()
            return
        _nodelay(transport)
        await handler(Comm(transport, made[0], peer))

    async def accept() -> None:
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError as exc:  # out of file descriptors, say: keep serving the others
                if sock.fileno() < 0:
                    return
                logger.warning("could not accept a connection on %s:%s: %s", host, port, exc)
                await asyncio.sleep(0.1)
                continue
            _serve(welcome(conn, f"tls://{addr[0]}:{addr[1]}"))

    return TLSServer(sock, loop.create_task(accept()))


def _serve(coro: Coroutine[Any, Any, None]) -> None:
    """Run a connection's handler as a task that is kept alive until it ends."""
    task = asyncio.get_running_loop().create_task(coro)
    _handler_tasks.add(task)
    task.add_done_callback(_handler_tasks.discard)


_handler_tasks: set[asyncio.Task[None]] = set()
