"""The Client: submit work to a cluster, track it with Futures, gather results.

``Client()`` starts a :class:`~..cluster.local.LocalCluster`; ``Client("host:8786")`` joins a
running scheduler; ``Client(cluster)`` uses a cluster object.  Creating a client makes it the
default scheduler (``taskloom.config`` ``scheduler``) until it is closed.  The synchronous API
runs the client's coroutines on an event loop thread; ``Client(asynchronous=True)`` exposes
them to a running asyncio loop instead (``await client.submit(...)``).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from taskloom import config
from taskloom.errors import TaskloomError, WorkerPluginError
from taskloom.graph import Key, Ref, Task, flatten_keys, pack_results
from taskloom.local import task_events
from taskloom.order import plan
from taskloom.serialize import cloudpickle_dumps
from taskloom.tokenize import tokenize

from ..batched import BatchedSend
from ..comm import Comm, CommClosedError, Serialized, connect, connect_handshake
from ..loop import LoopThread
from ..worker.server import get_data
from .futures import CancelledError, Future, FutureState
from .pickling import dumps_task, unpack_exception

_current: list[Client] = []
_current_lock = threading.Lock()


def default_client() -> Client:
    """The most recently created open Client (raises ValueError if there is none)."""
    with _current_lock:
        for c in reversed(_current):
            if c.status == "running":
                return c
    raise ValueError("no taskloom Client is running: create one with taskloom.distributed.Client()")


class Client:
    """A connection to a taskloom cluster."""

    def __init__(
        self,
        address: Any = None,
        *,
        asynchronous: bool = False,
        auth_token: str | None = None,
        set_as_default: bool = True,
        timeout: float = 30.0,
        **cluster_kwargs: Any,
    ) -> None:
        self.status = "starting"
        self.cluster: Any = None
        self._own_cluster = False
        if address is None:
            from ..cluster.local import LocalCluster

            self.cluster = LocalCluster(**cluster_kwargs)
            self._own_cluster = True
        elif not isinstance(address, str):
            self.cluster = address
        if self.cluster is not None:
            self.scheduler_address = self.cluster.scheduler_address
            auth_token = auth_token or self.cluster.auth_token
        else:
            self.scheduler_address = address
            auth_token = auth_token or config.get("distributed.comm.auth", None)
        self.auth_token = auth_token
        self.timeout = timeout
        self.asynchronous = asynchronous
        self.id = f"client-{uuid.uuid4().hex[:12]}"
        self._states: dict[Key, FutureState] = {}
        self._refcount: dict[Key, int] = defaultdict(int)
        self._lock = threading.RLock()
        self._rids = itertools.count()
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._workers: dict[str, Comm] = {}
        self._worker_locks: dict[str, asyncio.Lock] = {}
        self._stream: BatchedSend | None = None
        self._config_context: Any = None
        self._set_as_default = set_as_default
        self._events: Any = None  # the diagnostics hooks of the compute being observed
        self._aliases: dict[Key, Key] = {}
        self._quiet: set[Key] = set()  # literal data submitted as tasks: no task events for them
        self._errors: dict[Key, BaseException] = {}
        self._event_error: BaseException | None = None
        self._loop_thread: LoopThread | None = None
        if asynchronous:
            self.loop = asyncio.get_event_loop()
        else:
            self._loop_thread = LoopThread("taskloom-client-loop")
            self.loop = self._loop_thread.loop
            self._sync(self._start())

    # -- plumbing ---------------------------------------------------------------------------------
    def _sync(self, coro: Any, timeout: float | None = None) -> Any:
        if self._loop_thread is None:
            return coro
        return self._loop_thread.run(coro, timeout)

    def __await__(self) -> Any:
        return self._start().__await__()

    async def _start(self) -> Client:
        comm = await connect(self.scheduler_address, timeout=self.timeout)
        await connect_handshake(comm, self.auth_token, "client")
        await comm.write({"op": "register-client", "client_id": self.id})
        batch = await comm.read()
        reply = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
        if not isinstance(reply, dict) or reply.get("op") != "registered":
            raise TaskloomError(f"the scheduler refused this client: {reply!r}")
        self._comm = comm
        self._stream = BatchedSend(comm)
        self._reader = asyncio.get_running_loop().create_task(self._read_loop(comm))
        self.status = "running"
        with _current_lock:
            _current.append(self)
        if self._set_as_default:
            self._config_context = config.set(scheduler=self)
        return self

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
                with self._lock:
                    for st in self._states.values():
                        if not st.done():
                            st.error(
                                TaskloomError(f"the scheduler at {self.scheduler_address} went away"), None
                            )
                for fut in self._replies.values():
                    if not fut.done():
                        fut.set_exception(
                            TaskloomError(f"the scheduler at {self.scheduler_address} went away")
                        )

    def _handle(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "key-in-memory":
            st = self._states.get(msg["key"])
            if st is not None:
                st.finish(msg.get("type", ""))
        elif op == "task-erred":
            st = self._states.get(msg["key"])
            if st is not None:
                st.cause = msg.get("cause")
                st.error(msg.get("exception"), msg.get("traceback"))
        elif op == "reply":
            fut = self._replies.pop(msg["rid"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif op == "task-event":
            self._task_event(msg)
        elif op == "graph-error":
            for key in msg["keys"]:
                st = self._states.get(key)
                if st is not None:
                    st.error(TaskloomError(msg["error"]), None)

    async def _request(self, op: str, **kwargs: Any) -> Any:
        assert self._stream is not None
        rid = next(self._rids)
        fut = self._replies[rid] = asyncio.get_running_loop().create_future()
        self._stream.send({"op": op, "rid": rid, **kwargs})
        reply = await fut
        if "error" in reply:
            raise TaskloomError(f"the scheduler could not {op}: {reply['error']}")
        return reply["result"]

    def _state_of(self, key: Key) -> FutureState:
        with self._lock:
            st = self._states.get(key)
            if st is None:
                st = self._states[key] = FutureState(key)
            return st

    def _inc_ref(self, key: Key) -> None:
        with self._lock:
            self._refcount[key] += 1

    def _dec_ref(self, key: Key) -> None:
        with self._lock:
            self._refcount[key] -= 1
            if self._refcount[key] > 0:
                return
            del self._refcount[key]
            self._states.pop(key, None)
        if self.status == "running" and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._release, [key])

    def _release(self, keys: list[Key]) -> None:
        if self._stream is not None and self.status == "running":
            try:
                self._stream.send({"op": "release-keys", "keys": keys})
            except CommClosedError:
                pass

    # -- submitting ---------------------------------------------------------------------------------
    def submit(
        self, func: Callable[..., Any], *args: Any, key: Key | None = None, pure: bool = True,
        retries: int = 0, **kwargs: Any,
    ) -> Future:  # fmt: skip
        """Run ``func(*args, **kwargs)`` on the cluster; Futures among the arguments are their values."""
        if not callable(func):
            raise TypeError(f"submit needs a callable first, got {type(func).__name__}")
        if key is None:
            name = getattr(func, "__name__", "func")
            key = f"{name}-{tokenize(func, args, kwargs) if pure else uuid.uuid4().hex}"
        deps: set[Key] = set()
        task = Task(
            func,
            *[_replace_futures(a, deps) for a in args],
            **{k: _replace_futures(v, deps) for k, v in kwargs.items()},
        )
        spec = dumps_task(key, task)
        future = Future(key, self)
        self._send_graph({key: (spec, sorted(deps, key=repr))}, [key], {key: 0}, retries)
        return future

    def map(
        self, func: Callable[..., Any], *iterables: Iterable[Any], key: Any = None, pure: bool = True,
        retries: int = 0, **kwargs: Any,
    ) -> list[Future]:  # fmt: skip
        """``submit`` for each element (or zipped elements); one message for all of them."""
        name = getattr(func, "__name__", "func")
        tasks: dict[Key, tuple[Any, list[Key]]] = {}
        keys: list[Key] = []
        for i, args in enumerate(zip(*iterables)):
            deps: set[Key] = set()
            if key is not None:
                k = key[i] if isinstance(key, list) else f"{key}-{i}"
            else:
                k = f"{name}-{tokenize(func, args, kwargs) if pure else uuid.uuid4().hex}"
            task = Task(func, *[_replace_futures(a, deps) for a in args], **kwargs)
            tasks[k] = (dumps_task(k, task), sorted(deps, key=repr))
            keys.append(k)
        futures = [Future(k, self) for k in keys]
        self._send_graph(tasks, list(dict.fromkeys(keys)), {k: i for i, k in enumerate(keys)}, retries)
        return futures

    def _send_graph(
        self, tasks: Mapping[Key, Any], keys: list[Key], priorities: dict[Key, int], retries: int = 0
    ) -> None:
        if self.status != "running":
            raise TaskloomError(f"this client is {self.status}")
        events = task_events()
        self._events = events if events.active else None
        msg = {
            "op": "update-graph",
            "tasks": dict(tasks),
            "keys": keys,
            "priorities": priorities,
            "retries": retries,
            "observe": events.active,
        }
        self.loop.call_soon_threadsafe(self._stream_send, msg)

    def _stream_send(self, msg: dict[str, Any]) -> None:
        if self._stream is not None:
            self._stream.send(msg)

    def _submit_graph(
        self, graph: Mapping[Key, Any], keys: list[Key], retries: int = 0, private: bool = False
    ) -> list[Future]:
        """Validate, order and submit a task graph; one Future per requested key.

        ``private``: the graph's keys get a per-call prefix on the cluster, so a ``get`` never
        shares (or collides with) results of another call that happens to use the same key names.
        """
        existing = {k: v for k, v in graph.items() if isinstance(v, Future) and v.key == k}
        p = plan({k: (Task(_identity, None) if k in existing else v) for k, v in graph.items()}, keys)
        prefix = f"get-{uuid.uuid4().hex[:16]}" if private else None
        names: dict[Key, Key] = {}
        if prefix is not None:
            names = {k: (prefix, k) for k in (*p.order, *p.literals) if k not in existing}
            self._aliases = {v: k for k, v in names.items()}  # diagnostics report the caller's keys
        tasks: dict[Key, Any] = {}
        for k in p.order:
            if k in existing:
                continue
            deps: set[Key] = set()
            task = (
                _rewrite_task(p.tasks[k], names, deps)
                if names or _holds_future(p.tasks[k].args)
                else p.tasks[k]
            )
            if not names:
                deps |= set(p.tasks[k].dependencies)
            name = names.get(k, k)
            tasks[name] = (dumps_task(k, task), sorted(deps, key=repr))
        self._quiet = {names.get(k, k) for k in p.literals}
        self._errors = {}
        for k, v in p.literals.items():
            deps = set()
            name = names.get(k, k)
            tasks[name] = (dumps_task(k, Task(_identity, _rewrite(v, names, deps))), sorted(deps, key=repr))
        priorities = {names.get(k, k): i for i, k in enumerate((*p.literals, *p.order))}
        wanted = [names.get(k, k) for k in keys]
        futures = [Future(k, self) for k in wanted]
        self._send_graph(tasks, list(dict.fromkeys(wanted)), priorities, retries)
        return futures

    def get(self, graph: Mapping[Key, Any], keys: Any, retries: int = 0, **kwargs: Any) -> Any:
        """Compute ``keys`` of ``graph`` on the cluster; results shaped like ``keys``."""
        flat = flatten_keys(keys)
        futures = self._submit_graph(graph, flat, retries, private=True)
        self._event_error = None
        try:
            values = self._gather_sync(futures)
        finally:  # the results are here (or failed): let the cluster forget them now
            for f in futures:
                f.release()
            error, self._event_error = self._event_error, None
            if error is not None:
                raise error
        if type(keys) is not list:
            return values[0]
        return pack_results(keys, dict(zip(flat, values)))

    def compute(self, collections: Any, retries: int = 0) -> Any:
        """Start computing collection(s); a Future per collection (a list for a list)."""
        single = not isinstance(collections, (list, tuple))
        colls = [collections] if single else list(collections)
        out = []
        for c in colls:
            keys = flatten_keys(c.__taskloom_keys__())
            futures = self._submit_graph(c.__taskloom_graph__(), keys, retries)
            out.append(futures[0] if len(futures) == 1 else futures)
        return out[0] if single else out

    def persist(self, collections: Any, retries: int = 0) -> Any:
        """Compute collection(s) on the cluster and return collections backed by the results there."""
        from taskloom.delayed import Delayed

        single = not isinstance(collections, (list, tuple))
        colls = [collections] if single else list(collections)
        out: list[Any] = []
        for c in colls:
            keys = flatten_keys(c.__taskloom_keys__())
            futures = self._submit_graph(c.__taskloom_graph__(), keys, retries)
            if isinstance(c, Delayed) and len(futures) == 1:
                out.append(Delayed(c.key, futures[0], (), c._length))
            else:
                out.append(futures)
        return out[0] if single else out

    # -- results ------------------------------------------------------------------------------------
    def gather(self, futures: Any, errors: str = "raise") -> Any:
        """Values of futures (a Future, or a list/dict nesting of them)."""
        flat: list[Future] = []
        _collect_futures(futures, flat)
        values = dict(zip([f.key for f in flat], self._gather_sync(flat)))
        return _rebuild(futures, values)

    def _gather_sync(self, futures: list[Future], timeout: float | None = None) -> list[Any]:
        if self.asynchronous:
            return self._gather_async(futures)  # type: ignore[return-value]
        return self._sync(self._gather_async(futures), timeout)

    async def _gather_async(self, futures: list[Future]) -> list[Any]:
        loop = asyncio.get_running_loop()
        for f in futures:
            st = f._state
            if not st.done():
                w = loop.create_future()
                st.waiters.append(w)
                if st.done():
                    w.set_result(None)
                await w
            if st.status == "error":
                raise self._exception_of(st)
            if st.status == "cancelled":
                raise CancelledError(f"future {f.key!r} was cancelled")
        keys = list(dict.fromkeys(f.key for f in futures))
        who_has = await self._request("who-has", keys=keys)
        by_worker: dict[str, list[Key]] = defaultdict(list)
        for k in keys:
            holders = who_has.get(k)
            if not holders:
                raise TaskloomError(f"no worker holds {k!r} any more")
            by_worker[holders[0]].append(k)
        data: dict[Key, Any] = {}
        for address, ks in by_worker.items():
            comm = await self._worker_comm(address)
            data.update(
                await get_data(comm, ks, self._worker_locks.setdefault("rpc:" + address, asyncio.Lock()))
            )
        return [data[f.key] for f in futures]

    def _exception_of(self, st: FutureState) -> BaseException:
        """The task's exception; the same object for every key that failed with it."""
        cause = st.cause if st.cause is not None else st.key
        exc = self._errors.get(cause)
        if exc is None:
            key = self._aliases.get(cause, cause)
            exc = self._errors[cause] = unpack_exception(st.exception, st.traceback, key)
        return exc

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
                events.finish(key=key, worker=msg["worker"], duration=msg["duration"], error=error)
        except BaseException as exc:  # a callback's error reaches the caller of the compute
            if self._event_error is None:
                self._event_error = exc

    async def _worker_comm(self, address: str) -> Comm:
        lock = self._worker_locks.setdefault(address, asyncio.Lock())
        async with lock:
            comm = self._workers.get(address)
            if comm is None or comm.closed:
                comm = await connect(address)
                await connect_handshake(comm, self.auth_token, "client")
                self._workers[address] = comm
            return comm

    def _cancel(self, futures: list[Future]) -> None:
        keys = [f.key for f in futures]
        for f in futures:
            f._state.cancel()
        self.loop.call_soon_threadsafe(self._release, keys)

    # -- data and functions on workers -------------------------------------------------------------
    def scatter(self, data: Any, workers: list[str] | None = None) -> Any:
        """Put data on workers; a Future per value (same shape: value, list or dict)."""
        return self._sync(self._scatter(data, workers))

    async def _scatter(self, data: Any, workers: list[str] | None) -> Any:
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
            key = name if name is not None else f"{type(value).__name__}-{tokenize(value)}"
            keyed.append((key, value))
        per_worker: dict[str, dict[Key, Any]] = defaultdict(dict)
        for i, (key, value) in enumerate(keyed):
            per_worker[addresses[i % len(addresses)]][key] = value
        futures = {key: Future(key, self) for key, _ in keyed}
        for address, chunk in per_worker.items():
            comm = await self._worker_comm(address)
            async with self._worker_locks.setdefault("rpc:" + address, asyncio.Lock()):
                await comm.write(
                    {"op": "update-data", "data": {k: Serialized.of(v) for k, v in chunk.items()}}
                )
                reply = await comm.read()
            await self._request("add-keys", worker=address, keys=reply["nbytes"])
            for key in chunk:
                futures[key]._state.finish()
        if isinstance(data, dict):
            return futures
        out = [futures[k] for k, _ in keyed]
        return out if isinstance(data, (list, tuple)) else out[0]

    def run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run ``func`` on every worker: ``{worker address: result}``."""
        return self._sync(self._run(func, args, kwargs))

    async def _run(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        info = await self._request("scheduler-info")
        out = {}
        for address in sorted(info["workers"]):
            comm = await self._worker_comm(address)
            async with self._worker_locks.setdefault("rpc:" + address, asyncio.Lock()):
                await comm.write(
                    {"op": "run", "func": _by_value(func), "args": Serialized.of((args, kwargs))}
                )
                reply = await comm.read()
            if reply["status"] != "OK":
                blob, text = reply["error"]
                raise unpack_exception(blob, text, f"run on {address}")
            out[address] = (
                reply["result"].load() if isinstance(reply["result"], Serialized) else reply["result"]
            )
        return out

    def run_on_scheduler(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``func`` in the scheduler's process and return its result."""
        result = self._sync(
            self._request("run-on-scheduler", func=_by_value(func), args=Serialized.of((args, kwargs)))
        )
        return result.load() if isinstance(result, Serialized) else result

    def scheduler_info(self) -> dict[str, Any]:
        """The scheduler's address and its workers: address, name, nthreads, memory_limit, memory, tasks."""
        return self._sync(self._request("scheduler-info"))

    def who_has(self, futures: Any = None) -> dict[Key, list[str]]:
        keys = (
            None
            if futures is None
            else [f.key for f in (futures if isinstance(futures, list) else [futures])]
        )
        return self._sync(self._request("who-has", keys=keys))

    def has_what(self) -> dict[str, list[Key]]:
        return self._sync(self._request("has-what"))

    def register_worker_plugin(self, plugin: Any, name: str | None = None) -> str:
        """Set ``plugin`` up on every current and future worker (replacing one of the same name)."""
        name = name or getattr(plugin, "name", None) or type(plugin).__qualname__
        reply = self._sync(self._request("register-plugin", name=name, plugin=_by_value(plugin)))
        if reply["errors"]:
            address, error = next(iter(reply["errors"].items()))
            raise WorkerPluginError(name, address, RuntimeError(error))
        return name

    @property
    def dashboard_link(self) -> str:
        link = getattr(self.cluster, "dashboard_link", None)
        return link or "dashboard not available (see the distributed dashboard issue)"

    # -- closing ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release everything, disconnect, and stop the cluster this client started."""
        if self.status in ("closed", "closing"):
            return
        self.status = "closing"
        with _current_lock:
            if self in _current:
                _current.remove(self)
        if self._config_context is not None:
            self._config_context.__exit__(None, None, None)
            self._config_context = None
        if self._loop_thread is not None and not self.loop.is_closed():
            try:
                self._sync(self._close_comms(), timeout=10)
            except Exception:
                pass
            self._loop_thread.stop()
        if self._own_cluster and self.cluster is not None:
            self.cluster.close()
        self.status = "closed"

    async def _close_comms(self) -> None:
        if self._stream is not None:
            await self._stream.close()
        for comm in self._workers.values():
            comm.close()
        self._comm.close()
        self._reader.cancel()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.scheduler_address} {self.status}>"


