"""The local engine driven through a ``concurrent.futures`` executor (the ``pool`` scheduler's engine).

:func:`execute_on_executor`: the calling thread keeps the :class:`~taskloom.local.ExecutionState`,
submits batches of ready tasks as calls of :func:`run_batch` (the values of their dependencies
travel with them) and collects completions through ``add_done_callback`` into a queue, waited on
in short slices so that ``KeyboardInterrupt`` is seen at once (futures not yet started are then
cancelled).  The executor is the user's: it is never shut down here.

* Batches: single tasks until durations are measured, then ``_BATCH_WORK`` seconds of short tasks
  (at most a worker's share of the ready queue; a lone ready task takes along the dependents
  that can follow it: a chain travels whole).  In flight: ``max_workers`` batches on a thread
  executor, twice that on others.  A value made and used up inside a batch stays in the worker.
* ``ThreadPoolExecutor`` shares memory: nothing is pickled, an exception arrives as the same
  object.  Any other executor (``ProcessPoolExecutor``, loky) is taken to run other processes:
  batches travel as cloudpickled bytes (lambdas by value), results come back pickled, exceptions
  as their own type with the remote traceback as ``__cause__``; what cannot be pickled is a
  :class:`SerializationError` naming the task and the type.
* Each executor worker keeps a thread-local :class:`~taskloom.worker.WorkerRuntime`, synced with
  the worker-plugin registry before a batch (processes get the pickled plugins only while some
  worker may lack them).  Diagnostics task hooks fire in the calling thread.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.util
import pickle
import queue
import threading
import time
import traceback
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from . import config
from .errors import TaskloomError, WorkerPluginError
from .graph import Key, Task, from_wire, to_wire
from .local import FOLLOW_MAX_DEPS, ExecutionState, TaskEvents, annotate, cpu_count, execute_inline
from .order import Plan
from .serialize import SerializationError, describe
from .worker import Worker, WorkerRuntime, worker_plugins

__all__ = ["RemoteTraceback", "execute_on_executor", "pack_error", "run_batch", "unpack_error"]

_OK, _ERROR, _UNPICKLABLE = 0, 1, 2  # status of a task's result
_BATCH_WORK = {False: 0.5e-3, True: 5e-3}  # seconds of work per batch: thread / process executors
_MAX_BATCH = {False: 64, True: 512}
_POLL = 0.2  # seconds: how often the waiting caller looks up (KeyboardInterrupt)

Item = tuple[int, Key, Task]
Packed = tuple[bytes | None, str, str, str]


class RemoteTraceback(Exception):
    """The traceback of an exception raised in an executor's worker process, as text."""


def pack_error(exc: BaseException) -> Packed:
    """``(pickled exception or None, type name, message, traceback text)``, for another process."""
    blob = None
    for dumps in (pickle.dumps, _cloudpickle().dumps):
        try:
            blob = dumps(exc, protocol=5)
            pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt
            break
        except Exception:
            blob = None
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return blob, f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), text


def unpack_error(packed: Packed, key: Key) -> BaseException:
    """The exception :func:`pack_error` packed, with the remote traceback as its ``__cause__``."""
    blob, type_name, message, text = packed
    try:
        exc = pickle.loads(blob) if blob is not None else None
    except Exception:
        exc = None
    if not isinstance(exc, BaseException):
        exc = TaskloomError(f"task {key!r} raised {type_name}: {message} (it could not be unpickled)")
    exc.__cause__ = RemoteTraceback(text)
    return exc


def _cloudpickle() -> Any:
    import cloudpickle

    return cloudpickle


_local = threading.local()  # in executor workers: the runtime's owner; the executor running a batch


class _Owner:
    """Holds a worker's runtime; tears its plugins down when the thread (or process) ends."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime

    def close(self) -> None:
        self.runtime.close()

    __del__ = close  # a thread's thread-local slots are cleared when it ends


def _runtime(kind: str, version: int) -> tuple[WorkerRuntime, bool]:
    """This worker's runtime, and whether it must be synced to the registry ``version``."""
    owner: _Owner | None = getattr(_local, "owner", None)
    if owner is None:
        name = threading.current_thread().name if kind == "thread" else multiprocessing.current_process().name
        owner = _local.owner = _Owner(WorkerRuntime(Worker(name, kind)))
        if kind == "process":
            multiprocessing.util.Finalize(owner, owner.close, exitpriority=10)
    runtime = owner.runtime
    return runtime, runtime.version != version or not runtime.installed_set_up


