"""The worker server: runs tasks the scheduler sends, serves its data to peers and clients.

It keeps one batched stream to the scheduler (task results, metrics) and listens for peers
(``get-data``: worker-to-worker transfers and client gathers; ``run``: a function on this
worker).  Tasks run on a thread pool of ``nthreads``; :class:`~.state.WorkerState` decides what
runs and what is fetched.  Worker plugins go through the core's :class:`taskloom.worker.WorkerRuntime`
so they behave as on every other backend.  When the scheduler goes away the worker stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from taskloom.errors import WorkerPluginError
from taskloom.worker import Worker as CoreWorker
from taskloom.worker import WorkerRuntime

from ..batched import BatchedSend
from ..comm import (
    Comm,
    CommClosedError,
    HandshakeError,
    Serialized,
    accept,
    connect,
    connect_handshake,
    listen,
)
from .state import WorkerState

logger = logging.getLogger("taskloom.distributed.worker")

METRICS_INTERVAL = 1.0


class Worker:
    """A worker connected to the scheduler at ``scheduler_address``."""

    def __init__(
        self,
        scheduler_address: str,
        nthreads: int = 1,
        memory_limit: int = 0,
        name: str = "",
        host: str = "127.0.0.1",
        port: int = 0,
        auth_token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.scheduler_address = scheduler_address
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.name = name
        self.host = host
        self.port = port
        self.auth_token = auth_token
        self.ssl_context = ssl_context
        self.address = ""
        self.state = WorkerState(nthreads)
        self.executor = ThreadPoolExecutor(nthreads, thread_name_prefix="taskloom-worker")
        self.server: asyncio.Server | None = None
        self.stream: BatchedSend | None = None
        self.closed = asyncio.Event()
        self._peers: dict[str, Comm] = {}
        self._peer_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.runtime = WorkerRuntime(CoreWorker(name or "worker", "distributed"))
        self.plugin_error: BaseException | None = None
        self._plugin_version = 0
        self._local = threading.local()

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> Worker:
        self.server = await listen(self.host, self.port, self._handle_peer, self.ssl_context)
        host, port = self.server.sockets[0].getsockname()[:2]
        self.address = f"{'tls' if self.ssl_context else 'tcp'}://{host}:{port}"
        self.state.address = self.address
        self.runtime.worker.name = self.name or self.address
        self.runtime.worker.address = self.address  # type: ignore[attr-defined]
        comm = await connect(self.scheduler_address, self.ssl_context)
        await connect_handshake(comm, self.auth_token, "worker", self.name)
        await comm.write(
            {
                "op": "register-worker",
                "address": self.address,
                "name": self.name or self.address,
                "nthreads": self.nthreads,
                "memory_limit": self.memory_limit,
                "pid": os.getpid(),
            }
        )
        self.stream = BatchedSend(comm)
        self._spawn(self._scheduler_loop(comm))
        self._spawn(self._metrics_loop())
        return self

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, reason: str = "") -> None:
        if self.closed.is_set():
            return
        logger.info("worker %s closing: %s", self.address, reason)
        self.closed.set()
        if self.stream is not None:
            await self.stream.close()
            self.stream.comm.close()
        for comm in self._peers.values():
            comm.close()
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._teardown)

    def _teardown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        try:
            self.runtime.close()
        except Exception:
            logger.exception("worker plugin teardown failed")

    # -- the scheduler stream ------------------------------------------------------------------
    async def _scheduler_loop(self, comm: Comm) -> None:
        try:
            while True:
                for msg in await comm.read():
                    await self._scheduler_message(msg)
        except CommClosedError:
            pass
        finally:
            await self.close("the scheduler went away")

    async def _scheduler_message(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "compute-task":
            self._do(self.state.compute_task(msg))
        elif op == "free-keys":
            self._do(self.state.free(msg["keys"]))
        elif op == "plugins":
            error = await self._sync_plugins(msg["plugins"])
            if "rid" in msg and self.stream is not None:
                self.stream.send({"op": "reply", "rid": msg["rid"], "error": error})
        elif op == "close":
            await self.close(msg.get("reason", "asked to close"))
        elif op == "registered":
            pass

    async def _sync_plugins(self, plugins: dict[str, Any]) -> str | None:
        loaded = {name: (p.load() if isinstance(p, Serialized) else p) for name, p in plugins.items()}
        loop = asyncio.get_running_loop()

        self._plugin_version += 1
        version = self._plugin_version

        def sync() -> None:
            self.runtime.sync(version, loaded)

        try:
            await loop.run_in_executor(self.executor, sync)
            self.plugin_error = None
            return None
        except WorkerPluginError as exc:
            self.plugin_error = exc
            return str(exc)

    def _do(self, instructions: list[tuple[Any, ...]]) -> None:
        for ins in instructions:
            if ins[0] == "execute":
                self._spawn(self._execute(ins[1]))
            elif ins[0] == "fetch":
                self._spawn(self._fetch(ins[1], ins[2]))
            elif ins[0] == "send" and self.stream is not None:
                self.stream.send(ins[1])

    # -- running tasks ---------------------------------------------------------------------------
    async def _execute(self, key: Any) -> None:
        ts = self.state.tasks.get(key)
        if ts is None:
            self._do(self.state.executed(key, error=True))
            return
        loop = asyncio.get_running_loop()
        start = time.time()
        ok, value = await loop.run_in_executor(self.executor, self._run_task, key, ts.spec)
        stop = time.time()
        if ok:
            self._do(self.state.executed(key, value))
            msg = {"op": "task-finished", "key": key, "nbytes": _nbytes(value), "type": type(value).__name__}
            msg.update(duration=stop - start, start=start, stop=stop)
        else:
            self._do(self.state.executed(key, error=True))
            exc, tb = value
            msg = {
                "op": "task-erred",
                "key": key,
                "exception": exc,
                "traceback": tb,
                "start": start,
                "stop": stop,
            }
        if self.stream is not None:
            try:
                self.stream.send(msg)
            except CommClosedError:
                pass

    def _run_task(self, key: Any, spec: Any) -> tuple[bool, Any]:
        """On an executor thread: load the task, run it on the data it needs."""
        if getattr(self._local, "bound", False) is False:
            self.runtime.bind()
            self._local.bound = True
        runtime = self.runtime
        try:
            if self.plugin_error is not None:
                raise self.plugin_error
            task = spec.load() if isinstance(spec, Serialized) else spec
            if runtime.observes_transitions:
                runtime.transition(key, "ready", "executing")
            value = task(self.state.data)
            if runtime.observes_transitions:
                runtime.transition(key, "executing", "memory")
            return True, value
        except BaseException as exc:
            if runtime.observes_transitions:
                runtime.transition(key, "executing", "error")
            return False, _pack_error(exc)

    # -- fetching from peers ---------------------------------------------------------------------
    async def _peer(self, address: str) -> Comm:
        lock = self._peer_locks.setdefault(address, asyncio.Lock())
        async with lock:
            comm = self._peers.get(address)
            if comm is None or comm.closed:
                comm = await connect(address, self.ssl_context)
                await connect_handshake(comm, self.auth_token, "worker", self.name)
                self._peers[address] = comm
            return comm

    async def _fetch(self, peer: str, keys: list[Any]) -> None:
        try:
            data = await get_data(
                await self._peer(peer), keys, self._peer_locks.setdefault("rpc:" + peer, asyncio.Lock())
            )
        except (OSError, CommClosedError, HandshakeError, KeyError) as exc:
            self._peers.pop(peer, None)
            self._do(self.state.fetch_failed(peer, keys, str(exc)))
            return
        self._do(self.state.fetched(peer, data))

    # -- serving peers and clients ---------------------------------------------------------------
    async def _handle_peer(self, comm: Comm) -> None:
        try:
            await asyncio.wait_for(accept(comm, self.auth_token, "worker"), 10)
        except (TimeoutError, HandshakeError, CommClosedError, ValueError) as exc:
            logger.warning("closed connection from %s: %s", comm.peer, exc)
            comm.close()
            return
        try:
            while True:
                msg = await comm.read()
                await comm.write(await self._peer_request(msg))
        except CommClosedError:
            pass

    async def _peer_request(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        if op == "get-data":
            data = self.state.data
            missing = [k for k in msg["keys"] if k not in data]
            if missing:
                return {"status": "missing", "keys": missing}
            out = {}
            for k in msg["keys"]:
                try:
                    out[k] = Serialized.of(data[k])
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
                self.state.data[k] = v
            return {"status": "OK", "nbytes": {k: _nbytes(v) for k, v in msg["data"].items()}}
        if op == "run":
            loop = asyncio.get_running_loop()
            ok, value = await loop.run_in_executor(self.executor, self._run_function, msg["func"], msg)
            return (
                {"status": "OK", "result": Serialized.of(value)}
                if ok
                else {"status": "error", "error": value}
            )
        return {"status": "error", "error": f"unknown request {op!r}"}

    def _run_function(self, func: Any, msg: dict[str, Any]) -> tuple[bool, Any]:
        if getattr(self._local, "bound", False) is False:
            self.runtime.bind()
            self._local.bound = True
        try:
            args, kwargs = msg["args"] if "args" in msg else ((), {})
            return True, func(*args, **kwargs)
        except BaseException as exc:
            return False, _pack_error(exc)

    async def _metrics_loop(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self.closed.is_set():
            if self.stream is not None:
                try:
                    self.stream.send(
                        {"op": "metrics", "metrics": {"memory": proc.memory_info().rss, "time": time.time()}}
                    )
                except CommClosedError:
                    return
            try:
                await asyncio.wait_for(self.closed.wait(), METRICS_INTERVAL)
            except TimeoutError:
                pass


async def get_data(comm: Comm, keys: list[Any], lock: asyncio.Lock | None = None) -> dict[Any, Any]:
    """Ask the worker on ``comm`` for ``keys``; values come back deserialized."""
    if lock is None:
        lock = asyncio.Lock()
    async with lock:
        await comm.write({"op": "get-data", "keys": keys})
        reply = await comm.read()
    if reply["status"] == "missing":
        raise KeyError(f"{comm.peer} does not hold {reply['keys']!r}")
    if reply["status"] == "unpicklable":
        from taskloom.serialize import SerializationError

        raise SerializationError(reply["error"])
    return {k: (v.load() if isinstance(v, Serialized) else v) for k, v in reply["data"].items()}


def _nbytes(value: Any) -> int:
    n = getattr(value, "nbytes", None)
    if isinstance(n, int):
        return n
    try:
        return sys.getsizeof(value)
    except Exception:
        return 0


def _pack_error(exc: BaseException) -> tuple[Any, str]:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob: Any = Serialized.of(exc)
    except Exception:
        blob = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
    return blob, text


async def run_worker(scheduler_address: str, **kwargs: Any) -> None:
    """Run a worker until the scheduler goes away or it is closed."""
    worker = await Worker(scheduler_address, **kwargs).start()
    await worker.closed.wait()
