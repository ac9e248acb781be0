"""The ``processes`` scheduler: the shared engine's state machine driving a pool of processes.

The calling thread runs the event loop: it plans the graph, hands ready tasks to workers in
batches (:mod:`.placement` decides where and how many), and waits on every worker's connection
and process sentinel at once.  Small results come back inline and are cached here, to be sent
with the next task that needs them anywhere; large ones stay in the worker that made them and
move only when a task elsewhere needs them or they are requested.  Finished intermediates are
released in the workers as soon as their last dependent has run.

Failures are never a hang: a task's exception comes back as the same exception type with the
remote traceback as its cause; a value that cannot be pickled is a ``SerializationError``
naming the task; a worker that dies is a :class:`WorkerDiedError` naming the task that was
running there and how the process ended (the pool replaces it before the next compute); a
``KeyboardInterrupt`` kills the busy workers, so none is left running abandoned work.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, NoReturn

from taskloom import config
from taskloom.errors import TaskloomError, WorkerPluginError
from taskloom.graph import Key, to_wire
from taskloom.local import ExecutionState, TaskEvents, cpu_count, task_events
from taskloom.order import plan
from taskloom.serialize import (
    SerializationError,
    custom_for,
    custom_serializers,
    describe,
    find_unpicklable,
    registry_version,
)
from taskloom.worker import worker_plugins

from .placement import Placement
from .pool import ProcessPool, WorkerProcess, get_pool, wait
from .protocol import Payload, RemoteTraceback, recv, send, unpack_error

_cids = itertools.count(1)
_FOLLOW_MAX_DEPS = 8


class WorkerDiedError(TaskloomError, RuntimeError):
    """A worker process died while it ran a task or held results the compute needed."""


def get(
    graph: Mapping[Key, Any], keys: list[Key], num_workers: int | None = None, **kwargs: Any
) -> list[Any]:
    """Compute ``keys`` of ``graph`` on a reused pool of ``num_workers`` processes.

    ``num_workers`` falls back to the ``num_workers`` configuration value, then the CPU count;
    the start method is ``processes.context`` (default ``spawn``).
    """
    p = plan(graph, keys)
    size = int(num_workers or config.get("num_workers", None) or cpu_count())
    pool = get_pool(size, str(config.get("processes.context", "spawn")))
    with pool.lock:
        results = _Compute(pool, ExecutionState(p), task_events()).run()
    return [results[k] for k in keys]


class _Compute:
    """One compute on a pool: the scheduler side of the protocol."""

    def __init__(self, pool: ProcessPool, state: ExecutionState, events: TaskEvents) -> None:
        self.pool = pool
        self.state = state
        self.events = events
        self.cid = next(_cids)
        self.workers = pool.ensure_started()
        self.placement = Placement(len(self.workers))
        self.who_has: dict[Key, set[int]] = defaultdict(set)
        # small results (Payload) and literals; a literal a plugin serializer claims goes through it
        self.cache: dict[Key, Any] = {
            k: Payload.of(v) if custom_for(v) is not None else v for k, v in state.plan.literals.items()
        }
        self.held: dict[Key, int] = {}  # sizes of results that live only in workers
        self.loads = [0] * len(self.workers)
        self.waiting: dict[Key, list[tuple[int, int]]] = defaultdict(list)  # dep -> (task i, worker)
        self.missing: dict[int, int] = {}  # task i -> number of deps still in transfer
        self.fetching: set[Key] = set()
        self.outputs: dict[Key, Any] = {}
        self.outputs_wanted = set(state.plan.outputs)
        self.index = {k: i for i, k in enumerate(state.plan.order)}
        self.assigned: dict[Key, int] = {}  # key -> worker, for tasks sent and not yet finished
        self.pending_release: dict[int, list[Key]] = defaultdict(list)
        self.func_blobs: dict[int, bytes] = {}
        self.func_refs: list[Any] = []
        for w in self.workers:
            w.funcs_sent = set()  # each worker forgets its functions when a compute ends
        state.released = []

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> dict[Key, Any]:
        try:
            self._sync_plugins()
            while True:
                self._dispatch()
                if self.state.remaining == 0 and self._outputs_ready():
                    break
                self._wait_and_handle()
            return self.outputs
        except BaseException:
            # an error or Ctrl-C abandons the work queued in workers: stop those that are busy
            # with it, so the next compute never waits behind it (they are replaced then)
            for w in self.workers:
                if w.inflight:
                    w.kill()
            raise
        finally:
            for w in self.workers:
                w.inflight.clear()
                if w.alive:
                    try:
                        send(w.conn, "reset", self.cid)
                    except OSError:
                        w.kill()

    def _sync_plugins(self) -> None:
        """Send workers the worker plugins and the plugin serializers, when they changed."""
        plugin_version, plugins = worker_plugins()
        version = (plugin_version, registry_version())
        custom = None
        for w in self.workers:
            if w.plugin_version != version:
                if custom is None:
                    custom = custom_serializers()
                send(w.conn, "plugins", self.cid, (plugin_version, plugins, custom), by_value=True)
                w.plugin_version = version

    def _wait_and_handle(self) -> None:
        self._flush_releases()
        conns: dict[Any, WorkerProcess] = {w.conn: w for w in self.workers if w.alive}
        sentinels: dict[Any, WorkerProcess] = {w.proc.sentinel: w for w in self.workers if w.alive}
        for ready in wait([*conns, *sentinels]):
            if ready in conns:
                w = conns[ready]
                if not w.alive:
                    continue
                try:
                    msg = recv(w.conn)
                except (EOFError, OSError):
                    self._died(w)
                self._handle(w, msg)
            else:
                w = sentinels[ready]
                if w.alive and not w.conn.poll():  # a dead worker's last messages are read first
                    self._died(w)

    def _died(self, w: WorkerProcess) -> NoReturn:
        reason = w.exit_reason()
        w.kill()
        if w.inflight:
            key = w.inflight[0]
            raise WorkerDiedError(
                f"worker process {w.name} (pid {w.pid}) {reason} while running task {key!r}; "
                "the pool starts a replacement for the next compute"
            )
        lost = [k for k, ws in self.who_has.items() if self.workers.index(w) in ws and k not in self.cache]
        raise WorkerDiedError(
            f"worker process {w.name} (pid {w.pid}) {reason} holding results this compute needs "
            f"({', '.join(repr(k) for k in lost[:5])}); the pool starts a replacement for the next compute"
        )

    # -- messages from workers ----------------------------------------------------------------
    def _handle(self, w: WorkerProcess, msg: tuple[str, int, Any]) -> None:
        kind, cid, body = msg
        if cid != self.cid:
            return  # a late message from a cancelled compute
        widx = self.workers.index(w)
        if kind == "done":
            self._finished(widx, w, body)
        elif kind == "data":
            for key, payload, problem in body:
                if payload is None:
                    raise SerializationError(f"the result of task {key!r} cannot be pickled: {problem}")
                self._arrived(key, payload)
        elif kind == "plugin-error":
            raise _plugin_error(body, w)
        elif kind == "undecodable":
            _, type_name, message, _text = body
            keys = ", ".join(repr(k) for k in list(w.inflight)[:5])
            raise SerializationError(
                f"worker process {w.name} could not load the tasks sent to it ({keys}): "
                f"{type_name}: {message}"
            )

    def _finished(self, widx: int, w: WorkerProcess, results: list[tuple[Any, ...]]) -> None:
        """A batch of completions from worker ``widx``: record, release, report."""
        inflight = w.inflight
        ev = self.events
        observed = ev.active
        state = self.state
        index, assigned, cache, held, who_has = self.index, self.assigned, self.cache, self.held, self.who_has
        placement = self.placement
        released = state.released
        self.loads[widx] -= len(results)
        for key, status, data, t0, t1 in results:
            if inflight[0] == key:
                inflight.popleft()
            else:
                inflight.remove(key)
            if status == "error" or status == "unpicklable":
                self._failed(w, key, status, data, t1 - t0)
            if observed:
                if ev.start is not None:
                    ev.start(key=key, worker=w.name)
                if ev.finish is not None:
                    ev.finish(key=key, worker=w.name, duration=t1 - t0, error=None)
            placement.observe(t1 - t0)
            del assigned[key]
            who_has[key].add(widx)
            if status == "held":
                held[key] = data
            else:  # "value" (plain, as is) or "inline" (a Payload)
                cache[key] = data
            state.finish(index[key], None)
            if released:
                self._release(released)
                released.clear()

    def _failed(self, w: WorkerProcess, key: Key, status: str, data: Any, duration: float) -> NoReturn:
        ev = self.events
        if ev.start is not None:
            ev.start(key=key, worker=w.name)
        if status == "unpicklable":
            exc: BaseException = SerializationError(
                f"the result of task {key!r} cannot be sent from worker process {w.name}: {data}"
            )
        else:
            exc = unpack_error(data, key, w.name)
        if ev.finish is not None:
            ev.finish(key=key, worker=w.name, duration=duration, error=exc)
        raise exc

    def _release(self, keys: list[Key]) -> None:
        """Drop finished intermediates here; workers are told in one message before the next wait."""
        pending = self.pending_release
        for k in keys:
            self.cache.pop(k, None)
            self.held.pop(k, None)
            for widx in self.who_has.pop(k, ()):
                pending[widx].append(k)

    def _flush_releases(self) -> None:
        for widx, ks in self.pending_release.items():
            w = self.workers[widx]
            if w.alive and ks:
                send(w.conn, "release", self.cid, ks)
        self.pending_release.clear()

    def _arrived(self, key: Key, payload: Payload) -> None:
        self.fetching.discard(key)
        self.cache[key] = payload
        if key in self.outputs_wanted:
            self.outputs[key] = payload.load()
        batches: dict[int, list[int]] = defaultdict(list)
        for i, widx in self.waiting.pop(key, ()):
            self.missing[i] -= 1
            if not self.missing[i]:
                del self.missing[i]
                batches[widx].append(i)
        for widx, items in batches.items():
            self._send_batch(widx, items)

    # -- sending work ------------------------------------------------------------------------
    def _dispatch(self) -> None:
        state = self.state
        plan_ = state.plan
        batches: dict[int, list[int]] = defaultdict(list)
        last = -1
        while state.ready and state.error is None:
            i = state.ready[0]
            key = plan_.order[i]
            deps = plan_.tasks[key].dependencies
            widx = self.placement.choose(deps, self.who_has, self.held, self.loads, last)
            if widx is None:
                break
            state.pop()
            last = widx
            self._assign(widx, i, key)
            missing = [
                d for d in deps if d in self.held and d not in self.cache and widx not in self.who_has[d]
            ]
            if missing:
                self.missing[i] = len(missing)
                for d in missing:
                    self.waiting[d].append((i, widx))
                    self._fetch(d)
            else:
                batches[widx].append(i)
                self._follow(widx, i, batches[widx])
        for widx, items in batches.items():
            self._send_batch(widx, items)

    def _assign(self, widx: int, i: int, key: Key) -> None:
        self.loads[widx] += 1
        self.assigned[key] = widx

    def _follow(self, widx: int, i: int, batch: list[int]) -> None:
        """Queue behind task ``i`` the dependents that can only follow it on the same worker.

        A dependent whose every dependency is finished here (or small, cached) or queued on
        ``widx`` ahead of it is claimed and sent along: the worker runs its queue in order, so a
        chain or a subtree runs without a round trip per task.
        """
        state = self.state
        order, tasks = state.plan.order, state.plan.tasks
        waiting, claimed, dependents = state.waiting, state.claimed, state.dependents
        assigned, who_has, cache = self.assigned, self.who_has, self.cache
        loads = self.loads
        limit = 2 * self.placement.depth
        stack = [i]
        while stack:
            for j in dependents[stack.pop()]:
                n = waiting[j]
                if n == 0 or n > _FOLLOW_MAX_DEPS or j in claimed:
                    continue  # ready already, or a many-input task (a reduction) that waits its turn
                if loads[widx] >= limit:
                    return
                key = order[j]
                for d in tasks[key].dependencies:
                    if assigned.get(d) != widx and d not in cache and widx not in who_has.get(d, ()):
                        break
                else:
                    state.claim(j)
                    loads[widx] += 1
                    assigned[key] = widx
                    batch.append(j)
                    stack.append(j)

    def _fetch(self, key: Key) -> None:
        if key in self.fetching:
            return
        self.fetching.add(key)
        holder = next(iter(self.who_has[key]))
        send(self.workers[holder].conn, "fetch", self.cid, [key])

    def _send_batch(self, widx: int, items: list[int]) -> None:
        plan_ = self.state.plan
        w = self.workers[widx]
        funcs = []
        tasks = []
        inputs = []
        sent: set[Key] = set()
        assigned = self.assigned
        for i in items:
            key = plan_.order[i]
            task = plan_.tasks[key]
            for d in task.dependencies:
                if d not in sent and assigned.get(d) != widx and widx not in self.who_has.get(d, ()):
                    inputs.append((d, self.cache[d]))
                    sent.add(d)
            token = id(task.func)
            if token not in w.funcs_sent:
                funcs.append((token, self._pickled_func(key, task.func)))
                w.funcs_sent.add(token)
            tasks.append((key, token, *to_wire(task)))
            w.inflight.append(key)
        try:
            send(w.conn, "run", self.cid, (funcs, tasks, inputs))
        except OSError:
            self._died(w)
        except Exception as exc:
            raise _unpicklable([(k, plan_.tasks[k]) for k, *_ in tasks], inputs, exc) from None
        for d in sent:
            self.who_has[d].add(widx)

    def _pickled_func(self, key: Key, func: Any) -> bytes:
        """``func`` pickled by value where needed (``__main__``, lambdas), once per compute."""
        blob = self.func_blobs.get(id(func))
        if blob is None:
            import cloudpickle

            try:
                blob = cloudpickle.dumps(func, protocol=5)
            except Exception as exc:
                raise SerializationError(
                    f"task {key!r} cannot be sent to a worker process: its function is "
                    f"{describe(func)}, which cannot be pickled ({type(exc).__name__}: {exc})"
                ) from None
            self.func_blobs[id(func)] = blob
            self.func_refs.append(func)  # keeps id(func) unique for this compute
        return blob

    # -- outputs -----------------------------------------------------------------------------
    def _outputs_ready(self) -> bool:
        for key in self.state.plan.outputs:
            if key in self.outputs:
                continue
            value = self.cache.get(key, _MISSING)
            if value is not _MISSING:
                self.outputs[key] = value.load() if type(value) is Payload else value
            else:
                self._fetch(key)
        return len(self.outputs) == len(self.outputs_wanted)


_MISSING: Any = object()


def _plugin_error(packed: Any, w: WorkerProcess) -> BaseException:
    blob, _type_name, message, text = packed
    try:
        exc = blob.load() if blob is not None else None
    except Exception:
        exc = None
    if isinstance(exc, WorkerPluginError):
        exc.__cause__ = RemoteTraceback(text)
        return exc
    return WorkerPluginError("?", w.name, RuntimeError(message))


def _unpicklable(tasks: list[tuple[Key, Any]], inputs: list[tuple[Key, Any]], exc: Exception) -> Exception:
    """Find which task (and which part of it) cannot be pickled; a SerializationError naming it."""
    import cloudpickle

    for key, task in tasks:
        found = find_unpicklable(task)
        if found is not None:
            path, obj = found
            return SerializationError(
                f"task {key!r} cannot be sent to a worker process: {path} is {describe(obj)}, "
                "which cannot be pickled"
            )
    for key, value in inputs:
        try:
            cloudpickle.dumps(value)
        except Exception as inner:
            return SerializationError(
                f"the value of {key!r} cannot be sent to a worker process: {describe(value)} "
                f"cannot be pickled ({type(inner).__name__}: {inner})"
            )
    return SerializationError(f"a batch of tasks could not be sent to a worker process: {exc}")


__all__ = ["RemoteTraceback", "WorkerDiedError", "get"]
