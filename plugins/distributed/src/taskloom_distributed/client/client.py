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
import hashlib
import itertools
import logging
import threading
import types
import uuid
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from taskloom import config
from taskloom.errors import TaskloomError, WorkerPluginError
from taskloom.graph import Key, Task, flatten_keys, pack_results
from taskloom.local import task_events
from taskloom.order import plan
from taskloom.tokenize import tokenize

from ..batched import BatchedSend
from ..comm import Comm, CommClosedError, Security, Serialized, connect, connect_handshake
from ..comm.security import client_security
from ..config_snapshot import ConfigShipper, tag_tasks
from ..loop import LoopThread
from .admin import ClusterAdmin
from .futures import Future, FutureState
from .graphs import (
    by_value,
    collect_futures,
    holds_future,
    identity,
    replace_futures,
    rewrite,
    rewrite_task,
)
from .pickling import TaskPickler, unpack_exception
from .refs import KeyRefs
from .results import Results
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


def _call_logged(fn: Callable[[Future], Any], future: Future) -> None:
    try:
        fn(future)
    except Exception:
        logger.exception("done callback %r of %r raised", fn, future)


class Client(KeyRefs, Results, WorkerCalls, ClusterAdmin):
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
        self.loop: asyncio.AbstractEventLoop | None = None
        if asynchronous:
            return  # started by ``await client`` / ``async with client``, on the caller's loop
        try:
            if self.cluster is None and self.scheduler_address is None:
                self._start_local_cluster()
            self._loop_thread = LoopThread("taskloom-client-loop")
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

    async def _read_loop(self, comm: Comm) -> None:
        try:
            while True:
                for msg in await comm.read():
                    self._handle(msg)
        except CommClosedError:
            pass
        finally:
            if self.status == "running":
                self.status = "scheduler-lost"
                lost = TaskloomError(f"the scheduler at {self.scheduler_address} went away")
                with self._lock:
                    states = list(self._states.values())
                for st in states:
                    if not st.done():
                        st.error(lost, None)
                for fut in self._replies.values():
                    if not fut.done():
                        fut.set_exception(lost)

    def _handle(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "key-in-memory":
            key = msg["key"]
            st = self._states.get(key)
            if st is not None and key not in self._releasing:
                st.finish(msg.get("type", ""), msg.get("who_has"), self._keep_inline(msg.get("value")))
        elif op == "task-erred":
            key = msg["key"]
            st = self._states.get(key)
            if st is not None and key not in self._releasing:
                st.cause = msg.get("cause")
                st.error(msg.get("exception"), msg.get("traceback"))
        elif op == "reply":
            rid = msg["rid"]
            if rid in self._barriers:
                self._barrier_passed(rid)
            fut = self._replies.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif op == "task-event":
            self._task_event(msg)
        elif op == "task-retried":  # failed, and now running again (client.retry): pending again
            st = self._states.get(msg["key"])
            if st is not None and msg["key"] not in self._releasing:
                st.reset()
        elif op == "lost-data":  # its only holder died; it is being recomputed: pending again
            st = self._states.get(msg["key"])
            if st is not None and st.status == "finished":
                with st.lock:
                    st.status, st.who_has = "pending", None
                    self._drop_inline(st)
                    if st.event is not None:
                        st.event.clear()
        elif op == "graph-error":
            for key in msg["keys"]:
                st = self._states.get(key)
                if st is not None and key not in self._releasing:
                    st.error(TaskloomError(msg["error"]), None)

    async def _request(self, op: str, **kwargs: Any) -> Any:
        self._check_running()
        assert self._stream is not None
        self._flush()  # what was submitted before this request reaches the scheduler first
        rid = next(self._rids)
        fut = self._replies[rid] = asyncio.get_running_loop().create_future()
        self._stream.send({"op": op, "rid": rid, **kwargs})
        reply = await fut
        if "error" in reply:
            raise TaskloomError(f"the scheduler could not {op}: {reply['error']}")
        return reply["result"]

    # -- submitting ---------------------------------------------------------------------------------
    def submit(
        self, func: Callable[..., Any], *args: Any, key: Key | None = None, pure: bool = True,
        retries: int = 0, workers: Any = None, allow_other_workers: bool = False, **kwargs: Any,
    ) -> Future:  # fmt: skip
        """Run ``func(*args, **kwargs)`` on the cluster; Futures among the arguments are their values.

        ``key`` names the task (default: the function's name and a hash of the call when
        ``pure``, else a random one); ``retries`` runs it again that many times if it raises;
        ``workers`` (an address or a worker name, or a list of them) restricts it to those workers
        (it waits while none of them is there), a preference only with ``allow_other_workers``.
        """
        return self._submit(
            func, args, kwargs, key=key, pure=pure, retries=retries,
            workers=workers, allow_other_workers=allow_other_workers,
        )  # fmt: skip

    def _submit(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any],
        key: Key | None = None, pure: bool = True, retries: int = 0, workers: Any = None,
        allow_other_workers: bool = False,
    ) -> Future:  # fmt: skip
        if not callable(func):
            raise TypeError(f"submit needs a callable first, got {type(func).__name__}")
        self._check_running()
        where = _restrictions(workers, allow_other_workers)
        if key is None:
            key = _key(func, self._call_token(func, kwargs) if pure else None, args)
        deps: set[Key] = set()
        task = Task(
            func,
            *[replace_futures(a, deps, self) for a in args],
            **{k: replace_futures(v, deps, self) for k, v in kwargs.items()},
        )
        spec = self._pickler.dumps(key, task)
        new: set[Key] = set()
        [future] = self._futures([key], new)
        if new:  # a key this client holds already is computed (or being computed) once
            self._send_graph({key: (spec, sorted(deps, key=repr))}, [key], {key: 0}, retries, where)
        return future

    def map(
        self, func: Callable[..., Any], *iterables: Iterable[Any], key: Any = None, pure: bool = True,
        retries: int = 0, workers: Any = None, allow_other_workers: bool = False, **kwargs: Any,
    ) -> list[Future]:  # fmt: skip
        """``submit`` for each element (or zipped elements); one message for all of them."""
        return self._map(
            func, iterables, kwargs, key=key, pure=pure, retries=retries,
            workers=workers, allow_other_workers=allow_other_workers,
        )  # fmt: skip

    def _map(
        self, func: Callable[..., Any], iterables: tuple[Iterable[Any], ...], kwargs: Mapping[str, Any],
        key: Any = None, pure: bool = True, retries: int = 0, workers: Any = None,
        allow_other_workers: bool = False,
    ) -> list[Future]:  # fmt: skip
        if not callable(func):
            raise TypeError(f"map needs a callable first, got {type(func).__name__}")
        self._check_running()
        where = _restrictions(workers, allow_other_workers)
        kw_deps: set[Key] = set()
        kwargs = {k: replace_futures(v, kw_deps, self) for k, v in kwargs.items()}
        base = self._call_token(func, kwargs) if pure else None
        dumps = self._pickler.dumps
        tasks: dict[Key, tuple[Any, list[Key]]] = {}
        keys: list[Key] = []
        for i, args in enumerate(zip(*iterables)):
            if key is not None:
                k = key[i] if isinstance(key, list) else f"{key}-{i}"
            else:
                k = _key(func, base, args)
            keys.append(k)
            if k in tasks:
                continue
            deps = set(kw_deps)
            task = Task(func, *[replace_futures(a, deps, self) for a in args], **kwargs)
            tasks[k] = (dumps(k, task), sorted(deps, key=repr) if deps else [])
        new: set[Key] = set()
        futures = self._futures(keys, new)
        if len(new) < len(tasks):
            tasks = {k: v for k, v in tasks.items() if k in new}
        if tasks:
            self._send_graph(tasks, list(tasks), {k: i for i, k in enumerate(tasks)}, retries, where)
        return futures

    def _call_token(self, func: Callable[..., Any], kwargs: Mapping[str, Any]) -> str:
        """The token of ``func`` with ``kwargs``; for a function known by its name alone (no
        keyword arguments), computed once per function."""
        if kwargs or type(func) is not types.FunctionType or "<" in func.__qualname__:
            return tokenize(func, kwargs)
        token = self._func_tokens.get(func)
        if token is None:
            token = self._func_tokens[func] = tokenize(func, kwargs)
        return token

    def _send_graph(
        self, tasks: Mapping[Key, Any], keys: list[Key], priorities: dict[Key, int], retries: int = 0,
        where: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self._check_running()
        events = task_events()
        self._events = events if events.active else None
        cid = self._config_shipper.current(self._post)  # this client's config.set values, for the workers
        self._post(
            {
                "op": "update-graph",
                "tasks": dict(tasks) if cid is None else tag_tasks(dict(tasks), cid),
                "keys": keys,
                "priorities": priorities,
                "retries": retries,
                "observe": events.active,
                **(where or {}),
            }
        )

    def _submit_graph(
        self, graph: Mapping[Key, Any], keys: list[Key], retries: int = 0, private: bool = False,
        where: dict[str, Any] | None = None,
    ) -> list[Future]:  # fmt: skip
        """Validate, order and submit a task graph; one Future per requested key.

        ``private``: the graph's keys get a per-call prefix on the cluster, so a ``get`` never
        shares (or collides with) results of another call that happens to use the same key names.
        """
        self._check_running()
        existing = {k: v for k, v in graph.items() if isinstance(v, Future) and v.key == k}
        p = plan({k: (Task(identity, None) if k in existing else v) for k, v in graph.items()}, keys)
        prefix = f"get-{uuid.uuid4().hex[:16]}" if private else None
        names: dict[Key, Key] = {}
        if prefix is not None:
            names = {k: (prefix, k) for k in (*p.order, *p.literals) if k not in existing}
            self._aliases = {v: k for k, v in names.items()}  # diagnostics report the caller's keys
        dumps = self._pickler.dumps
        tasks: dict[Key, Any] = {}
        for k in p.order:
            if k in existing:
                continue
            deps: set[Key] = set()
            task = (
                rewrite_task(p.tasks[k], names, deps)
                if names or holds_future(p.tasks[k].args)
                else p.tasks[k]
            )
            if not names:
                deps |= set(p.tasks[k].dependencies)
            name = names.get(k, k)
            tasks[name] = (dumps(k, task), sorted(deps, key=repr))
        self._quiet = {names.get(k, k) for k in p.literals}
        self._errors = {}
        for k, v in p.literals.items():
            deps = set()
            name = names.get(k, k)
            tasks[name] = (dumps(k, Task(identity, rewrite(v, names, deps))), sorted(deps, key=repr))
        priorities = {names.get(k, k): i for i, k in enumerate((*p.literals, *p.order))}
        wanted = [names.get(k, k) for k in keys]
        futures = self._futures(wanted)
        self._send_graph(tasks, list(dict.fromkeys(wanted)), priorities, retries, where)
        return futures

    def get(self, graph: Mapping[Key, Any], keys: Any, retries: int = 0, **kwargs: Any) -> Any:
        """Compute ``keys`` of ``graph`` on the cluster; results shaped like ``keys``."""
        flat = flatten_keys(keys)
        self._event_error = None
        futures = self._submit_graph(graph, flat, retries, private=True)
        return self._sync(self._get_results(futures, keys, flat))

    async def _get_results(self, futures: list[Future], keys: Any, flat: list[Key]) -> Any:
        try:
            values = await self._gather_values(futures)
        finally:  # the results are here (or failed): let the cluster forget them now
            for f in futures:
                f.release()
            error, self._event_error = self._event_error, None
            if error is not None:
                raise error
        if type(keys) is not list:
            return values[futures[0].key]
        return pack_results(keys, {k: values[f.key] for k, f in zip(flat, futures)})

    def compute(
        self, collections: Any, retries: int = 0, workers: Any = None, allow_other_workers: bool = False
    ) -> Any:
        """Start computing collection(s); a Future per collection (a list for a list).

        ``workers``/``allow_other_workers`` restrict every task of the graphs, as in ``submit``.
        """
        where = _restrictions(workers, allow_other_workers)
        single = not isinstance(collections, (list, tuple))
        colls = [collections] if single else list(collections)
        out = []
        for c in colls:
            keys = flatten_keys(c.__taskloom_keys__())
            futures = self._submit_graph(c.__taskloom_graph__(), keys, retries, where=where)
            out.append(futures[0] if len(futures) == 1 else futures)
        return out[0] if single else out

    def persist(
        self, collections: Any, retries: int = 0, workers: Any = None, allow_other_workers: bool = False
    ) -> Any:
        """Compute collection(s) on the cluster and return collections backed by the results there
        (``workers``/``allow_other_workers`` as in ``compute``)."""
        from taskloom.delayed import Delayed

        where = _restrictions(workers, allow_other_workers)
        single = not isinstance(collections, (list, tuple))
        colls = [collections] if single else list(collections)
        out: list[Any] = []
        for c in colls:
            keys = flatten_keys(c.__taskloom_keys__())
            futures = self._submit_graph(c.__taskloom_graph__(), keys, retries, where=where)
            if isinstance(c, Delayed) and len(futures) == 1:
                out.append(Delayed(c.key, futures[0], (), c._length))
            else:
                out.append(futures)
        return out[0] if single else out

    def retry(self, futures: Any) -> Any:
        """Run failed futures (a Future or a nesting of them) again, in place: the same keys and
        Future objects, pending again until the new outcome; the failed tasks upstream that
        caused their errors run again too, and so do the failed dependents that inherited them
        (their futures, of any client, are pending again).  A future that did not fail is left
        as it is.  Returns once the scheduler took the request (an awaitable when asynchronous).
        """
        flat: list[Future] = []
        collect_futures(futures, flat)
        keys = []
        with self._lock:
            for f in flat:
                if f._state.status == "error" and self._states.get(f.key) is f._state:
                    f._state.reset()  # pending from now: result() waits for the new run
                    keys.append(f.key)
        return self._sync(self._retry(list(dict.fromkeys(keys))))

    async def _retry(self, keys: list[Key]) -> None:
        if keys:
            await self._request("retry", keys=keys)

    def get_executor(self, **submit_kwargs: Any) -> Any:
        """A :class:`concurrent.futures.Executor` that runs calls on this client's cluster.

        ``submit_kwargs`` (``retries=``, ``pure=``) apply to every call; calls are impure by
        default, as with any executor.  Shutting the executor down leaves the client open.
        """
        from .executor import ClientExecutor

        return ClientExecutor(self, **submit_kwargs)

    def _task_event(self, msg: dict[str, Any]) -> None:
        """A task finished or failed: the diagnostics hooks of the observed compute fire here."""
        events = self._events
        if events is None or msg["key"] in self._quiet:
            return
        key = self._aliases.get(msg["key"], msg["key"])
        error = msg.get("error")
        try:
            if error is not None:
                error = self._errors.get(msg["key"]) or unpack_exception(error, None, key)
                self._errors[msg["key"]] = error
            if events.start is not None:
                events.start(key=key, worker=msg["worker"])
            if events.finish is not None:
                nbytes = None if error is not None else msg.get("nbytes")
                worker, duration = msg["worker"], msg["duration"]
                events.finish(key=key, worker=worker, duration=duration, error=error, nbytes=nbytes)
        except BaseException as exc:  # a callback's error reaches the caller of the compute
            if self._event_error is None:
                self._event_error = exc

    def _run_callback(self, fn: Callable[[Future], Any], future: Future) -> None:
        """Run a user's done callback on the client's callback thread (errors are logged)."""
        pool = self._callback_pool
        if pool is None:
            with self._lock:
                if self._callback_pool is None:
                    self._callback_pool = ThreadPoolExecutor(1, thread_name_prefix="taskloom-client-callback")
                pool = self._callback_pool
        try:
            pool.submit(_call_logged, fn, future)
        except RuntimeError:  # the client closed: run it here rather than drop it
            _call_logged(fn, future)

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

    def run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``func`` on every worker: ``{worker address: result}``."""
        return self._sync(self._run(func, args, kwargs))

    async def _run(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        info = await self._request("scheduler-info")
        out = {}
        for address in sorted(info["workers"]):
            msg = {"op": "run", "func": by_value(func), "args": Serialized.of((args, kwargs))}
            reply = await self._worker_rpc(address, msg)
            if reply["status"] != "OK":
                blob, text = reply["error"]
                raise unpack_exception(blob, text, f"run on {address}")
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


_PLAIN = frozenset((int, float, str, bytes, bool, type(None)))


def _restrictions(workers: Any, allow_other_workers: bool) -> dict[str, Any] | None:
    """The ``workers=`` of a submission as sent to the scheduler (None: unrestricted)."""
    if workers is None:
        if allow_other_workers:
            raise ValueError("allow_other_workers=True needs workers= (the workers to prefer)")
        return None
    names = [workers] if isinstance(workers, str) else workers
    try:
        names = list(names)
    except TypeError:
        names = [names]
    bad = [w for w in names if not isinstance(w, str)]
    if bad or not names:
        raise TypeError(f"workers= takes a worker address or name, or a list of them; got {workers!r}")
    return {"workers": names, "allow_other_workers": bool(allow_other_workers)}


def _key(func: Callable[..., Any], token: str | None, args: tuple[Any, ...]) -> str:
    """A task key: the function's name and a hash of the call (``token`` None: a random one)."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if token is None:
        return f"{name}-{uuid.uuid4().hex}"
    for a in args:
        if type(a) not in _PLAIN:
            return f"{name}-{tokenize(token, args)}"
    digest = hashlib.sha1(repr((token, args)).encode(), usedforsecurity=False).hexdigest()
    return f"{name}-{digest[:24]}"  # plain arguments: their repr is a stable identity


def _loaded(value: Any) -> Any:
    return value.load() if isinstance(value, Serialized) else value
