"""The worker server: runs tasks the scheduler sends, serves its data to peers and clients.

It keeps one batched stream to the scheduler (task results, metrics; :mod:`.connection`) and
listens for peers (``get-data``: worker-to-worker transfers and client gathers; ``run``: a
function on this worker; :mod:`.transfer`).  Tasks run on ``nthreads`` threads fed from one queue
(:mod:`.runner`), results coming back to the event loop in batches; while tasks are short a few
more are queued per thread, so a thread goes on to the next without a round trip through the
loop.  :class:`~.state.WorkerState` decides what runs and what is fetched.  Worker plugins go
through the core's :class:`taskloom.worker.WorkerRuntime` so they behave as on every other
backend: installed packages' worker hooks are set up when the worker starts, user plugins in
registration order, all torn down in reverse when it stops.  When the scheduler goes away the
worker stops; a worker process ends even if a task is still running.

Task specifications stay frames until a task runs, so a task that cannot be unpickled here (a
module missing on this machine) fails that task with the reason, never the worker.  A client's
``config.set`` values arrive as ``client-config`` messages and are in force, on the running
thread only, while that client's tasks run (``taskloom.config.overlay``).

Memory (:mod:`.memory`, :mod:`.monitor`, :mod:`.pressure`): results live in a
:class:`~.memory.SpillBuffer` that writes the least recently used to disk past
``memory_limit * target``; a monitor checks the process memory every ``monitor_interval`` and
spills (past ``spill``), pauses (past ``pause``) or, in a worker process of its own, exits with
:data:`~.memory.MEMORY_EXIT_CODE` (past ``terminate``) for its nanny to restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import inspect
import logging
import math
import os
import pickle
import shutil
import signal
import ssl
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
from taskloom import config as tl_config
from taskloom.errors import WorkerPluginError
from taskloom.worker import Worker as CoreWorker
from taskloom.worker import WorkerRuntime

from .. import gctune, logbuffer
from ..batched import BatchedSend
from ..comm import Comm, CommClosedError, Security, Serialized, TLSServer, listen
from ..nanny.process import nanny_link
from .connection import STREAM_INTERVAL as STREAM_INTERVAL
from .connection import metrics_loop, register, scheduler_loop
from .memory import SpillBuffer, data_metrics, make_worker_directory, parse_memory_limit, sizeof
from .monitor import MemoryLimits, MemoryMonitor
from .pressure import memory_loop
from .runner import SKIPPED, Outcome, TaskRunner
from .state import WorkerState
from .transfer import TRANSFER_LOG_LENGTH, fetch, handle_peer
from .transfer import get_data as get_data

logger = logging.getLogger("taskloom.distributed.worker")

CLOSE_TIMEOUT = 5.0  # seconds a closing worker waits for running tasks before tearing down
SHORT_TASK = 0.002  # seconds: while tasks take less (on average), a few more are queued per thread
PREFETCH_PER_THREAD = 16  # tasks queued per thread beyond the running one while tasks are short


class Worker:
    """A worker connected to the scheduler at ``scheduler_address``."""

    def __init__(
        self,
        scheduler_address: str,
        nthreads: int = 1,
        memory_limit: int | str = 0,
        name: str = "",
        host: str = "127.0.0.1",
        port: int = 0,
        auth_token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        config: dict[str, Any] | None = None,
        *,
        local_directory: str | None = None,
        memory_target_fraction: float | bool | None = None,
        memory_spill_fraction: float | bool | None = None,
        memory_pause_fraction: float | bool | None = None,
        memory_terminate_fraction: float | bool | None = None,
        owns_process: bool = False,
        security: Security | None = None,
    ) -> None:
        self.scheduler_address = scheduler_address
        client_ssl_context = None
        if security is not None:  # a token and/or TLS files; explicit arguments win
            auth_token = auth_token or security.token
            ssl_context = ssl_context or security.server_context()
            client_ssl_context = security.client_context()
        self.client_ssl_context = client_ssl_context  # for connections this worker opens
        self.owns_process = owns_process
        self._gc_raised = False  # see gctune: raised while it runs
        self.configs: dict[str, Any] = {}  # client config id -> its config.set values
        self.nthreads = nthreads
        self.memory_limit = parse_memory_limit(memory_limit, nthreads)
        self._init_memory(
            local_directory,
            owns_process,
            target=memory_target_fraction,
            spill=memory_spill_fraction,
            pause=memory_pause_fraction,
            terminate=memory_terminate_fraction,
        )
        self.name = name
        self.host = host
        self.port = port
        self.auth_token = auth_token
        self.ssl_context = ssl_context
        self.address = ""
        self.state = WorkerState(nthreads, data=self.data)
        self.executor = ThreadPoolExecutor(nthreads, thread_name_prefix="taskloom-worker")  # run, plugins
        self.runner: TaskRunner | None = None  # the task threads (started with the worker)
        self._mean_duration = 10 * SHORT_TASK  # of recent tasks; no prefetching until measured
        self.server: asyncio.Server | TLSServer | None = None
        self.stream: BatchedSend | None = None
        self.closed = asyncio.Event()
        self._peers: dict[str, Comm] = {}
        self._peer_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.runtime = WorkerRuntime(CoreWorker(name or "worker", "distributed"))
        self.plugin_error: BaseException | None = None
        self._plugin_version = 0
        self._plugin_objects: dict[str, tuple[list[bytes], Any]] = {}  # name -> (frames, object)
        self._local = threading.local()
        self.finished = asyncio.Event()  # set when close() has finished
        self.nanny = nanny_link()  # the nanny that started this process, if one did
        self.heartbeat_interval = float(tl_config.get("distributed.worker.heartbeat_interval", 0.5))
        # a result a client waits for, up to this many bytes, travels with the task-finished report
        self.inline_limit = int(tl_config.get("distributed.worker.inline_result_bytes", 65536) or 0)
        self.state.inline_limit = self.inline_limit
        self.reconnect_timeout = float(tl_config.get("distributed.worker.reconnect_timeout", 10))
        self._epoch = 0  # bumped each time the worker drops everything to register afresh
        self._lost_scheduler = False
        self.events = logbuffer.event_log()  # (time, op, key(s)) of recent messages and results
        # -- data fetch from peers (transfer records, comm timeouts): see .transfer
        self.transfer_log: deque[dict[str, Any]] = deque(maxlen=TRANSFER_LOG_LENGTH)
        self.runtime.worker.transfer_log = self.transfer_log  # type: ignore[attr-defined]

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> Worker:
        self.server = await listen(
            self.host, self.port, functools.partial(handle_peer, self), self.ssl_context
        )
        host, port = self.server.sockets[0].getsockname()[:2]
        self.address = f"{'tls' if self.ssl_context else 'tcp'}://{host}:{port}"
        self.state.address = self.address
        self.runtime.worker.name = self.name or self.address
        self.runtime.worker.address = self.address  # type: ignore[attr-defined]
        self.runtime.worker.data = self.data  # type: ignore[attr-defined]  # get_worker().data
        self.runtime.worker.state = self.state  # type: ignore[attr-defined]
        self.runtime.worker.memory_monitor = self.memory_monitor  # type: ignore[attr-defined]
        logbuffer.install()  # recent log records, for client.dump_cluster_state
        await self._sync_plugins({})  # installed packages' worker hooks: before the first task
        slots = self.nanny.slots if self.nanny is not None else None  # for a post-mortem
        self.runner = TaskRunner(
            self.nthreads,
            asyncio.get_running_loop(),
            self._run_task,
            self._report,
            mark=slots.acquire if slots is not None else None,
            unmark=slots.release if slots is not None else None,
            store=self._store_input,
        )
        comm = await register(self)
        self.stream = BatchedSend(comm, STREAM_INTERVAL)
        self._spawn(scheduler_loop(self, comm))
        self._spawn(metrics_loop(self))
        if self.memory_limits.monitored:
            self._spawn(memory_loop(self))
        if self.nanny is not None:
            self.nanny.started(self.address)
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # main thread only
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(
                    signal.SIGTERM, lambda: self._spawn(self.close("stopped by its nanny"))
                )
        if self.owns_process:
            # what exists now (modules, the worker itself) lives as long as the process: the cyclic
            # collector stops rescanning it in every full collection (with short tasks, a tenth of
            # the worker's time went there)
            gc.freeze()
        gctune.raise_threshold()
        self._gc_raised = True
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
        if self._gc_raised:
            self._gc_raised = False
            gctune.restore_threshold()
        if self.nanny is not None:  # so it does not restart this worker as if it had crashed
            self.nanny.closing(reason, self._lost_scheduler)
        if self.stream is not None:
            with contextlib.suppress(CommClosedError):
                self.stream.send({"op": "closing", "reason": reason})
            await self.stream.close()
            self.stream.comm.close()
        for comm in self._peers.values():
            comm.close()
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        # tasks still running get CLOSE_TIMEOUT s to finish before plugins are torn down; a
        # thread of its own, so that a task that never returns cannot hold the worker open
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def teardown() -> None:
            try:
                self._teardown()
            except BaseException:
                logger.exception("worker %s: closing failed", self.address)
            finally:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(_resolve, done)

        threading.Thread(target=teardown, name="taskloom-worker-close", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), CLOSE_TIMEOUT + 5)
        except TimeoutError:
            logger.warning(
                "worker %s: tasks still running after %g s; closing anyway", self.address, CLOSE_TIMEOUT
            )
        self.finished.set()

    def _teardown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + CLOSE_TIMEOUT
        if self.runner is not None:
            self.runner.stop(deadline)
        for thread in list(getattr(self.executor, "_threads", ())):
            thread.join(max(0.0, deadline - time.monotonic()))
        if isinstance(self.data, SpillBuffer):
            self.data.close()  # deletes the spill files
        if self.local_directory:
            shutil.rmtree(self.local_directory, ignore_errors=True)
        try:
            self.runtime.close()
        except Exception:
            logger.exception("worker plugin teardown failed")

    # -- plugins and the state machine's instructions ---------------------------------------------
    async def _sync_plugins(self, plugins: dict[str, Any]) -> dict[str, Any] | None:
        """Set up (and tear down) plugins to match ``plugins``, in order, on a task thread.

        Returns None, or the failure for the client: the plugin's name, its exception (frames)
        and traceback.  Until a later sync succeeds, every task here fails with that error.
        """
        loop = asyncio.get_running_loop()
        self._plugin_version += 1
        version = self._plugin_version

        def sync() -> None:
            loaded = {}
            for name, plugin in plugins.items():
                try:
                    loaded[name] = self._load_plugin(name, plugin)
                except BaseException as exc:
                    raise WorkerPluginError(name, self.runtime.worker.name, exc) from exc
            self.runtime.sync(version, loaded)

        try:
            await loop.run_in_executor(self.executor, sync)
        except WorkerPluginError as exc:
            self.plugin_error = exc
            logger.error("worker %s: %s", self.address or self.name, exc)
            blob, text = _pack_error(exc.error)
            return {"name": exc.name, "exception": blob, "traceback": text, "message": str(exc)}
        self.plugin_error = None
        return None

    def _load_plugin(self, name: str, plugin: Any) -> Any:
        """The plugin object; the same one as before while its frames are unchanged, so that a
        plugin registered earlier is not torn down and set up again when another one arrives."""
        if not isinstance(plugin, Serialized):
            return plugin
        frames = [bytes(f) for f in plugin.frames]
        cached = self._plugin_objects.get(name)
        if cached is not None and cached[0] == frames:
            return cached[1]
        obj = plugin.load()
        self._plugin_objects[name] = (frames, obj)
        return obj

    def _do(self, instructions: list[tuple[Any, ...]]) -> None:
        for ins in instructions:
            if ins[0] == "execute":
                self._execute(ins[1])
            elif ins[0] == "follow":
                self._follow(ins[1], ins[2])
            elif ins[0] == "unfollow":
                if self.runner is not None and self.runner.unfollow(ins[1]):
                    self._do(self.state.unfollowed(ins[1]))
            elif ins[0] == "fetch":
                self._spawn(fetch(self, ins[1], ins[2]))
            elif ins[0] == "send" and self.stream is not None:
                self.stream.send(ins[1])

    # -- running tasks ---------------------------------------------------------------------------
    def _execute(self, key: Any) -> None:
        ts = self.state.tasks.get(key)
        if ts is None or self.runner is None:
            self._do(self.state.executed(key, error=True))
            return
        self.runner.submit(key, ts.spec, self._epoch)

    def _follow(self, after: Any, key: Any) -> None:
        ts = self.state.tasks.get(key)
        if ts is None or self.runner is None or not self.runner.follow(after, key, ts.spec, self._epoch):
            self._do(self.state.unfollow(key))

    def _store_input(self, key: Any, value: Any, epoch: int) -> None:
        """On a task thread: the result a follower reads, stored before the loop hears of it."""
        if epoch == self._epoch:
            self.state.data[key] = value

    def _report(self, outcomes: list[Outcome]) -> None:
        """Tasks the threads finished (on the loop): the state machine is told, then the scheduler."""
        state, stream, events = self.state, self.stream, self.events
        mean = self._mean_duration
        for o in outcomes:
            if o.epoch != self._epoch:  # registered afresh since: this result is nobody's any more
                continue
            if o.value is SKIPPED:  # a follower whose input failed: it waits to be freed
                self._do(state.unfollow(o.key))
                continue
            if o.ok:
                value = o.value
                limit = state.relay_limit(o.key)
                self._do(state.executed(o.key, value, stored=o.stored))
                duration = o.stop - o.start
                mean = 0.5 * mean + 0.5 * duration
                nbytes = _nbytes(value)
                msg = {
                    "op": "task-finished",
                    "key": o.key,
                    "nbytes": nbytes,
                    "type": type(value).__name__,
                    "duration": duration,
                    "start": o.start,
                    "stop": o.stop,
                }
                if limit and nbytes <= limit:
                    packed = _inline_value(value, limit)
                    if packed is not None:
                        msg["value"] = packed
            else:
                self._do(state.executed(o.key, error=True))
                exc, tb = o.value
                msg = {
                    "op": "task-erred",
                    "key": o.key,
                    "exception": exc,
                    "traceback": tb,
                    "start": o.start,
                    "stop": o.stop,
                }
            events.append((o.stop, msg["op"], o.key))
            if stream is not None:
                try:
                    stream.send(msg)
                except CommClosedError:
                    pass
        self._mean_duration = mean
        prefetch = PREFETCH_PER_THREAD * self.nthreads if mean < SHORT_TASK else 0
        if prefetch != state.prefetch:
            self._do(state.set_prefetch(prefetch))

    def _run_task(self, key: Any, spec: Any) -> tuple[bool, Any]:
        """On an executor thread: load the task, run it on the data it needs."""
        self._bind_thread()
        runtime = self.runtime
        try:
            if self.plugin_error is not None:
                raise self.plugin_error
            config_id = None
            if type(spec) is tuple:  # (spec, id of the submitting client's config)
                spec, config_id = spec
            if type(spec) is bytes:  # a task pickled without out-of-band buffers (see client.pickling)
                task = pickle.loads(spec)
            else:
                task = spec.load() if isinstance(spec, Serialized) else spec
            if runtime.observes_transitions:
                runtime.transition(key, "ready", "executing")
            if config_id is None:
                value = task(self.state.data)
            else:
                with tl_config.overlay(self._client_config(config_id)):
                    value = task(self.state.data)
            if runtime.observes_transitions:
                runtime.transition(key, "executing", "memory")
            return True, value
        except BaseException as exc:
            if runtime.observes_transitions:
                runtime.transition(key, "executing", "error")
            return False, _pack_error(exc)

    def _client_config(self, config_id: str) -> dict[str, Any]:
        """The ``config.set`` values of config ``config_id``, unpickled once."""
        values = self.configs.get(config_id)
        if values is None:
            raise RuntimeError(f"worker {self.address}: the client configuration {config_id!r} never arrived")
        if isinstance(values, Serialized):
            values = self.configs[config_id] = values.load()
        return values

    async def run_function(self, func: Any, msg: dict[str, Any]) -> dict[str, Any]:
        """The reply to a client's ``run``: ``func`` called on an executor thread, or awaited on
        this worker's event loop when it is a coroutine function; its result serialized here, so
        a result that cannot be pickled is reported (naming its type) like an exception."""
        args, kwargs = msg["args"] if "args" in msg else ((), {})
        try:
            if inspect.iscoroutinefunction(func):
                value = await func(*args, **kwargs)
            else:
                loop = asyncio.get_running_loop()
                value = await loop.run_in_executor(self.executor, self._call_bound, func, args, kwargs)
            return {"status": "OK", "result": Serialized.of(value)}
        except (Exception, SystemExit) as exc:
            return {"status": "error", "error": _pack_error(exc)}

    def _call_bound(self, func: Any, args: Any, kwargs: Any) -> Any:
        """On an executor thread: ``func(*args, **kwargs)``, the thread bound to this worker."""
        self._bind_thread()
        return func(*args, **kwargs)

    def _bind_thread(self) -> None:
        """The calling thread's ``taskloom.get_worker()`` is this worker (bound once per thread)."""
        if getattr(self._local, "bound", False) is False:
            self.runtime.bind()
            self._local.bound = True

    # -- memory ------------------------------------------------------------------------------------
    def _init_memory(self, local_directory: str | None, owns_process: bool, **fractions: Any) -> None:
        limits = MemoryLimits.from_config(self.memory_limit, **fractions)
        if not owns_process and limits.terminate is not None:
            # a worker inside another program (processes=False) cannot be restarted: never exit
            limits = attrs.evolve(limits, terminate=None)
        self.memory_limits = limits
        self.memory_monitor = MemoryMonitor(limits)
        self.local_directory = ""
        self.data: MutableMapping[Any, Any] = {}
        if limits.spills:
            self.local_directory = make_worker_directory(local_directory)
            target = limits.bytes("target")
            self.data = SpillBuffer(
                os.path.join(self.local_directory, "spill"), math.inf if target is None else target
            )

    def _metrics(self, rss: int) -> dict[str, Any]:
        status = self.memory_monitor.status
        if status == "running" and self.state.paused:
            status = "paused"
        return {
            "memory": rss,
            "time": time.time(),
            "status": status,
            "ready": len(self.state.ready),
            "executing": len(self.state.executing),
            **data_metrics(self.data),
        }

    def _send_metrics(self, rss: int) -> None:
        if self.stream is not None:
            try:
                self.stream.send({"op": "metrics", "metrics": self._metrics(rss)})
            except CommClosedError:
                pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _nbytes(value: Any) -> int:
    return sizeof(value)


def _inline_value(value: Any, limit: int) -> tuple[str, list[bytes]] | None:
    """``value`` as (serializer name, frames) to travel inside a message, or None when it is
    larger than ``limit`` bytes pickled or cannot be pickled (the client then fetches it, and a
    fetch reports the pickling error with the key)."""
    try:
        ser = Serialized.of(value)
    except Exception:
        return None
    if ser.nbytes > limit:
        return None
    return ser.name, [bytes(f) for f in ser.frames]


def _pack_error(exc: BaseException) -> tuple[Any, str]:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob: Any = Serialized.of(exc)
    except Exception:
        blob = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
    return blob, text


async def run_worker(scheduler_address: str, *, exit_process: bool = False, **kwargs: Any) -> None:
    """Run a worker until the scheduler goes away or it is closed.

    ``exit_process``: the worker is this whole process -- when it has closed, end the process
    at once (``os._exit``), so that a task still running cannot keep it alive as an orphan.
    """
    kwargs.setdefault("owns_process", True)  # so it may exit past the memory terminate threshold
    worker = await Worker(scheduler_address, **kwargs).start()
    await worker.closed.wait()
    await worker.finished.wait()
    if exit_process:
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