def _identity(x: Any) -> Any:
    return x


def _by_value(obj: Any) -> Serialized:
    """``obj`` pickled with cloudpickle: functions from ``__main__`` and lambdas travel by value."""
    return Serialized("cloudpickle", cloudpickle_dumps(obj))


def _replace_futures(obj: Any, deps: set[Key]) -> Any:
    if isinstance(obj, Future):
        deps.add(obj.key)
        return Ref(obj.key)
    if type(obj) is list:
        return [_replace_futures(x, deps) for x in obj]
    if type(obj) is tuple:
        return tuple(_replace_futures(x, deps) for x in obj)
    if type(obj) is dict:
        return {k: _replace_futures(v, deps) for k, v in obj.items()}
    return obj


def _holds_future(obj: Any) -> bool:
    if isinstance(obj, Future):
        return True
    if type(obj) in (list, tuple):
        return any(_holds_future(x) for x in obj)
    if type(obj) is dict:
        return any(_holds_future(x) for x in obj.values())
    return False


def _rewrite(obj: Any, names: Mapping[Key, Key], deps: set[Key]) -> Any:
    """``obj`` with Refs renamed by ``names`` and Futures turned into Refs; keys go to ``deps``."""
    t = type(obj)
    if t is Ref:
        key = names.get(obj.key, obj.key)
        deps.add(key)
        return Ref(key)
    if isinstance(obj, Future):
        deps.add(obj.key)
        return Ref(obj.key)
    if t is Task:
        return _rewrite_task(obj, names, deps)
    if t is list:
        return [_rewrite(x, names, deps) for x in obj]
    if t is tuple:
        return tuple(_rewrite(x, names, deps) for x in obj)
    if t is dict:
        return {k: _rewrite(v, names, deps) for k, v in obj.items()}
    return obj


def _rewrite_task(task: Task, names: Mapping[Key, Key], deps: set[Key]) -> Task:
    full = task if type(task) is Task else task._as_task()  # type: ignore[attr-defined]
    args = [_rewrite(a, names, deps) for a in full.args]
    kwargs = {k: _rewrite(v, names, deps) for k, v in full.kwargs.items()}
    return Task(full.func, *args, **kwargs)


def _collect_futures(obj: Any, out: list[Future]) -> None:
    if isinstance(obj, Future):
        out.append(obj)
    elif isinstance(obj, (list, tuple, set)):
        for x in obj:
            _collect_futures(x, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            _collect_futures(x, out)


def _rebuild(obj: Any, values: dict[Key, Any]) -> Any:
    if isinstance(obj, Future):
        return values[obj.key]
    if isinstance(obj, (list, tuple, set)):
        return type(obj)(_rebuild(x, values) for x in obj)
    if isinstance(obj, dict):
        return {k: _rebuild(v, values) for k, v in obj.items()}
    return obj
