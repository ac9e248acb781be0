"""The scheduler server: accepts workers and clients, feeds their messages to the state machine.

Each connection authenticates first (:mod:`..comm.handshake`), then says what it is with its
first message (``register-worker`` or ``register-client``) and becomes a long-lived stream of
batched messages.  The server applies each incoming message to :class:`SchedulerState` and
sends the resulting messages on the recipients' streams.  Requests that expect an answer carry
an ``rid`` and are answered with ``{"op": "reply", "rid": ..., "result"/"error": ...}``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

from ..batched import BatchedSend
from ..comm import Comm, CommClosedError, HandshakeError, Serialized, accept, listen
from .state import Messages, SchedulerState

logger = logging.getLogger("taskloom.distributed.scheduler")


class Scheduler:
    """A scheduler listening on ``host:port`` (port 0: any free port)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        auth_token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.auth_token = auth_token
        self.ssl_context = ssl_context
        self.state = SchedulerState()
        self.streams: dict[tuple[str, Any], BatchedSend] = {}
        self.server: asyncio.Server | None = None
        self.address = ""
        self.closed = asyncio.Event()
        self._client_ids = 0
        self.failed_handshakes = 0
        self._worker_replies: dict[int, asyncio.Future[Any]] = {}
        self._workers_changed = asyncio.Event()

    async def start(self) -> Scheduler:
        self.server = await listen(self.host, self.port, self._handle, self.ssl_context)
        host, port = self.server.sockets[0].getsockname()[:2]
        scheme = "tls" if self.ssl_context else "tcp"
        self.address = f"{scheme}://{host}:{port}"
        logger.info("scheduler at %s", self.address)
        return self

    async def close(self) -> None:
        for (kind, _), stream in list(self.streams.items()):
            if kind == "worker":
                try:
                    stream.send({"op": "close", "reason": "scheduler closing"})
                except CommClosedError:
                    pass
        for stream in list(self.streams.values()):
            await stream.close()
            stream.comm.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.closed.set()

    # -- connections ---------------------------------------------------------------------------
    async def _handle(self, comm: Comm) -> None:
        try:
            await asyncio.wait_for(accept(comm, self.auth_token, "scheduler"), 10)
        except (TimeoutError, HandshakeError, CommClosedError, ValueError) as exc:
            self.failed_handshakes += 1
            logger.warning("closed connection from %s: %s", comm.peer, exc)
            comm.close()
            return
        comm.unpickle = False  # the scheduler relays task specifications and data as frames
        try:
            first = await comm.read()
        except CommClosedError:
            return
        op = first.get("op")
        if op == "register-worker":
            await self._worker_stream(comm, first)
        elif op == "register-client":
            await self._client_stream(comm, first)
        else:
            logger.warning("unexpected first message %r from %s", op, comm.peer)
            comm.close()

    def _send(self, msgs: Messages) -> None:
        for recipient, msg in msgs:
            stream = self.streams.get(recipient)
            if stream is not None:
                try:
                    stream.send(msg)
                except CommClosedError:
                    pass

    async def _worker_stream(self, comm: Comm, msg: dict[str, Any]) -> None:
        address = msg["address"]
        stream = self.streams[("worker", address)] = BatchedSend(comm)
        self._send(
            self.state.add_worker(
                address,
                msg.get("name", ""),
                msg.get("nthreads", 1),
                msg.get("memory_limit", 0),
                msg.get("pid", 0),
            )
        )
        stream.send({"op": "registered", "address": address})
        self._workers_changed.set()
        try:
            while True:
                for m in await comm.read():
                    self._worker_message(address, m)
        except CommClosedError:
            pass
        finally:
            self.streams.pop(("worker", address), None)
            await stream.close()
            self._send(self.state.remove_worker(address, "connection closed"))
            self._workers_changed.set()
            logger.info("worker %s left", address)

    def _worker_message(self, address: str, m: dict[str, Any]) -> None:
        op = m["op"]
        st = self.state
        if op == "task-finished":
            self._send(
                st.task_finished(
                    address, m["key"], m.get("nbytes", 0), m.get("type", ""), m.get("duration", 0.0)
                )
            )
        elif op == "task-erred":
            self._send(st.task_erred(address, m["key"], m.get("exception"), m.get("traceback")))
        elif op == "add-keys":
            self._send(st.add_keys(address, m["keys"]))
        elif op == "metrics":
            ws = st.workers.get(address)
            if ws is not None:
                ws.metrics = m.get("metrics", {})
        elif op == "reply":
            fut = self._worker_replies.pop(m["rid"], None)
            if fut is not None and not fut.done():
                fut.set_result(m)

    async def _client_stream(self, comm: Comm, msg: dict[str, Any]) -> None:
        self._client_ids += 1
        client = msg.get("client_id") or f"client-{self._client_ids}"
        stream = self.streams[("client", client)] = BatchedSend(comm)
        self._send(self.state.add_client(client))
        stream.send({"op": "registered", "client_id": client, "address": self.address})
        try:
            while True:
                for m in await comm.read():
                    await self._client_message(client, stream, m)
        except CommClosedError:
            pass
        finally:
            self.streams.pop(("client", client), None)
            await stream.close()
            self._send(self.state.remove_client(client))

    async def _client_message(self, client: Any, stream: BatchedSend, m: dict[str, Any]) -> None:
        op = m["op"]
        st = self.state
        if op == "update-graph":
            try:
                self._send(
                    st.update_graph(
                        client,
                        m["tasks"],
                        m["keys"],
                        m.get("priorities"),
                        m.get("retries", 0),
                        m.get("observe", False),
                    )
                )
            except KeyError as exc:
                stream.send({"op": "graph-error", "keys": m["keys"], "error": str(exc)})
            return
        if op == "release-keys":
            self._send(st.release_keys(client, m["keys"]))
            return
        rid = m.get("rid")
        try:
            result = await self._request(client, op, m)
            reply = {"op": "reply", "rid": rid, "result": result}
        except Exception as exc:
            reply = {"op": "reply", "rid": rid, "error": f"{type(exc).__name__}: {exc}"}
        stream.send(reply)

    async def _request(self, client: Any, op: str, m: dict[str, Any]) -> Any:
        st = self.state
        if op == "who-has":
            return st.who_has(m.get("keys"))
        if op == "has-what":
            return st.has_what()
        if op == "scheduler-info":
            return self.info()
        if op == "add-keys":
            self._send(st.add_keys(m["worker"], m["keys"], client))
            return True
        if op == "register-plugin":
            st.plugins.pop(m["name"], None)
            st.plugins[m["name"]] = m["plugin"]
            replies = await self._broadcast({"op": "plugins", "plugins": dict(st.plugins)})
            errors = {a: r["error"] for a, r in replies.items() if r.get("error")}
            if errors:
                st.plugins.pop(m["name"], None)
                return {"errors": errors}
            return {"errors": {}}
        if op == "run-on-scheduler":
            func = m["func"].load() if isinstance(m["func"], Serialized) else m["func"]
            args, kwargs = m["args"].load() if isinstance(m.get("args"), Serialized) else ((), {})
            return Serialized.of(func(*args, **kwargs))
        if op == "retire":
            return True
        raise ValueError(f"unknown request {op!r}")

    async def _broadcast(self, msg: dict[str, Any], timeout: float = 60) -> dict[str, dict[str, Any]]:
        """Send ``msg`` to every worker and wait for each reply."""
        loop = asyncio.get_running_loop()
        futures = {}
        for address in list(self.state.workers):
            stream = self.streams.get(("worker", address))
            if stream is None:
                continue
            rid = id(object())
            fut = self._worker_replies[rid] = loop.create_future()
            stream.send({**msg, "rid": rid})
            futures[address] = fut
        out = {}
        for address, fut in futures.items():
            try:
                out[address] = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                out[address] = {"error": "no reply"}
        return out

    async def workers_changed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a worker to join or leave; True if one did."""
        try:
            await asyncio.wait_for(self._workers_changed.wait(), timeout)
        except TimeoutError:
            return False
        self._workers_changed.clear()
        return True

    def info(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "pid": os.getpid(),
            "workers": {
                a: {
                    "address": a,
                    "name": ws.name,
                    "nthreads": ws.nthreads,
                    "memory_limit": ws.memory_limit,
                    "pid": ws.pid,
                    "memory": ws.metrics.get("memory", 0),
                    "tasks": len(ws.processing),
                    "nbytes": ws.nbytes,
                    "keys": len(ws.has_what),
                }
                for a, ws in self.state.workers.items()
            },
            "tasks": self.state.task_counts(),
        }


async def run_scheduler(started: Callable[[Scheduler], None] | None = None, **kwargs: Any) -> None:
    """Run a scheduler until it is closed (for the ``taskloom scheduler`` command)."""
    scheduler = await Scheduler(**kwargs).start()
    if started is not None:
        started(scheduler)
    await scheduler.closed.wait()