def _run_tasks(tasks: list[tuple[Key, Task, tuple[Key, ...]]], data: dict[Key, Any],
               internal: dict[Key, int], runtime: WorkerRuntime) -> list[tuple[Any, ...]]:  # fmt: skip
    """Run ``tasks`` in order on ``data``; stop at the first error.  One result tuple per task run."""
    out: list[tuple[Any, ...]] = []
    name, transition = runtime.worker.name, runtime.observes_transitions and runtime.transition
    clock = time.perf_counter
    for key, task, frees in tasks:
        t0 = clock()
        try:
            if transition:
                transition(key, "ready", "executing")
            value = task(data)
            if transition:
                transition(key, "executing", "memory")
        except BaseException as exc:
            out.append((key, _ERROR, exc, t0, clock(), name))
            if transition:
                with contextlib.suppress(Exception):  # the task's error is the one to report
                    transition(key, "executing", "error")
            break
        data[key] = value
        for d in frees:  # consumed only inside this batch: drop it after its last use
            internal[d] -= 1
            if not internal[d]:
                del data[d]
        out.append((key, _OK, None if key in internal else value, t0, clock(), name))
    return out


def run_batch(payload: Any) -> Any:
    """Run one batch in an executor's worker (a list from a thread executor, bytes from others).

    Returns ``(kind, body)``, pickled for bytes: ``"done"`` with ``(key, status, value or error,
    start, end, worker name)`` per task run, ``"need-plugins"``, ``"plugin-error"``, ``"undecodable"``.
    """
    if type(payload) is bytes:
        return _run_remote(payload)
    tasks, inputs, internal, version, plugins, executor = payload
    runtime, stale = _runtime("thread", version)
    _local.executor = executor  # a compute inside a task on this executor then runs inline
    try:
        if stale:
            try:
                runtime.sync(version, plugins)
            except WorkerPluginError as exc:
                return "plugin-error", exc
        runtime.bind()
        return "done", _run_tasks(tasks, inputs, internal, runtime)
    finally:
        _local.executor = None


def _run_remote(payload: bytes) -> bytes:
    try:
        version, plugins_blob, wire, inputs, internal = pickle.loads(payload)
        tasks = [(key, from_wire(*parts), frees) for key, parts, frees in wire]
    except BaseException as exc:  # e.g. a function whose module this process cannot import
        return pickle.dumps(("undecodable", pack_error(exc)), protocol=5)
    runtime, stale = _runtime("process", version)
    if stale:
        if plugins_blob is None:
            return pickle.dumps(("need-plugins", runtime.worker.name), protocol=5)
        try:
            runtime.sync(version, pickle.loads(plugins_blob))
        except WorkerPluginError as exc:
            packed = (exc.name, exc.worker, pack_error(exc.error), pack_error(exc)[3])
            return pickle.dumps(("plugin-error", packed), protocol=5)
    runtime.bind()
    results = _run_tasks(tasks, inputs, internal, runtime)
    if results and results[-1][1] == _ERROR:
        key, _, error, *rest = results[-1]
        results[-1] = (key, _ERROR, pack_error(error), *rest)
    try:
        return pickle.dumps(("done", results), protocol=5)
    except Exception:  # by value (a lambda, ...); the first value that cannot be pickled ends the list
        dumps = _cloudpickle().dumps
    for n, (key, _status, value, *rest) in enumerate(results):
        try:
            dumps(value, protocol=5)
        except Exception as exc:
            problem = f"{describe(value)}, which cannot be pickled ({type(exc).__name__}: {exc})"
            results[n:] = [(key, _UNPICKLABLE, problem, *rest)]
            break
    return bytes(dumps(("done", results), protocol=5))


def execute_on_executor(plan: Plan, executor: Executor, events: TaskEvents, *, scheduler: str = "pool",
                        max_workers: int | None = None) -> dict[Key, Any]:  # fmt: skip
    """Run ``plan`` on ``executor`` from the calling thread; return ``{output key: value}``.

    ``max_workers`` (default: the executor's ``_max_workers``, the ``num_workers`` config or the
    CPU count) bounds the batches in flight.  A compute from a task on the same thread executor
    runs inline (waiting for its threads could deadlock)."""
    remote = not isinstance(executor, ThreadPoolExecutor)
    if not remote and getattr(_local, "executor", None) is executor:
        return execute_inline(plan, events, threading.current_thread().name, scheduler)
    size = max_workers or getattr(executor, "_max_workers", None) or config.get("num_workers", None)
    return _Driver(plan, executor, events, scheduler, remote, int(size or cpu_count())).run()


