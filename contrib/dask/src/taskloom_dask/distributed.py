"""The ``dask`` scheduler: a taskloom graph computed on a dask.distributed cluster.

``get(graph, keys, client=None, **kwargs)`` plans the graph with taskloom (culling, validation:
a cycle or a missing key fails before anything is sent), translates the plan to Dask's task
spec and computes it with ``client.get`` -- on ``client``, else the ``client`` configuration
value, else the current ``distributed.Client`` (``distributed.get_client()``); with none of
these, :class:`NoClientError`.

Translation, per planned task:

* every key gets a new name for this compute -- ``"x"`` becomes ``"x-<token>"``, ``("x", 0)``
  becomes ``("x-<token>", 0)``, other keys ``("<token>", n)`` -- so two computes never meet on
  the cluster however they name their keys, and the dashboard still shows the original names;
* ``Ref(k)`` becomes ``TaskRef(new name of k)``, nested tasks become nested Dask ``Task`` s,
  lists, tuples, dicts and sets holding references become Dask ``List``/``Tuple``/``Dict``/sets,
  a literal that Dask would evaluate (a Dask ``GraphNode`` or ``TaskRef`` used as data) becomes a
  ``DataNode``; data values of the graph become ``DataNode`` s;
* each task runs inside :func:`run_task`, which adds the taskloom note naming the failing key to
  a task's exception and, when something listens to taskloom's per-task hooks, reports the
  task's start and finish through the cluster's event log (a topic per client); the client
  calls ``taskloom_task_start`` / ``taskloom_task_finish`` as the events arrive, and ``get``
  returns only after the finish event of every task.

``taskloom_dask`` must be importable on the workers (``run_task`` lives here), as must the
graph's own functions -- as for any Dask computation.  Importing this module imports neither
Dask nor distributed: the taskloom plugin loads it in every taskloom session.
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from taskloom import Ref, Task, TaskloomError, config
from taskloom.graph import to_wire
from taskloom.local import TaskEvents, annotate, task_events
from taskloom.order import plan
from taskloom.sizeof import sizeof

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["NoClientError", "get", "local_cluster", "run_task"]

Key = Any  # str | bytes | int | float | tuple of these

SCHEDULER = "dask"
CLIENT_OPTIONS = ("workers", "allow_other_workers", "resources", "retries", "priority", "fifo_timeout")
"""Keyword arguments of :func:`get` passed on to ``Client.get``; others are ignored."""
EVENTS_TIMEOUT = 30.0
"""Seconds :func:`get` waits, after the results, for task events still on their way."""

_START, _FINISH = 0, 1


class NoClientError(TaskloomError, RuntimeError):
    """The ``dask`` scheduler found no ``distributed.Client`` to compute on."""


# -- on the workers ------------------------------------------------------------------------------


def apply(func: Callable[..., Any], kwargs: Mapping[str, Any], /, *args: Any) -> Any:
    """``func(*args, **kwargs)``: a call whose keyword arguments travel as one (Dask) ``Dict``."""
    return func(*args, **kwargs)


def run_task(
    events: tuple[str, str] | None,
    i: int,
    key: Key,
    func: Callable[..., Any],
    kwargs: Mapping[str, Any],
    /,
    *args: Any,
) -> Any:
    """Run one taskloom task on a dask worker.

    ``events`` is ``(topic, compute id)`` when the client listens to task events, else ``None``;
    ``i`` is the task's number in the plan and ``key`` its taskloom key, named in the note added
    to the task's exception.
    """
    report = _reporter(events, i)
    if report is not None:
        report(_START, 0.0, None, None)
    t0 = time.perf_counter()
    try:
        result = func(*args, **kwargs)
    except BaseException as exc:
        annotate(exc, key, SCHEDULER)
        if report is not None:
            report(_FINISH, time.perf_counter() - t0, _dump_error(exc), None)
        raise
    if report is not None:
        report(_FINISH, time.perf_counter() - t0, None, sizeof(result))
    return result


def _reporter(
    events: tuple[str, str] | None, i: int
) -> Callable[[int, float, bytes | None, int | None], None] | None:
    """A function that logs task ``i``'s events to the worker's event log, or ``None``."""
    if events is None:
        return None
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a dask worker (the graph run some other way)
        return None
    topic, cid = events
    address = worker.address

    def report(kind: int, duration: float, blob: bytes | None, nbytes: int | None) -> None:
        worker.log_event(topic, [cid, i, kind, address, duration, blob, nbytes])

    return report


def _dump_error(exc: BaseException) -> bytes:
    try:
        return pickle.dumps(exc)
    except Exception:
        return pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))


# -- taskloom plan -> Dask task spec ----------------------------------------------------------------


class _Translator:
    """Translates the tasks and data of one plan to Dask's task spec under new key names."""

    def __init__(self, token: str) -> None:
        from dask._task_spec import DataNode, Dict, GraphNode, List, TaskRef, Tuple
        from dask._task_spec import Task as DaskTask

        self.token = token
        self.names: dict[Key, Key] = {}
        self._counter = itertools.count()
        self.DataNode, self.Dict, self.List, self.Tuple = DataNode, Dict, List, Tuple
        self.DaskTask, self.TaskRef = DaskTask, TaskRef
        self.evaluated = (GraphNode, TaskRef)  # what Dask evaluates among a task's arguments

    def name(self, key: Key) -> Key:
        """The new name of ``key`` in this compute (made on first use)."""
        name = self.names.get(key)
        if name is None:
            t = type(key)
            if t is str:
                name = f"{key}-{self.token}"
            elif t is tuple and key and type(key[0]) is str:
                name = (f"{key[0]}-{self.token}", *key[1:])
            else:
                name = (self.token, next(self._counter))
            self.names[key] = name
        return name

    def data(self, value: Any) -> Any:
        """A literal argument, wrapped where Dask would evaluate it."""
        return self.DataNode(None, value) if isinstance(value, self.evaluated) else value

    def value(self, obj: Any) -> Any:
        """An argument that may hold ``Ref`` s and nested tasks anywhere; ``obj`` if it holds none."""
        t = type(obj)
        if t is Ref:
            return self.TaskRef(self.name(obj.key))
        if isinstance(obj, Task):
            func, args, kwargs = self.parts(obj)
            return self.call(None, func, args, kwargs)
        if t is list or t is tuple or t is set or t is frozenset:
            items = [self.value(x) for x in obj]
            if all(x is y for x, y in zip(items, obj)):
                return obj
            if t is list:
                return self.List(*items)
            if t is tuple:
                return self.Tuple(*items)
            return self.DaskTask(None, t, self.List(*items))
        if t is dict:
            values = {k: self.value(v) for k, v in obj.items()}
            if all(values[k] is v for k, v in obj.items()):
                return obj
            return self.Dict(values)
        return self.data(obj)

    def parts(self, task: Task) -> tuple[Any, list[Any], dict[str, Any]]:
        """``(func, args, kwargs)`` of a taskloom task, translated."""
        args, kwargs, refs = to_wire(task)
        if refs is None:  # references anywhere: translate every argument
            new = [self.value(a) for a in args]
            kw = {k: self.value(v) for k, v in kwargs.items()}
        else:  # references only at the positions in refs; the rest is data
            new = [self.data(a) for a in args]
            for i, key in refs:
                new[i] = self.TaskRef(self.name(key))
            kw = {k: self.data(v) for k, v in kwargs.items()}
        return self.data(task.func), new, kw

    def call(self, key: Key, func: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if not kwargs and not isinstance(func, self.evaluated):
            return self.DaskTask(key, func, *args)
        return self.DaskTask(key, apply, func, self.kwargs(kwargs), *args)

    def kwargs(self, kwargs: dict[str, Any]) -> Any:
        if any(isinstance(v, self.evaluated) for v in kwargs.values()):
            return self.Dict(kwargs)
        return kwargs

    def task(self, key: Key, task: Task, i: int, events: tuple[str, str] | None) -> Any:
        """The top-level Dask task for planned task ``i``: ``run_task`` around the call."""
        func, args, kwargs = self.parts(task)
        name = self.name(key)
        return self.DaskTask(name, run_task, events, i, key, func, self.kwargs(kwargs), *args)


# -- task events on the client ---------------------------------------------------------------------


class _Compute:
    """One compute's task events: calls taskloom's hooks as they arrive on the client.

    The finish of a *failed* task is held back until the compute ends, so that the hook receives
    the very exception object the caller gets from ``get`` (the event carries only a copy).
    """

    def __init__(self, order: list[Key], events: TaskEvents) -> None:
        self.order = order
        self.events = events
        self.finished: set[int] = set()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._failed: list[tuple[Key, str, float, BaseException]] | None = []
        if not order:
            self.done.set()

    def on_event(
        self, i: int, kind: int, worker: str, duration: float, blob: bytes | None, nbytes: int | None = None
    ) -> None:
        key = self.order[i]
        if kind == _START:
            self._call(self.events.start, key=key, worker=worker)
            return
        if blob is None:
            finish = self.events.finish
            self._call(finish, key=key, worker=worker, duration=duration, error=None, nbytes=nbytes)
        else:
            error = pickle.loads(blob)
            with self._lock:
                held = self._failed
                if held is not None:
                    held.append((key, worker, duration, error))
            if held is None:  # the compute has ended already
                self._call(
                    self.events.finish, key=key, worker=worker, duration=duration, error=error, nbytes=None
                )
        self.finished.add(i)
        if len(self.finished) == len(self.order):
            self.done.set()

    def end(self, raised: BaseException | None) -> None:
        """The compute ends (with ``raised``): report the failed tasks' finish events held back."""
        with self._lock:
            held, self._failed = self._failed or [], None
        for key, worker, duration, error in held:
            if raised is not None and _same_error(error, raised):
                error = raised
            finish = self.events.finish
            self._call(finish, key=key, worker=worker, duration=duration, error=error, nbytes=None)

    def _call(self, hook: Callable[..., Any] | None, **kwargs: Any) -> None:
        if hook is None:
            return
        try:
            hook(**kwargs)
        except BaseException as exc:  # a hook failed: the compute fails with it
            if self.error is None:
                self.error = exc


def _same_error(copy: BaseException, raised: BaseException) -> bool:
    """Whether ``copy`` (from a task event) is a copy of the exception ``raised``."""
    return (
        type(copy) is type(raised)
        and copy.args == raised.args
        and getattr(copy, "__notes__", None) == getattr(raised, "__notes__", None)
    )


class _Router:
    """The handler of one client's event topic: routes each event to its compute."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.computes: dict[str, _Compute] = {}

    def __call__(self, event: tuple[float, Any]) -> None:
        cid, i, kind, worker, duration, blob, nbytes = event[1]
        compute = self.computes.get(cid)
        if compute is not None:
            compute.on_event(i, kind, worker, duration, blob, nbytes)


_routers: weakref.WeakKeyDictionary[Any, _Router] = weakref.WeakKeyDictionary()
_routers_lock = threading.Lock()


def _router(client: Client) -> _Router:
    with _routers_lock:
        router = _routers.get(client)
        if router is None:
            router = _routers[client] = _Router(f"taskloom-dask-events-{client.id}")
            client.subscribe_topic(router.topic, router)
        return router


# -- the scheduler ---------------------------------------------------------------------------------


@contextlib.contextmanager
def local_cluster(n_workers: int = 2, processes: bool = True) -> Iterator[dict[str, Any]]:
    """For tests and benchmarks (``SchedulerSpec.setup``): a ``LocalCluster`` and its client.

    ``n_workers`` single-threaded worker processes on 127.0.0.1, no dashboard; yields the
    compute options ``{"client": client}``.  The client is not made the default one.  One tiny
    task runs first, so that the threads distributed starts lazily exist before the caller's
    work (and its thread-leak checks) begin.  Everything is closed on exit.
    """
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=processes,
            host="127.0.0.1",
            protocol="tcp",
            dashboard_address=None,  # no dashboard; the scheduler's small HTTP server (health,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # metrics) on a free port
            worker_dashboard_address=None,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        client.submit(abs, -1).result()
        yield {"client": client}


def current_client(client: Client | None = None) -> Client:
    """``client``, else the ``client`` configuration value, else the current ``distributed.Client``.

    :raises NoClientError: if there is none.
    """
    if client is None:
        client = config.get("client", None)
    if client is not None:
        return client
    try:
        from distributed import get_client
    except ImportError as exc:
        raise NoClientError(
            "the 'dask' scheduler needs dask.distributed: pip install 'taskloom-dask[distributed]'"
        ) from exc
    try:
        return get_client()
    except ValueError:
        raise NoClientError(
            "no distributed.Client is active; create one (distributed.Client(...)) or pass client="
        ) from None


def get(
    graph: Mapping[Key, Any],
    keys: list[Key],
    client: Client | None = None,
    num_workers: int | None = None,
    fuse: bool | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Compute ``keys`` of the taskloom ``graph`` on a dask.distributed cluster.

    :param client: the ``distributed.Client`` to use; default: the ``client`` configuration value
        (``taskloom.config.set(client=c)``), else the current client (``distributed.get_client()``).
    :param num_workers: accepted and ignored: the cluster decides.
    :param fuse: fuse linear chains of tasks into one Dask task each before submitting, as Dask
        does for its collections (each chain then costs one scheduler round trip, not one per
        task; taskloom's hooks still see every task); default: the ``dask.fuse`` configuration
        value, ``True``.
    :param kwargs: ``workers``, ``allow_other_workers``, ``resources``, ``retries``,
        ``priority`` and ``fifo_timeout`` go to ``Client.get``; other options are ignored, so
        one call works on every scheduler.
    :raises NoClientError: if no client is given and none is current.
    """
    client = current_client(client)
    if client.asynchronous:
        raise TypeError("the 'dask' scheduler needs a synchronous distributed.Client (asynchronous=False)")
    p = plan(graph, keys)
    outputs = [k for k in dict.fromkeys(p.outputs) if k not in p.literals]
    if not outputs:
        return [p.literals[k] for k in keys]
    translator = _Translator(uuid.uuid4().hex)
    observed = task_events()
    compute: _Compute | None = None
    router: _Router | None = None
    events: tuple[str, str] | None = None
    if observed.active:
        router = _router(client)
        compute = _Compute(p.order, observed)
        cid = uuid.uuid4().hex
        router.computes[cid] = compute
        events = (router.topic, cid)
    try:
        from dask._task_spec import DataNode

        dsk: dict[Key, Any] = {}
        for key, value in p.literals.items():
            name = translator.name(key)
            dsk[name] = DataNode(name, value)
        tasks = p.tasks
        for i, key in enumerate(p.order):
            dsk[translator.name(key)] = translator.task(key, tasks[key], i, events)
        names = [translator.names[k] for k in outputs]
        if fuse if fuse is not None else config.get("dask.fuse", True):
            from dask._task_spec import fuse_linear_task_spec

            dsk = fuse_linear_task_spec(dsk, names)
        options = {k: kwargs[k] for k in CLIENT_OPTIONS if k in kwargs}
        try:
            values = client.get(dsk, names, **options)
        except BaseException as exc:
            if compute is not None:
                compute.end(exc)
            raise
        if compute is not None:
            if not compute.done.wait(EVENTS_TIMEOUT):
                warnings.warn(
                    f"taskloom-dask: {len(p.order) - len(compute.finished)} task events did not "
                    f"arrive within {EVENTS_TIMEOUT} s of the results",
                    RuntimeWarning,
                    stacklevel=2,
                )
            compute.end(None)
            if compute.error is not None:
                raise compute.error
    finally:
        if router is not None and events is not None:
            router.computes.pop(events[1], None)
    results = dict(zip(outputs, values))
    return [results[k] if k in results else p.literals[k] for k in keys]
