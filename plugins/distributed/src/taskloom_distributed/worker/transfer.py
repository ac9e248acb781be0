"""Data between workers: fetching inputs from peers, and serving this worker's data to peers and clients.

A worker fetches the inputs it lacks (the state machine's ``fetch`` instructions) over one
connection per peer, opened and handshaken within ``distributed.comm.timeouts.connect``; a peer
that sends nothing for ``distributed.comm.timeouts.idle`` seconds fails the fetch, and the state
machine looks for another holder (or tells the scheduler).  Every fetch is remembered in
``Worker.transfer_log`` (the last :data:`TRANSFER_LOG_LENGTH`).  The worker's listener answers
``get-data`` (values as frames, a spilled one straight from disk), ``update-data`` (values
scattered to it) and ``run`` (a function on this worker).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..comm import (
    Comm,
    CommClosedError,
    CommTimeoutError,
    HandshakeError,
    Serialized,
    accept,
    connect,
    connect_handshake,
    connect_timeout,
    idle_timeout,
)
from .memory import sizeof, to_serialized

if TYPE_CHECKING:
    from .server import Worker

logger = logging.getLogger("taskloom.distributed.worker")

TRANSFER_LOG_LENGTH = 100  # incoming transfers remembered (Worker.transfer_log)


# -- fetching from peers -------------------------------------------------------------------------
async def peer(worker: Worker, address: str) -> Comm:
    """The open connection to the peer at ``address`` (one per peer, opened on first use)."""
    lock = worker._peer_locks.setdefault(address, asyncio.Lock())
    async with lock:
        comm = worker._peers.get(address)
        if comm is None or comm.closed:  # connect and handshake within the connect timeout
            timeout = connect_timeout()
            deadline = time.monotonic() + timeout
            try:
                comm = await connect(address, worker.client_ssl_context, timeout)
                left = max(deadline - time.monotonic(), 0.001)
                await connect_handshake(comm, worker.auth_token, "worker", worker.name, left)
            except (OSError, HandshakeError) as exc:
                if time.monotonic() < deadline - 0.01:  # refused or failed, not timed out
                    raise
                raise CommTimeoutError(f"{exc} (distributed.comm.timeouts.connect = {timeout:g} s)") from exc
            worker._peers[address] = comm
        return comm


async def fetch(worker: Worker, address: str, keys: list[Any]) -> None:
    """Fetch ``keys`` from the peer at ``address`` and tell the state machine how it went."""
    epoch = worker._epoch
    start = time.time()
    try:
        comm = await peer(worker, address)
        lock = worker._peer_locks.setdefault("rpc:" + address, asyncio.Lock())
        timeout = idle_timeout()
        try:
            data = await get_data(comm, keys, lock, timeout)
        except CommTimeoutError as exc:
            raise CommTimeoutError(f"{exc} (distributed.comm.timeouts.idle = {timeout} s)") from exc
    except (OSError, CommClosedError, HandshakeError, KeyError) as exc:
        stale = worker._peers.pop(address, None)
        if stale is not None:
            stale.abort()
        reason = str(exc)
        if isinstance(exc, CommTimeoutError):  # a frozen or overloaded peer
            logger.warning("could not fetch %s from %s: %s", _keys_text(keys), address, reason)
        log_transfer(worker, address, keys, start, reason)
        if epoch == worker._epoch:  # the scheduler hears of it (missing-data) if no other holder
            worker._do(worker.state.fetch_failed(address, keys, reason))
        return
    if epoch == worker._epoch:
        worker._do(worker.state.fetched(address, data))
    log_transfer(worker, address, keys, start, None)


def log_transfer(worker: Worker, address: str, keys: list[Any], start: float, error: str | None) -> None:
    """Remember a fetch (``get_worker().transfer_log``): from the request to the values stored."""
    stop = time.time()
    record = {"peer": address, "keys": keys, "start": start, "stop": stop, "seconds": stop - start}
    worker.transfer_log.append({**record, "error": error})


async def get_data(
    comm: Comm, keys: list[Any], lock: asyncio.Lock | None = None, idle_timeout: float | None = None
) -> dict[Any, Any]:
    """Ask the worker on ``comm`` for ``keys``; values come back deserialized (arrays as views of
    the buffers they were received into).  ``idle_timeout``: :class:`CommTimeoutError` (and the
    connection aborted) when the peer sends nothing for that many seconds."""
    if lock is None:
        lock = asyncio.Lock()
    async with lock:
        await comm.write({"op": "get-data", "keys": keys}, idle_timeout)
        reply = await comm.read(idle_timeout)
    if reply["status"] == "missing":
        raise KeyError(f"{comm.peer} does not hold {reply['keys']!r}")
    if reply["status"] == "unpicklable":
        from taskloom.serialize import SerializationError

        raise SerializationError(reply["error"])
    return {k: (v.load() if isinstance(v, Serialized) else v) for k, v in reply["data"].items()}


def _keys_text(keys: list[Any], limit: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


# -- serving peers and clients -------------------------------------------------------------------
async def handle_peer(worker: Worker, comm: Comm) -> None:
    """Answer the requests of a peer or client connected to this worker until it goes away."""
    try:
        await accept(comm, worker.auth_token, "worker")  # logs and closes a refused peer
    except HandshakeError:
        return
    try:
        while True:
            msg = await comm.read()
            try:
                reply = await peer_request(worker, msg)
            except Exception as exc:  # a reply, never silence: the peer is waiting for one
                logger.exception("worker %s: request %r failed", worker.address, msg.get("op"))
                reply = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            await comm.write(reply, idle_timeout())  # not to a frozen peer
    except CommClosedError:
        pass


async def peer_request(worker: Worker, msg: dict[str, Any]) -> dict[str, Any]:
    """The reply to one request (``get-data``, ``update-data`` or ``run``)."""
    op = msg.get("op")
    if op == "get-data":
        data = worker.state.data
        missing = [k for k in msg["keys"] if k not in data]
        if missing:
            return {"status": "missing", "keys": missing}
        out = {}
        for k in msg["keys"]:
            try:
                out[k] = to_serialized(data, k)  # a spilled value goes as read from disk
            except Exception as exc:
                t = type(data[k])
                return {
                    "status": "unpicklable",
                    "key": k,
                    "error": f"the result of task {k!r}, of type {t.__module__}.{t.__qualname__}, "
                    f"cannot be pickled: {exc}",
                }
        return {"status": "OK", "data": out}
    if op == "update-data":
        for k, v in msg["data"].items():
            worker.state.data[k] = v
        return {"status": "OK", "nbytes": {k: sizeof(v) for k, v in msg["data"].items()}}
    if op == "run":
        return await worker.run_function(msg["func"], msg)
    return {"status": "error", "error": f"unknown request {op!r}"}