class _Driver:
    """One compute on an executor: the state machine, the futures in flight, the plugin shipping."""

    def __init__(self, plan: Plan, executor: Executor, events: TaskEvents, scheduler: str,
                 remote: bool, size: int) -> None:  # fmt: skip
        self.state = ExecutionState(plan)
        self.executor, self.events, self.scheduler, self.remote = executor, events, scheduler, remote
        self.size = max(1, size)
        self.limit = 2 * self.size if remote else self.size  # batches in flight
        self.done: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
        self.inflight: dict[Future[Any], tuple[list[Item], list[Any]]] = {}
        self.mean: float | None = None  # measured mean task duration
        self.version, self.plugins = worker_plugins()
        self.plugins_blob: bytes | None = None
        self.synced: set[str] = set()  # workers known to run this compute's plugin version

    def run(self) -> dict[Key, Any]:
        state = self.state
        try:
            while state.remaining:
                self._submit()
                if not self.inflight:
                    raise RuntimeError("taskloom: no task is running or ready; the plan is inconsistent")
                future = None
                while future is None:  # short waits: Ctrl-C is seen at once
                    with contextlib.suppress(queue.Empty):
                        future = self.done.get(timeout=_POLL)
                self._handle(future)
            return state.results()
        except BaseException as exc:
            for pending in self.inflight:  # those already running finish; their results are dropped
                pending.cancel()
            state.cancel(exc)
            raise

    # -- submitting ------------------------------------------------------------------------------
    def _submit(self) -> None:
        state = self.state
        while len(self.inflight) < self.limit and state.ready:
            m, r = self.mean, self.remote
            n = 1 if m is None else max(1, min(_MAX_BATCH[r], int(_BATCH_WORK[r] / max(m, 1e-7))))
            batch = state.pop_batch(min(n, max(1, len(state.ready) // self.size)))
            if not batch:
                break
            if len(batch) == 1 and n > 1:
                _follow(state, batch, n)
            self._send(batch, self._body(batch))

    def _body(self, batch: list[Item]) -> list[Any]:
        """What a batch needs: its tasks, the values of outside dependencies, in-batch use counts."""
        data, refcount = self.state.data, self.state.plan.refcount
        inputs: dict[Key, Any] = {}
        internal: dict[Key, int] = {}
        inside = frozenset(key for _, key, _ in batch) if len(batch) > 1 else frozenset()
        for _, _, task in batch:
            for d in task.dependencies:
                if d in inside:
                    internal[d] = internal.get(d, 0) + 1
                elif d not in inputs:
                    inputs[d] = data[d]
        internal = {k: n for k, n in internal.items() if n == refcount[k]}  # all its users are here
        tasks = [(key, task, tuple(d for d in task.dependencies if d in internal)) for _, key, task in batch]
        if not self.remote:
            return [tasks, inputs, internal, self.version, self.plugins, self.executor]
        wire = [(key, (task.func, *to_wire(task)), frees) for key, task, frees in tasks]
        blob = self._plugins_blob() if not self.plugins or len(self.synced) < self.size else None
        return [self.version, blob, wire, inputs, internal]

    def _send(self, batch: list[Item], body: list[Any]) -> None:
        payload: Any = body
        if self.remote:
            try:
                payload = _cloudpickle().dumps(tuple(body), protocol=5)
            except Exception as exc:
                raise _unpicklable(batch, body[3], exc) from None
        try:
            future = self.executor.submit(run_batch, payload)
        except BaseException as exc:
            exc.add_note(f"taskloom: the executor {self.executor!r} did not accept tasks {_keys(batch)}")
            raise
        self.inflight[future] = (batch, body)
        future.add_done_callback(self.done.put)

    def _plugins_blob(self) -> bytes:
        if self.plugins_blob is None:
            try:
                self.plugins_blob = bytes(_cloudpickle().dumps(self.plugins, protocol=5))
            except Exception as exc:
                raise SerializationError(f"the worker plugins cannot be sent to the executor: {exc}") from exc
        return self.plugins_blob

    # -- completions -----------------------------------------------------------------------------
    def _handle(self, future: Future[Any]) -> None:
        batch, body = self.inflight.pop(future)
        cancelled = TaskloomError("the executor cancelled them: was it shut down?")
        exc = cancelled if future.cancelled() else future.exception()
        if exc is not None:  # the executor failed (e.g. a worker process died), not a task
            exc.add_note(f"taskloom: the executor failed while it ran tasks {_keys(batch)}")
            raise exc
        try:
            kind, content = pickle.loads(future.result()) if self.remote else future.result()
        except Exception as err:
            raise SerializationError(f"results of tasks {_keys(batch)} cannot be unpickled: {err}") from err
        if kind == "done":
            self._finished(batch, content)
        elif kind == "need-plugins":  # a worker this compute has not reached before
            body[1] = self._plugins_blob()
            self._send(batch, body)
        elif kind == "plugin-error":  # a WorkerPluginError does not survive pickling: rebuilt here
            if self.remote:
                name, worker, inner, text = content
                content = WorkerPluginError(name, worker, unpack_error(inner, "(worker setup)"))
                content.__cause__ = RemoteTraceback(text)
            raise content
        else:  # "undecodable"
            problem = f"{content[1]}: {content[2]}"
            raise SerializationError(f"an executor worker could not load tasks {_keys(batch)}: {problem}")

    def _finished(self, batch: list[Item], results: list[tuple[Any, ...]]) -> None:
        state, start, finish = self.state, self.events.start, self.events.finish
        busy = 0.0
        for (i, key, _), (_, status, value, t0, t1, worker) in zip(batch, results):
            if start is not None:
                start(key=key, worker=worker)
            if status == _OK:
                if finish is not None:
                    nbytes = self.events.nbytes(value)
                    finish(key=key, worker=worker, duration=t1 - t0, error=None, nbytes=nbytes)
                state.finish(i, value)
                busy += t1 - t0
                continue
            if status == _UNPICKLABLE:
                raise SerializationError(f"the result of task {key!r} cannot leave {worker}: {value}")
            exc = unpack_error(value, key) if self.remote else value
            annotate(exc, key, self.scheduler)
            if finish is not None:
                finish(key=key, worker=worker, duration=t1 - t0, error=exc, nbytes=None)
            raise exc
        if results:
            self.synced.add(results[0][5])
            m = busy / len(results)
            self.mean = m if self.mean is None else 0.8 * self.mean + 0.2 * m


def _follow(state: ExecutionState, batch: list[Item], limit: int) -> None:
    """Append to a one-task batch the dependents that can run right after it (a chain), claimed."""
    order, tasks, data = state.plan.order, state.plan.tasks, state.data
    inside, stack = {batch[0][1]}, [batch[0][0]]
    while stack:
        for j in state.dependents[stack.pop()]:
            w = state.waiting[j]
            if w == 0 or w > FOLLOW_MAX_DEPS or j in state.claimed or len(batch) >= limit:
                continue
            key = order[j]
            if all(d in data or d in inside for d in tasks[key].dependencies):
                state.claim(j)
                batch.append((j, key, tasks[key]))
                inside.add(key)
                stack.append(j)
    batch.sort(key=lambda item: item[0])


def _keys(batch: list[Item]) -> str:
    return f"({', '.join(repr(key) for _, key, _ in batch[:5])}{', ...' if len(batch) > 5 else ''})"


def _unpicklable(batch: list[Item], inputs: dict[Key, Any], exc: Exception) -> SerializationError:
    """The first part of ``batch`` that cannot be pickled, as an error naming its task and type."""
    parts: list[tuple[Key, str, Any]] = []
    for _, key, task in batch:
        parts += [(key, "function", task.func), *((key, f"argument {n}", a) for n, a in enumerate(task.args))]
        parts += [(key, f"keyword argument {k!r}", v) for k, v in task.kwargs.items()]
        parts += [(key, f"input {d!r}", inputs[d]) for d in task.dependencies if d in inputs]
    for key, what, obj in parts:
        try:
            _cloudpickle().dumps(obj)
        except Exception as inner:
            return SerializationError(
                f"task {key!r} cannot be sent to the executor's worker processes: its {what} is "
                f"{describe(obj)}, which cannot be pickled ({type(inner).__name__}: {inner})"
            )
    return SerializationError(f"tasks {_keys(batch)} cannot be sent to the executor's workers: {exc}")
