"""Submitting work from a client: calls, maps and graphs turned into tasks, and failed tasks run again."""

from __future__ import annotations

import hashlib
import itertools
import threading
import types
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

from taskloom import gcpause
from taskloom.graph import Key, Task, flatten_keys, pack_results
from taskloom.local import task_events
from taskloom.order import Plan, plan
from taskloom.tokenize import tokenize

from ..config_snapshot import ConfigShipper, tag_tasks
from .futures import LIVE, Future, FutureState
from .graphs import collect_futures, holds_future, identity, replace_futures, rewrite, rewrite_task
from .pickling import TaskPickler

if TYPE_CHECKING:
    from .client import Client


class Submission:
    """Submitting tasks, for :class:`~.client.Client` (a part of it, not used alone)."""

    # set up by Client.__init__
    _states: dict[Key, FutureState]
    _lock: threading.RLock
    _pickler: TaskPickler
    _func_tokens: weakref.WeakKeyDictionary[Any, str]
    _config_shipper: ConfigShipper
    _events: Any
    _aliases: dict[Key, Key]
    _quiet: set[Key]
    _errors: dict[Key, BaseException]
    _event_error: BaseException | None

    if TYPE_CHECKING:  # the other parts of the Client

        def _sync(self, coro: Any, timeout: float | None = None) -> Any: ...

        def _check_running(self) -> None: ...

        async def _request(self, op: str, **kwargs: Any) -> Any: ...

        def _post(self, msg: dict[str, Any]) -> None: ...

        def _futures(self, keys: list[Key], new: set[Key] | None = None) -> list[Future]: ...

        async def _gather_values(self, futures: list[Future], errors: str = "raise") -> dict[Key, Any]: ...

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
        client = cast("Client", self)
        task = Task(
            func,
            *[replace_futures(a, deps, client) for a in args],
            **{k: replace_futures(v, deps, client) for k, v in kwargs.items()},
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
        client = cast("Client", self)
        kwargs = {k: replace_futures(v, kw_deps, client) for k, v in kwargs.items()}
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
            task = Task(func, *[replace_futures(a, deps, client) for a in args], **kwargs)
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
        where: dict[str, Any] | None = None, graph: int | None = None, more: bool = False,
        hold: list[Key] | None = None,
    ) -> None:  # fmt: skip
        self._check_running()
        events = task_events()
        self._events = events if events.active else None
        cid = self._config_shipper.current(self._post)  # this client's config.set values, for the workers
        msg = {
            "op": "update-graph",
            "tasks": dict(tasks) if cid is None else tag_tasks(dict(tasks), cid),
            "keys": keys,
            "priorities": priorities,
            "retries": retries,
            "observe": events.active,
            **(where or {}),
        }
        if graph is not None:  # one part of a graph sent in parts (see _submit_graph)
            msg["graph"], msg["more"] = graph, more
            if more:
                msg["hold"] = hold  # the keys later parts need
        self._post(msg)

    def _submit_graph(
        self, graph: Mapping[Key, Any], keys: list[Key], retries: int = 0, private: bool = False,
        where: dict[str, Any] | None = None,
    ) -> list[Future]:  # fmt: skip
        """Validate, order and submit a task graph; one Future per requested key.

        ``private``: the graph's keys get a per-call prefix on the cluster, so a ``get`` never
        shares (or collides with) results of another call that happens to use the same key names.

        A large graph goes in parts, in priority order (literals first, then each task after its
        dependencies): the first :data:`FIRST_PART` tasks run while the rest is still being
        pickled, each later part twice as large as the one before (up to :data:`MAX_PART`).
        """
        self._check_running()
        with gcpause.paused():  # a few objects per task, none garbage (see taskloom.gcpause)
            return self._prepare_graph(graph, keys, retries, private, where)

    def _prepare_graph(
        self, graph: Mapping[Key, Any], keys: list[Key], retries: int, private: bool,
        where: dict[str, Any] | None,
    ) -> list[Future]:  # fmt: skip
        existing = {k: v for k, v in graph.items() if isinstance(v, Future) and v.key == k}
        p = plan({k: (Task(identity, None) if k in existing else v) for k, v in graph.items()}, keys)
        prefix = f"get-{uuid.uuid4().hex[:16]}" if private else None
        names: dict[Key, Key] = {}
        if prefix is not None:
            names = {k: (prefix, k) for k in (*p.order, *p.literals) if k not in existing}
            self._aliases = {v: k for k, v in names.items()}  # diagnostics report the caller's keys
        self._quiet = {names.get(k, k) for k in p.literals}
        self._errors = {}
        wanted = [names.get(k, k) for k in keys]
        parts = _Parts(self, p, list(dict.fromkeys(wanted)), retries, where)
        try:
            self._add_tasks(p, existing, names, parts)
            futures = self._futures(wanted)
        except BaseException:
            parts.abandon()
            raise
        parts.send(last=True)
        return futures

    def _add_tasks(self, p: Plan, existing: Mapping[Key, Any], names: dict[Key, Key], parts: _Parts) -> None:
        """The tasks of plan ``p`` pickled, in priority order, into ``parts``."""
        dumps = self._pickler.dumps
        add = parts.add
        for k, v in p.literals.items():
            deps: set[Key] = set()
            spec = dumps(k, Task(identity, rewrite(v, names, deps)))
            add(k, names.get(k, k), spec, sorted(deps, key=repr), ())
        scan = _may_hold_futures()
        tasks = p.tasks
        for k in p.order:
            if k in existing:
                parts.skip()
                continue
            task = original = tasks[k]
            if scan and (holds_future(task.args) or holds_future(task.kwargs)):  # futures: their keys
                deps = set()
                task = rewrite_task(task, names, deps)
                add(k, names.get(k, k), dumps(k, task), sorted(deps, key=repr), original.dependencies)
                continue
            if names:
                task = task.renamed(names)
            add(k, names.get(k, k), dumps(k, task), list(task.dependencies), original.dependencies)

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


