"""The scheduler server: accepts workers and clients, feeds their messages to the state machine.

Each connection authenticates first (:mod:`..comm.handshake`), then says what it is with its
first message (``register-worker`` or ``register-client``) and becomes a long-lived stream of
batched messages.  The server applies each incoming message to :class:`SchedulerState` and
sends the resulting messages on the recipients' streams.  Requests that expect an answer carry
an ``rid`` and are answered with ``{"op": "reply", "rid": ..., "result"/"error": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any

from taskloom import config, gcpause

from .. import gctune, logbuffer
from ..batched import BatchedSend
from ..comm import Comm, CommClosedError, HandshakeError, Security, Serialized, TLSServer, accept, listen
from .dump import cluster_state
from .lifecycle import WorkerLifecycle
from .retirement import Retirer
from .state import RELAY_BYTES, Messages, MissingDependencyError, SchedulerState
from .stealing import Stealer
from .watchdog import Watchdog

LARGE_GRAPH = 1000  # tasks: an update this large is taken in with the collector paused
RELEASE_CHUNK = 500  # inputs of finished tasks let go of per turn of the loop (release_inputs)

logger = logging.getLogger("taskloom.distributed.scheduler")


class Scheduler:
    """A scheduler listening on ``host:port`` (port 0: any free port)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        auth_token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        *,
        security: Security | None = None,
    ) -> None:
        self.host = host
        self.port = port
        if security is not None:  # a token and/or TLS files; explicit arguments win
            auth_token = auth_token or security.token
            ssl_context = ssl_context or security.server_context()
        self.auth_token = auth_token
        self.ssl_context = ssl_context
        # the config.set values of each client, shipped to every worker (see _client_config)
        self.client_configs: dict[str, Any] = {}
        self._configs_of_client: dict[Any, set[str]] = {}
        self._gc_raised = False  # see gctune: raised while it runs
        self.state = SchedulerState(
            int(config.get("distributed.scheduler.allowed_failures", 3)),
            int(config.get("distributed.scheduler.relay_bytes", RELAY_BYTES) or 0),
        )
        self.lifecycle = WorkerLifecycle(self)  # nannies, heartbeats, worker deaths, restarts
        self.retirer = Retirer(self)  # graceful retirement: results copied off, then closed
        self.watchdog = Watchdog(self)  # warns of stalls (distributed.scheduler.stall_timeout)
        self.stealer = Stealer(self)  # queued tasks move to idle workers (workers that joined)
        self.streams: dict[tuple[str, Any], BatchedSend] = {}
        self._last_free: dict[tuple[str, Any], dict[str, Any]] = {}  # see _send
        self._releasing_inputs = False  # a release_inputs() is scheduled on the loop
        self.server: asyncio.Server | TLSServer | None = None
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
        logbuffer.install()  # recent log records, for client.dump_cluster_state
        self.lifecycle.start()
        self.watchdog.start()
        self.stealer.start()
        gctune.raise_threshold()
        self._gc_raised = True
        return self

    async def close(self) -> None:
        if self._gc_raised:
            self._gc_raised = False
            gctune.restore_threshold()
        self.lifecycle.stop()
        self.watchdog.stop()
        self.stealer.stop()
        for (kind, _), stream in list(self.streams.items()):
            if kind in ("nanny", "worker"):  # nannies first: they must not restart their workers
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
            await accept(comm, self.auth_token, "scheduler")  # logs and closes a refused peer
        except HandshakeError:
            self.failed_handshakes += 1
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
        elif op == "register-nanny":
            await self.lifecycle.nanny_stream(comm, first)
        else:
            logger.warning("unexpected first message %r from %s", op, comm.peer)
            comm.close()

    def _send(self, msgs: Messages) -> None:
        """Queue ``msgs`` on their recipients' streams; ``free-keys`` right after ``free-keys``
        on a stream (not yet written) join it: one message per write, not one per key.

        Tasks that finished with many inputs let go of them on the next turn of the loop, once
        these messages (their news among them) are out (see ``SchedulerState.release_inputs``):
        scheduled after the streams' own wake-ups.
        """
        for recipient, msg in msgs:
            stream = self.streams.get(recipient)
            if stream is None:
                continue
            if msg["op"] == "free-keys":
                last = self._last_free.get(recipient)
                buffer = stream.buffer
                if last is not None and buffer and buffer[-1] is last:
                    last["keys"].extend(msg["keys"])
                    continue
                msg = self._last_free[recipient] = {"op": "free-keys", "keys": list(msg["keys"])}
            try:
                stream.send(msg)
            except CommClosedError:
                pass
        if self.state.inputs_to_release and not self._releasing_inputs:
            self._releasing_inputs = True
            asyncio.get_running_loop().call_soon(self._release_inputs)

    def _release_inputs(self) -> None:
        self._releasing_inputs = False
        self._send(self.state.release_inputs(RELEASE_CHUNK))  # (scheduled again if more remain)

    async def _worker_stream(self, comm: Comm, msg: dict[str, Any]) -> None:
        address = msg["address"]
        stream = self.streams[("worker", address)] = BatchedSend(comm)
        for cid, values in self.client_configs.items():  # before any task that runs under them
            stream.send({"op": "client-config", "id": cid, "config": values})
        self._send(
            self.state.add_worker(
                address,
                msg.get("name", ""),
                msg.get("nthreads", 1),
                msg.get("memory_limit", 0),
                msg.get("pid", 0),
                msg.get("nanny"),
                msg.get("log", ""),
                time.monotonic(),
            )
        )
        stream.send({"op": "registered", "address": address})
        self._workers_changed.set()
        ws = self.state.workers[address]
        key = ("worker", address)
        try:
            while True:
                msgs = await comm.read()
                if self.streams.get(key) is not stream:  # removed: what it says now is stale
                    break
                ws.last_seen = time.monotonic()  # any message is a heartbeat
                for m in msgs:
                    self._worker_message(address, m)
        except CommClosedError:
            pass
        finally:
            await self.lifecycle.disconnected(address, stream)
            logger.info("worker %s left", address)

    def _worker_message(self, address: str, m: dict[str, Any]) -> None:
        op = m["op"]
        st = self.state
        if op == "task-finished":
            self._send(
                st.task_finished(
                    address,
                    m["key"],
                    m.get("nbytes", 0),
                    m.get("type", ""),
                    m.get("duration", 0.0),
                    m.get("value"),
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
        elif op == "worker-status":  # paused past its memory pause threshold, or running again
            ws = st.workers.get(address)
            if ws is not None and {ws.status, m.get("status")} <= {"running", "paused"}:
                self._send(st.worker_status(address, m["status"]))
        elif op == "reply":
            fut = self._worker_replies.pop(m["rid"], None)
            if fut is not None and not fut.done():
                fut.set_result(m)
        elif op == "steal-response":
            self.stealer.response(address, m)
        elif op == "missing-data":
            self._send(st.missing_data(address, m["key"], m["errant_worker"]))
        elif op == "closing":  # it closes on purpose: nothing it ran is to blame
            self.lifecycle.remove(address, "closing", f"closed: {m.get('reason', '')}", expected=True)

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
            self._last_free.pop(("client", client), None)
            await stream.close()
            self._send(self.state.remove_client(client))
            self._forget_client_configs(client)

    async def _client_message(self, client: Any, stream: BatchedSend, m: dict[str, Any]) -> None:
        op = m["op"]
        st = self.state
        if op == "update-graph":
            # a large one: a few objects per task, none garbage (see taskloom.gcpause)
            large = gcpause.paused() if len(m["tasks"]) >= LARGE_GRAPH else contextlib.nullcontext()
            try:
                with large:
                    out = st.update_graph(
                        client,
                        m["tasks"],
                        m["keys"],
                        m.get("priorities"),
                        m.get("retries", 0),
                        m.get("observe", False),
                        m.get("workers"),
                        m.get("allow_other_workers", False),
                        m.get("graph"),
                        m.get("more", False),
                        m.get("hold"),
                    )
            except MissingDependencyError as exc:
                self._send(exc.messages)
                if m["keys"]:
                    stream.send({"op": "graph-error", "keys": m["keys"], "error": str(exc.args[0])})
                return
            self._send(out)
            return
        if op == "abandon-graph":
            self._send(st.abandon_graph(client, m["graph"]))
            return
        if op == "release-keys":
            self._send(st.release_keys(client, m["keys"]))
            return
        if op == "client-config":
            self._client_config(client, m["id"], m["config"])
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
            if m.get("wait") and m.get("keys") is not None:  # a client whose fetch failed
                await self.lifecycle.located(m["keys"], m.get("exclude") or ())
            return st.who_has(m.get("keys"))
        if op == "retry":
            self._send(st.retry(m["keys"]))
            return True
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
            if errors:  # not registered: the workers where it did set up tear it down again
                st.plugins.pop(m["name"], None)
                await self._broadcast({"op": "plugins", "plugins": dict(st.plugins)})
                return {"errors": errors}
            return {"errors": {}}
        if op == "run-on-scheduler":
            func = m["func"].load() if isinstance(m["func"], Serialized) else m["func"]
            args, kwargs = m["args"].load() if isinstance(m.get("args"), Serialized) else ((), {})
            value = func(*args, **kwargs)
            if inspect.isawaitable(value):  # a coroutine function runs on the scheduler's loop
                value = await value
            return Serialized.of(value)
        if op == "retire":
            return await self.retirer.retire(m.get("workers") or (), float(m.get("timeout", 60.0)))
        if op == "dump-state":
            return await cluster_state(self, float(m.get("timeout", 10.0)))
        if op == "restart":
            return await self.lifecycle.restart(float(m.get("timeout", 60.0)))
        raise ValueError(f"unknown request {op!r}")

    # -- the clients' configuration -------------------------------------------------------------
    def _client_config(self, client: Any, cid: str, values: Any) -> None:
        """A client's ``config.set`` values (opaque frames), id ``cid``: every worker gets them.

        Tasks that client submits from now on name ``cid``; the config message goes out on each
        worker's stream before any of them, so a worker always has the values it is asked for.
        """
        self._configs_of_client.setdefault(client, set()).add(cid)
        if cid in self.client_configs:
            return
        self.client_configs[cid] = values
        msg = {"op": "client-config", "id": cid, "config": values}
        self._send([(("worker", address), msg) for address in self.state.workers])

    def _forget_client_configs(self, client: Any) -> None:
        mine = self._configs_of_client.pop(client, set())
        still_used = set().union(*self._configs_of_client.values())
        gone = sorted(mine - still_used)
        for cid in gone:
            self.client_configs.pop(cid, None)
        if gone:
            msg = {"op": "forget-config", "ids": gone}
            self._send([(("worker", address), msg) for address in self.state.workers])

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
                    "status": ws.status,  # "paused": memory above its pause threshold
                    "managed": ws.metrics.get("managed", 0),  # bytes of results in memory
                    "spilled": ws.metrics.get("spilled", 0),  # bytes of results spilled to disk
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
