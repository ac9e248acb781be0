"""The Client: submit work to a cluster, track it with Futures, gather results.

``Client()`` starts a :class:`~..cluster.local.LocalCluster`; ``Client("host:8786")`` joins a
running scheduler; ``Client(cluster)`` uses a cluster object.  Creating a client makes it the
default scheduler (``taskloom.config`` ``scheduler``) until it is closed.

The synchronous API runs the client's coroutines on an event loop thread of its own.
``Client(asynchronous=True)`` runs them on the caller's event loop instead: ``client = await
Client(asynchronous=True)`` or ``async with Client(asynchronous=True) as client:``, after which
the methods that talk to the cluster (``gather``, ``scatter``, ``close``, ...) return awaitables
and ``await future`` is a future's result.

Messages to the scheduler queue in an outbox that the loop flushes in one write, so a burst of
``submit`` calls costs one wake-up of the loop, not one each.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import uuid
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from taskloom import config
from taskloom.errors import TaskloomError, WorkerPluginError
from taskloom.graph import Key
from taskloom.tokenize import tokenize

from ..batched import BatchedSend
from ..comm import Comm, Security, Serialized, connect, connect_handshake
from ..comm.security import client_security
from ..config_snapshot import ConfigShipper
from ..loop import LoopThread
from .admin import ClusterAdmin
from .futures import Future, FutureState
from .graphs import by_value, collect_futures
from .pickling import TaskPickler, unpack_exception
from .refs import KeyRefs
from .results import Results
from .stream import SchedulerStream
from .stream import _call_logged as _call_logged  # re-exported: it was defined here
from .submit import _PLAIN as _PLAIN  # re-exported: these were defined here
from .submit import Submission
from .submit import _key as _key
from .submit import _restrictions as _restrictions
from .workers import WorkerCalls

logger = logging.getLogger("taskloom.distributed")

_current: list[Client] = []
_current_lock = threading.Lock()


def default_client() -> Client:
    """The most recently created open Client (raises ValueError if there is none)."""
    with _current_lock:
        for c in reversed(_current):
            if c.status == "running":
                return c
    raise ValueError("no taskloom Client is running: create one with taskloom.distributed.Client()")


class Client(Submission, SchedulerStream, KeyRefs, Results, WorkerCalls, ClusterAdmin):
    """A connection to a taskloom cluster."""

    def __init__(
        self,
        address: Any = None,
        *,
        asynchronous: bool = False,
        auth_token: str | None = None,
        security: Security | None = None,
        set_as_default: bool = True,
        timeout: float = 30.0,
        **cluster_kwargs: Any,
    ) -> None:
        self.status = "starting"
        self.security = security  # resolved (with the cluster's or the configured) when starting
        self._ssl_context: Any = None
        self._config_shipper = ConfigShipper()
        self.cluster: Any = None if isinstance(address, str) else address
        self.scheduler_address: str | None = address if isinstance(address, str) else None
        self._own_cluster = False
        self._cluster_kwargs = cluster_kwargs
        self.auth_token = auth_token
        self.timeout = timeout
        self.asynchronous = asynchronous
        self.id = f"client-{uuid.uuid4().hex[:12]}"
        self._states: dict[Key, FutureState] = {}
        self._inline_bytes = 0  # bytes of results that came inline and wait in FutureStates
        self._lock = threading.RLock()
        self._outbox: deque[dict[str, Any]] = deque()
        self._unheld: deque[FutureState] = deque()  # released by Futures, not yet counted
        self._releasing: dict[Key, int] = {}  # key -> barrier after its release (see _queue_release)
        self._barriers: dict[int, list[Key]] = {}
        self._flush_scheduled = False
        self._pickler = TaskPickler()
        self._func_tokens: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._rids = itertools.count()
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._workers: dict[str, Comm] = {}
        self._connect_locks: dict[str, asyncio.Lock] = {}
        self._rpc_locks: dict[str, asyncio.Lock] = {}
        self._stream: BatchedSend | None = None
        self._comm: Comm | None = None
        self._reader: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[Client] | None = None
        self._callback_pool: ThreadPoolExecutor | None = None
        self._config_context: Any = None
        self._set_as_default = set_as_default
        self._events: Any = None  # the diagnostics hooks of the compute being observed
        self._aliases: dict[Key, Key] = {}
        self._quiet: set[Key] = set()  # literal data submitted as tasks: no task events for them
        self._errors: dict[Key, BaseException] = {}
        self._event_error: BaseException | None = None
        self._loop_thread: LoopThread | None = None
        self._shared_loop = False  # the loop thread is the cluster's: the cluster stops it
        self.loop: asyncio.AbstractEventLoop | None = None
        if asynchronous:
            return  # started by ``await client`` / ``async with client``, on the caller's loop
        try:
            if self.cluster is None and self.scheduler_address is None:
                self._start_local_cluster()
            # a cluster this client started runs its scheduler on an event loop thread of this
            # process: the client shares it, so a message between them costs no thread switch
            shared = getattr(self.cluster, "loop_thread", None) if self._own_cluster else None
            self._shared_loop = shared is not None
            self._loop_thread = shared if shared is not None else LoopThread("taskloom-client-loop")
            self.loop = self._loop_thread.loop
            self._loop_thread.run(self._start())
        except BaseException:
            self._close_sync()
            raise

    # -- starting -----------------------------------------------------------------------------------
    def _start_local_cluster(self) -> None:
        from ..cluster.local import LocalCluster

        self.cluster = LocalCluster(**self._cluster_kwargs)
        self._own_cluster = True

    def __await__(self) -> Any:
        return self._start().__await__()

    async def __aenter__(self) -> Client:
        return await self._start()

    async def __aexit__(self, *exc: Any) -> None:
        await self._close_async()

    async def _start(self) -> Client:
        if self.status == "running":
            return self
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start_once())
        return await asyncio.shield(self._starting)

    async def _start_once(self) -> Client:
        loop = asyncio.get_running_loop()
        self.loop = loop
        try:
            if self.cluster is None and self.scheduler_address is None:
                await loop.run_in_executor(None, self._start_local_cluster)
            if self.cluster is not None:
                self.scheduler_address = self.cluster.scheduler_address
            self.security = client_security(self.security, self.auth_token, self.cluster)
            self.auth_token = self.security.token
            self._ssl_context = self.security.client_context()
            assert self.scheduler_address is not None
            comm = await connect(self.scheduler_address, self._ssl_context, timeout=self.timeout)
            await connect_handshake(comm, self.auth_token, "client")
            await comm.write({"op": "register-client", "client_id": self.id})
            batch = await comm.read()
            reply = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
            if not isinstance(reply, dict) or reply.get("op") != "registered":
                comm.close()
                raise TaskloomError(
                    f"the scheduler at {self.scheduler_address} refused this client: {reply!r}"
                )
        except BaseException:
            if self.asynchronous and self._own_cluster and self.cluster is not None:
                await loop.run_in_executor(None, self.cluster.close)
            raise
        self._comm = comm
        self._stream = BatchedSend(comm)
        self._reader = loop.create_task(self._read_loop(comm))
        self.status = "running"
        with _current_lock:
            _current.append(self)
        if self._set_as_default:
            self._config_context = config.set(scheduler=self)
        return self

    # -- plumbing -----------------------------------------------------------------------------------
    def _sync(self, coro: Any, timeout: float | None = None) -> Any:
        """Run ``coro`` on the client's loop and wait; an asynchronous client returns it to await."""
        if self.asynchronous:
            return coro
        if self._loop_thread is None or self.status == "closed":
            coro.close()
            raise TaskloomError(f"this client is {self.status}")
        return self._loop_thread.run(coro, timeout)

    def _check_running(self) -> None:
        if self.status != "running":
            raise TaskloomError(f"this client is {self.status}")

    def get_executor(self, **submit_kwargs: Any) -> Any:
        """A :class:`concurrent.futures.Executor` that runs calls on this client's cluster.

        ``submit_kwargs`` (``retries=``, ``pure=``) apply to every call; calls are impure by
        default, as with any executor.  Shutting the executor down leaves the client open.
        """
        from .executor import ClientExecutor

        return ClientExecutor(self, **submit_kwargs)

    # -- data and functions on workers -------------------------------------------------------------
    def scatter(self, data: Any, workers: list[str] | None = None, hash: bool = True) -> Any:
        """Put data on workers; a Future per value (same shape: value, list or dict)."""
        return self._sync(self._scatter(data, workers, hash))

    async def _scatter(self, data: Any, workers: list[str] | None, hash: bool = True) -> Any:
        info = await self._request("scheduler-info")
        addresses = workers or sorted(info["workers"])
        if not addresses:
            raise TaskloomError("scatter needs at least one worker")
        items = (
            list(data.items())
            if isinstance(data, dict)
            else [(None, v) for v in (data if isinstance(data, (list, tuple)) else [data])]
        )
        keyed = []
        for name, value in items:
            token = tokenize(value) if hash else uuid.uuid4().hex
            keyed.append((name if name is not None else f"{type(value).__name__}-{token}", value))
        per_worker: dict[str, dict[Key, Any]] = defaultdict(dict)
        for i, (key, value) in enumerate(keyed):
            per_worker[addresses[i % len(addresses)]][key] = value
        futures = dict(zip([k for k, _ in keyed], self._futures([k for k, _ in keyed])))
        for address, chunk in per_worker.items():
            msg = {"op": "update-data", "data": {k: Serialized.of(v) for k, v in chunk.items()}}
            reply = await self._worker_rpc(address, msg)
            await self._request("add-keys", worker=address, keys=reply["nbytes"])
            for key, value in chunk.items():
                futures[key]._state.finish(type(value).__name__, [address])
        if isinstance(data, dict):
            return futures
        out = [futures[k] for k, _ in keyed]
        return out if isinstance(data, (list, tuple)) else out[0]

    def run(
        self, func: Callable[..., Any], *args: Any, workers: Iterable[str] | None = None, **kwargs: Any
    ) -> Any:
        """Run ``func(*args, **kwargs)`` on every worker (or on ``workers``, a list of addresses),
        all at once: ``{worker address: result}``.

        A coroutine function is awaited on each worker's event loop; any other function runs on
        one of the worker's threads.  The first failure is raised, naming the worker.
        """
        return self._sync(self._run(func, args, kwargs, workers))

    async def _run(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        workers: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        info = await self._request("scheduler-info")
        known = info["workers"]
        if workers is None:
            addresses = sorted(known)
        else:
            addresses = list(dict.fromkeys([workers] if isinstance(workers, str) else workers))
            unknown = [a for a in addresses if a not in known]
            if unknown:
                listed = ", ".join(sorted(known)) or "none"
                raise ValueError(f"run: no worker at {', '.join(unknown)} (the workers: {listed})")
        msg = {"op": "run", "func": by_value(func), "args": Serialized.of((args, kwargs))}
        replies = await asyncio.gather(*(self._worker_rpc(address, msg) for address in addresses))
        out = {}
        for address, reply in zip(addresses, replies):
            if reply["status"] != "OK":
                error = reply["error"]
                if isinstance(error, str):
                    raise TaskloomError(f"run on {address} failed: {error}")
                raise unpack_exception(error[0], error[1], f"run on {address}")
            out[address] = _loaded(reply["result"])
        return out

    def run_on_scheduler(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``func`` in the scheduler's process and return its result."""
        return self._sync(self._run_on_scheduler(func, args, kwargs))

    async def _run_on_scheduler(self, func: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        result = await self._request(
            "run-on-scheduler", func=by_value(func), args=Serialized.of((args, kwargs))
        )
        return _loaded(result)

    def scheduler_info(self) -> Any:
        """The scheduler's address and its workers, each with address, name, nthreads,
        memory_limit, memory (bytes in use) and tasks (being processed)."""
        return self._sync(self._request("scheduler-info"))

    def who_has(self, futures: Any = None) -> Any:
        """``{key: [worker addresses]}`` for the futures given (a Future or a nesting), or all keys."""
        keys = None
        if futures is not None:
            flat: list[Future] = []
            collect_futures(futures, flat)
            keys = list(dict.fromkeys(f.key for f in flat))
        return self._sync(self._who_has(keys))

    async def _who_has(self, keys: list[Key] | None) -> dict[Key, list[str]]:
        who_has = await self._request("who-has", keys=keys)
        return {k: list(v) for k, v in who_has.items()}

    def has_what(self, workers: Iterable[str] | None = None) -> Any:
        """``{worker address: [keys it holds]}``, for every worker or those given."""
        return self._sync(self._has_what(None if workers is None else list(workers)))

    async def _has_what(self, workers: list[str] | None) -> dict[str, list[Key]]:
        has_what = await self._request("has-what")
        out: dict[str, list[Key]] = {w: list(keys) for w, keys in has_what.items()}
        return out if workers is None else {w: out.get(w, []) for w in workers}

    def register_worker_plugin(self, plugin: Any, name: str | None = None) -> Any:
        """Set ``plugin`` up on every current and future worker (replacing one of the same name)."""
        name = name or getattr(plugin, "name", None) or type(plugin).__qualname__
        return self._sync(self._register_worker_plugin(plugin, name))

    async def _register_worker_plugin(self, plugin: Any, name: str) -> str:
        reply = await self._request("register-plugin", name=name, plugin=by_value(plugin))
        if reply["errors"]:  # the first worker's failure, as the plugin's own exception
            address, error = next(iter(sorted(reply["errors"].items())))
            if not isinstance(error, dict):
                raise WorkerPluginError(name, address, RuntimeError(str(error)))
            cause = unpack_exception(error["exception"], error.get("traceback"), f"plugin {name!r}")
            raise WorkerPluginError(error.get("name", name), address, cause) from cause
        return name

    def restart(self, timeout: float = 60.0) -> Any:
        """Restart every worker (through its nanny) and forget every result on the cluster.

        The futures of every client fail with ``CancelledError`` ("its result was forgotten");
        returns ``{"workers": n}`` once all of them are back (an error after ``timeout`` s).  A
        worker without a nanny (``processes=False``) drops its data and registers again instead.
        """
        return self._sync(self._request("restart", timeout=timeout))

    def get_versions(self, check: bool = False) -> dict[str, Any]:
        """Versions that must agree: ``{"client": ..., "scheduler": ..., "workers": {address: ...}}``.

        Connections between mismatched versions are refused at the handshake already; with
        ``check=True`` any difference in these packages, down to the patch level, raises.
        """
        from ..comm.handshake import local_versions

        out = {
            "client": local_versions(),
            "scheduler": self.run_on_scheduler(local_versions),
            "workers": self.run(local_versions),
        }
        if check:
            every = {"scheduler": out["scheduler"], **{f"worker {a}": v for a, v in out["workers"].items()}}
            diffs = [
                f"{package} {mine} here but {theirs.get(package)} on the {where}"
                for where, theirs in every.items()
                for package, mine in out["client"].items()
                if theirs.get(package) != mine
            ]
            if diffs:
                raise TaskloomError("version mismatch: " + "; ".join(diffs))
        return out

    @property
    def dashboard_link(self) -> str:
        link = getattr(self.cluster, "dashboard_link", None)
        return link or "dashboard not available (see the distributed dashboard issue)"

    # -- closing ------------------------------------------------------------------------------------
    def close(self, timeout: float = 10) -> Any:
        """Release everything, disconnect, and stop the cluster this client started.

        Futures still pending are cancelled.  An asynchronous client returns an awaitable.
        """
        if self.asynchronous:
            return self._close_async()
        self._close_sync(timeout)
        return None

    def _begin_close(self) -> bool:
        if self.status in ("closed", "closing"):
            return False
        self.status = "closing"
        with _current_lock:
            if self in _current:
                _current.remove(self)
        if self._config_context is not None:
            self._config_context.__exit__(None, None, None)
            self._config_context = None
        with self._lock:
            states = list(self._states.values())
        for st in states:
            if not st.done():
                st.cancel()
        return True

    def _close_sync(self, timeout: float = 10) -> None:
        if not self._begin_close():
            return
        if self._loop_thread is not None and not self._loop_thread.loop.is_closed():
            try:
                self._loop_thread.run(self._close_comms(), timeout)
            except Exception:
                logger.debug("closing the client's connections failed", exc_info=True)
            if not self._shared_loop:
                self._loop_thread.stop()
        self._stop_callbacks()
        if self._own_cluster and self.cluster is not None:
            self.cluster.close()
        self.status = "closed"

    async def _close_async(self) -> None:
        if not self._begin_close():
            return
        await self._close_comms()
        self._stop_callbacks()
        if self._own_cluster and self.cluster is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.cluster.close)
        self.status = "closed"

    def _stop_callbacks(self) -> None:
        pool = self._callback_pool
        if pool is not None:
            on_it = threading.current_thread().name.startswith("taskloom-client-callback")
            pool.shutdown(wait=not on_it)

    async def _close_comms(self) -> None:
        self._flush()
        if self._stream is not None:
            await self._stream.close()
        for comm in self._workers.values():
            comm.close()
        if self._comm is not None:
            self._comm.close()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except BaseException:
                pass

    def __enter__(self) -> Client:
        if self.asynchronous:
            raise TypeError("an asynchronous Client is used with `async with`, not `with`")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.scheduler_address} {self.status}>"


def _loaded(value: Any) -> Any:
    return value.load() if isinstance(value, Serialized) else value