FIRST_PART = 1000  # tasks in the first part of a graph sent in parts (smaller graphs: one message)
MAX_PART = 8000  # the largest part


class _Parts:
    """A graph's tasks sent to the scheduler in parts as they are pickled (see ``_submit_graph``)."""

    def __init__(
        self, client: Submission, p: Plan, keys: list[Key], retries: int, where: dict[str, Any] | None
    ) -> None:  # fmt: skip
        self.client, self.keys, self.retries, self.where = client, keys, retries, where
        total = len(p.literals) + len(p.order)
        self.tasks: dict[Key, Any] = {}
        self.priorities: dict[Key, int] = {}
        self.position = 0  # the priority of the next task
        self.limit = FIRST_PART if total > FIRST_PART else total + 1
        self.graph: int | None = None  # the id its parts share, from the first one sent
        # for each key of the plan, its dependents not yet in a part (and 1 if it is wanted): a
        # task of a part sent with more to come is held on the cluster while this is not 0
        self.remaining = p.refcount
        self.names: list[tuple[Key, Key]] = []  # this part's keys: in the plan, and as sent

    def add(self, key: Key, name: Key, spec: Any, deps: list[Key], planned_deps: Iterable[Key]) -> None:
        """Task ``key`` (sent as ``name``, ``deps`` as sent, ``planned_deps`` as in the plan)."""
        self.tasks[name] = (spec, deps)
        self.priorities[name] = self.position
        self.position += 1
        self.names.append((key, name))
        remaining = self.remaining
        for d in planned_deps:
            remaining[d] -= 1
        if len(self.tasks) >= self.limit:
            self.send(last=False)
            self.limit = min(2 * self.limit, MAX_PART)

    def skip(self) -> None:
        """A task already on the cluster (a Future in the graph): it keeps its priority number."""
        self.position += 1

    def send(self, last: bool) -> None:
        hold = None
        if not last:
            if self.graph is None:
                self.graph = next(_graph_ids)
            remaining = self.remaining
            hold = [name for key, name in self.names if remaining.get(key)]
        self.client._send_graph(
            self.tasks, self.keys if last else [], self.priorities, self.retries, self.where,
            graph=self.graph, more=not last, hold=hold,
        )  # fmt: skip
        self.tasks, self.priorities, self.names = {}, {}, []

    def abandon(self) -> None:
        """Preparing the rest failed: the scheduler lets go of the parts it has."""
        if self.graph is not None:
            self.client._post({"op": "abandon-graph", "graph": self.graph})


_graph_ids = itertools.count(1)


def _may_hold_futures() -> bool:
    """Could a graph hold a Future (any client's)?  Not while none exists in this process."""
    return bool(LIVE)


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
