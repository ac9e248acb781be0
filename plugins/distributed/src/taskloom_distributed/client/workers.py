"""Requests from a client to workers: one connection per worker, one request at a time on it."""

from __future__ import annotations

import asyncio
from typing import Any

from taskloom.graph import Key
from taskloom.serialize import SerializationError

from ..comm import Comm, connect, connect_handshake
from ..worker.server import get_data


class WorkerCalls:
    """Worker connections of :class:`~.client.Client` (a part of it, not used alone).

    A request cancelled half-way (a timeout, Ctrl-C) aborts its connection, so a late reply can
    never be read as the answer to the next request; the next one reconnects.
    """

    # set up by Client.__init__ (the security settings when it starts)
    timeout: float
    auth_token: str | None
    _ssl_context: Any
    _workers: dict[str, Comm]
    _connect_locks: dict[str, asyncio.Lock]
    _rpc_locks: dict[str, asyncio.Lock]

    async def _get_data(self, address: str, keys: list[Key]) -> dict[Key, Any]:
        comm = await self._worker_comm(address)
        async with self._rpc_locks.setdefault(address, asyncio.Lock()):
            try:
                return await get_data(comm, keys)
            except (KeyError, SerializationError):
                raise  # the reply was read: the connection is still in step
            except BaseException:
                comm.abort()  # a reply may still be on its way: never reuse this connection
                raise

    async def _worker_rpc(self, address: str, msg: dict[str, Any]) -> Any:
        """Send ``msg`` to the worker at ``address`` and return its reply."""
        comm = await self._worker_comm(address)
        async with self._rpc_locks.setdefault(address, asyncio.Lock()):
            try:
                await comm.write(msg)
                return await comm.read()
            except BaseException:
                comm.abort()
                raise

    async def _worker_comm(self, address: str) -> Comm:
        async with self._connect_locks.setdefault(address, asyncio.Lock()):
            comm = self._workers.get(address)
            if comm is None or comm.closed:
                comm = await connect(address, self._ssl_context, timeout=self.timeout)
                await connect_handshake(comm, self.auth_token, "client")
                self._workers[address] = comm
            return comm
