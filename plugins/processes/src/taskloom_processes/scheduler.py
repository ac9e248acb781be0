"""The ``processes`` scheduler: the shared engine's state machine driving a pool of processes.

The calling thread runs the event loop: it plans the graph, hands ready tasks to workers in
batches, and waits on every worker's connection and process sentinel at once.

* A batch takes along the dependents that can follow its tasks on the same worker (each of
  their unfinished dependencies is in the batch), so a chain or a subtree of small tasks
  travels in one message and runs without a round trip per task.
* :mod:`.placement` keeps each worker's queue as deep as the measured time per task needs to
  hide a round trip: long tasks go one at a time to whichever worker is free, tiny ones by the
  hundred; a task whose large inputs live in a worker goes there.
* On the wire a task is its key, a number standing for its function (each function is pickled
  once per compute), its arguments and where the keys are among them; a worker reports only the
  results, in the order it ran the tasks.  Small results come back inline and are kept here, to
  be sent with the next task that needs them elsewhere; large ones stay in the worker that made
  them and move only when a task elsewhere needs them or they are requested.  Finished
  intermediates are released in the workers (with their next batch) once their last dependent
  has run.

Failures are never a hang: a task's exception comes back as the same exception type with the
remote traceback as its cause; a value that cannot be pickled is a ``SerializationError``
naming the task; a worker that dies is a :class:`WorkerDiedError` naming the task that was
running there and how the process ended (the pool replaces it before the next compute); a
``KeyboardInterrupt`` kills the busy workers, so none is left running abandoned work.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, NoReturn

from taskloom import config, gcpause
from taskloom.errors import TaskloomError, WorkerPluginError
from taskloom.graph import Key, _GatherTask, _TupleTask, to_wire
from taskloom.local import FOLLOW_MAX_DEPS, ExecutionState, TaskEvents, cpu_count, task_events
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

from .placement import Placement, locality
from .pool import ProcessPool, WorkerProcess, get_pool, wait
from .protocol import Payload, RemoteTraceback, recv, send, unpack_error

_cids = itertools.count(1)
GC_PAUSE_SECONDS = 1.0
_SEEDS = 64  # the tasks at the end of a worker's queue that more tasks may follow


class WorkerDiedError(TaskloomError, RuntimeError):
    """A worker process died while it ran a task or held results the compute needed."""


def get(
    graph: Mapping[Key, Any], keys: list[Key], num_workers: int | None = None, **kwargs: Any
) -> list[Any]:
    """Compute ``keys`` of ``graph`` on a reused pool of ``num_workers`` processes.

    ``num_workers`` falls back to the ``num_workers`` configuration value, then the CPU count;
    the start method is ``processes.context`` (default ``spawn``).
    """
    gc_pause = _GcPause()
    try:
        results = _compute(graph, keys, num_workers, gc_pause)  # its bookkeeping is freed on return
    finally:
        gc_pause.end()
    return [results[k] for k in keys]


def _compute(
    graph: Mapping[Key, Any], keys: list[Key], num_workers: int | None, gc_pause: _GcPause
) -> dict[Key, Any]:
    state = ExecutionState(plan(graph, keys))
    size = int(num_workers or config.get("num_workers", None) or cpu_count())
    pool = get_pool(size, str(config.get("processes.context", "spawn")))
    with pool.lock:
        return _Compute(pool, state, task_events(), gc_pause).run()


class _GcPause:
    """The cyclic garbage collector paused for the first ``GC_PAUSE_SECONDS`` of a compute.

    The plan and the engine's indexes are a few objects per task, built with the collector off
    and alive until the compute ends: the first collections after it would traverse them all
    again (20 to 40 ms for 10,000 tasks) to free nothing.  A longer compute resumes collecting,
    so other threads of this process never go long without it.
    """

    def __init__(self) -> None:
        gcpause.pause()
        self.active = True
        self.deadline = time.monotonic() + GC_PAUSE_SECONDS

    def check(self) -> float | None:
        """Resume collecting once the time is up; else how long until it is (``None``: no pause)."""
        if not self.active:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.end()
            return None
        return left

    def end(self) -> None:
        if self.active:
            self.active = False
            gcpause.resume()


class _Compute:
    """One compute on a pool: the scheduler side of the protocol.

    Values live in the engine's ``state.data``: small results as they came back (plain values
    or :class:`Payload` s), large ones as ``_HELD`` (their sizes in ``held``).  ``where[key]``
    is a bit mask of the workers that have a value or will have it once their queue gets there;
    each worker runs its tasks in the order they were sent and reports them in that order, so
    a report carries values only, matched against the worker's ``inflight`` queue.
    """

    def __init__(
        self, pool: ProcessPool, state: ExecutionState, events: TaskEvents, gc_pause: _GcPause | None = None
    ) -> None:
        self.pool = pool
        self.gc_pause = gc_pause
        self.state = state
        self.events = events
        self.timed = events.active
        self.cid = next(_cids)
        self.workers = pool.ensure_started()
        self.placement = Placement()
        plan_ = state.plan
        self.order = plan_.order
        self.tasks = plan_.tasks
        data = state.data
        for k, v in plan_.literals.items():  # a literal a plugin serializer claims goes through it
            if custom_for(v) is not None:
                data[k] = Payload.of(v)
        self.where: dict[Key, int] = {}  # key -> bit mask of the workers that have (or will have) it
        self.held: dict[Key, int] = {}  # sizes of results that live only in workers
        self.fetching: set[Key] = set()
        self.deferred: dict[Key, list[list[Any]]] = defaultdict(list)  # key fetched -> [[widx, items, n]]
        self.outputs: dict[Key, Any] = {}
        self.outputs_wanted = set(plan_.outputs)
        self.pending_release: list[list[Key]] = [[] for _ in self.workers]
        self.tokens: dict[int, int] = {}  # id(func) -> token, for this compute
        self.func_blobs: list[bytes] = []  # by token
        self.func_refs: list[Any] = []  # keeps id(func) unique for this compute
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
                self._wait_and_handle(self.gc_pause.check() if self.gc_pause is not None else None)
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

    def _wait_and_handle(self, timeout: float | None = None) -> None:
        """Wait for messages from workers (or their deaths), at most ``timeout`` seconds; handle them."""
        self._flush_releases()
        conns: dict[Any, WorkerProcess] = {w.conn: w for w in self.workers if w.alive}
        sentinels: dict[Any, WorkerProcess] = {w.proc.sentinel: w for w in self.workers if w.alive}
        for ready in wait([*conns, *sentinels], timeout):
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
            key = self.order[w.inflight[0]]
            raise WorkerDiedError(
                f"worker process {w.name} (pid {w.pid}) {reason} while running task {key!r}; "
                "the pool starts a replacement for the next compute"
            )
        bit = 1 << self.workers.index(w)
        lost = [k for k in self.held if self.where.get(k, 0) & bit]
        raise WorkerDiedError(
            f"worker process {w.name} (pid {w.pid}) {reason} holding results this compute needs "
            f"({', '.join(repr(k) for k in lost[:5])}); the pool starts a replacement for the next compute"
        )

    # -- messages from workers ----------------------------------------------------------------
    def _handle(self, w: WorkerProcess, msg: tuple[str, int, Any]) -> None:
        kind, cid, body = msg
        if cid != self.cid:
            return  # a late message from a cancelled compute
        if kind == "done":
            self._finished(w, body)
        elif kind == "data":
            for key, payload, problem in body:
                if payload is None:
                    raise SerializationError(f"the result of task {key!r} cannot be pickled: {problem}")
                self._arrived(key, payload)
        elif kind == "plugin-error":
            raise _plugin_error(body, w)
        elif kind == "undecodable":
            _, type_name, message, _text = body
            keys = ", ".join(repr(self.order[i]) for i in list(w.inflight)[:5])
            raise SerializationError(
                f"worker process {w.name} could not load the tasks sent to it ({keys}): "
                f"{type_name}: {message}"
            )

    def _finished(self, w: WorkerProcess, body: tuple[list[Any], list[Any], float, Any]) -> None:
        """A report from worker ``w``: the next ``len(values)`` tasks of its queue have finished."""
        values, specials, seconds, times = body
        self.placement.observe(seconds, len(values))
        inflight = w.inflight
        state = self.state
        finish = state.finish
        if specials or times is not None:
            self._finished_slow(w, values, specials, times)
        else:
            for value in values:
                finish(inflight.popleft(), value)
        released = state.released
        if released:
            if state.remaining:  # once all is done, the workers' stores are reset instead
                self._release(released)
            released.clear()

    def _finished_slow(
        self, w: WorkerProcess, values: list[Any], specials: list[tuple[int, str, Any]], times: Any
    ) -> None:
        """Reports with large, serialized or failed results, or per-task times for diagnostics."""
        inflight = w.inflight
        order, finish, held = self.order, self.state.finish, self.held
        ev = self.events
        special = {pos: (status, data) for pos, status, data in specials}
        for pos, value in enumerate(values):
            i = inflight.popleft()
            key = order[i]
            duration = times[pos][1] - times[pos][0] if times is not None else 0.0
            status, data = special.get(pos, _VALUE)
            if status == "error" or status == "unpicklable":
                self._failed(w, key, status, data, duration)
            if status == "held":
                held[key] = data
            if times is not None:
                if ev.start is not None:
                    ev.start(key=key, worker=w.name)
                if ev.finish is not None:
                    nbytes = _nbytes(ev, status, value if status == "value" else data)
                    ev.finish(key=key, worker=w.name, duration=duration, error=None, nbytes=nbytes)
            finish(i, _HELD if status == "held" else value if status == "value" else data)

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
            ev.finish(key=key, worker=w.name, duration=duration, error=exc, nbytes=None)
        raise exc

    def _release(self, keys: list[Key]) -> None:
        """The engine dropped these finished intermediates; the workers that have them will too.

        Workers are told with their next batch, or in one message before the next wait.
        """
        pop = self.where.pop
        pending = self.pending_release
        held = self.held
        for k in keys:
            bits = pop(k, 0)
            if held:
                held.pop(k, None)
            if bits == 1:
                pending[0].append(k)
            elif bits == 2:
                pending[1].append(k)
            else:
                widx = 0
                while bits:
                    if bits & 1:
                        pending[widx].append(k)
                    bits >>= 1
                    widx += 1

    def _flush_releases(self) -> None:
        for widx, ks in enumerate(self.pending_release):
            if ks:
                w = self.workers[widx]
                if w.alive:
                    send(w.conn, "release", self.cid, ks)
                self.pending_release[widx] = []

    def _arrived(self, key: Key, payload: Payload) -> None:
        """A large value fetched from its worker: kept here, sent on with the tasks that wait for it."""
        self.fetching.discard(key)
        self.held.pop(key, None)
        self.state.data[key] = payload
        for entry in self.deferred.pop(key, ()):
            entry[2] -= 1
            if not entry[2]:
                self._send(entry[0], entry[1])

    # -- sending work ------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Hand ready tasks out in batches, each with the dependents that can follow it there."""
        state = self.state
        ready = state.ready
        if state.error is not None or not (ready or state.running):
            return
        workers = self.workers
        loads = [len(w.inflight) for w in workers]
        depth = self.placement.depth
        if self.held:
            self._dispatch_by_locality(loads, depth)
            return
        by_load = sorted(range(len(workers)), key=loads.__getitem__)
        candidates = [k for k in by_load if self.placement.wants(loads[k])]
        if ready and candidates:
            share = -(-len(ready) // len(candidates))  # the ready tasks split evenly
            for widx in candidates:
                room = depth - loads[widx]
                picked = [i for i, _, _ in state.pop_batch(min(room, share), 0)]
                if not picked:
                    break
                batch = self._with_followers(picked, room)
                loads[widx] += len(batch)
                self._send(widx, batch)
        if not ready and state.error is None:
            # nothing ready: queue what can follow each worker's last tasks there, up to a
            # second queue's worth, so a chain keeps going while the worker runs its first part
            for widx, w in enumerate(workers):
                room = 2 * depth - loads[widx]
                if w.inflight and room > depth // 2:
                    tail = list(itertools.islice(reversed(w.inflight), _SEEDS))
                    batch = self._followers(tail, room)
                    loads[widx] += len(batch)
                    self._send(widx, batch)

    def _dispatch_by_locality(self, loads: list[int], depth: int) -> None:
        """While large results live in workers: each ready task, in priority order, goes to the
        worker that holds its large inputs (busy or not), else to the least loaded one."""
        state = self.state
        ready, order, tasks = state.ready, self.order, self.tasks
        where, held = self.where, self.held
        batches: dict[int, list[int]] = defaultdict(list)
        while ready and state.error is None:
            i = ready[0]
            target = locality(tasks[order[i]].dependencies, where, held)
            if target is None:
                target = min(range(len(loads)), key=loads.__getitem__)
                if loads[target] >= depth:
                    break
            state.pop()
            batch = self._with_followers([i], depth - loads[target] - 1)
            loads[target] += len(batch)
            batches[target].extend(batch)
        for widx, items in batches.items():
            self._send(widx, items)

    def _with_followers(self, picked: list[int], limit: int) -> list[int]:
        """``picked`` (popped, in priority order) and up to ``limit`` dependents claimed to follow them."""
        followers = self._followers(picked, limit)
        if not followers:
            return picked
        batch = picked + followers
        batch.sort()
        return batch

    def _followers(self, queued: list[int], limit: int) -> list[int]:
        """Up to ``limit`` dependents of ``queued`` (tasks bound for one worker) claimed to run after them.

        A dependent follows when every one of its unfinished dependencies is queued there or
        follows too (and it has at most ``FOLLOW_MAX_DEPS`` of them; a reduction over many waits
        its turn): the worker runs its tasks in the order sent, so a chain or a subtree runs
        without a round trip per task, in the depth-first order the sync scheduler follows.
        Counted with integers only -- each dependency edge is looked at once, no key is hashed.
        Returned in priority order.
        """
        if limit <= 0:
            return []
        state = self.state
        waiting, dependents, claimed, claim = state.waiting, state.dependents, state.claimed, state.claim
        hits: dict[int, int] = {}
        followers: list[int] = []
        stack = list(queued)
        while stack:
            for j in dependents[stack.pop()]:
                w = waiting[j]
                if w > FOLLOW_MAX_DEPS or j in claimed:
                    continue
                h = hits.get(j, 0) + 1
                if h < w:
                    hits[j] = h
                    continue
                claim(j)
                followers.append(j)
                stack.append(j)
                limit -= 1
                if not limit:
                    stack.clear()
                    break
        followers.sort()
        return followers

    def _send(self, widx: int, items: list[int]) -> None:
        """Send ``items`` to worker ``widx`` with the inputs it lacks; what needs a fetch waits for it."""
        if not items:
            return
        w = self.workers[widx]
        bit = 1 << widx
        where, data, order, tasks = self.where, self.state.data, self.order, self.tasks
        sent = w.funcs_sent
        funcs: list[tuple[int, bytes]] = []
        wire: list[Any] = []
        extend = wire.extend
        inputs: list[tuple[Key, Any]] = []
        last_func: Any = None
        token = -1
        for pos, i in enumerate(items):
            key = order[i]
            task = tasks[key]
            deps = task.dependencies
            for d in deps:
                has = where.get(d, 0)
                if not has & bit:
                    value = data[d]
                    if value is _HELD:
                        self._defer(widx, items[pos:], deps, bit)
                        items = items[:pos]
                        break
                    inputs.append((d, value))
                    where[d] = has | bit
            else:
                func = task.func
                if func is not last_func:
                    token = self._token(key, func)
                    last_func = func
                    if token not in sent:
                        funcs.append((token, self.func_blobs[token]))
                        sent.add(token)
                # five fields a task, in one flat list (a tuple per task would cost more to pickle)
                if type(task) is _TupleTask:  # a classic tuple: no kwargs, keys in args where refs say
                    extend((key, token, task.args, task._refs, None))
                elif type(task) is _GatherTask:  # the same, plus flat lists of keys: no Ref per element
                    extend((key, token, task.args, task._refs, task._lists))
                else:
                    args, kwargs, refs = to_wire(task)
                    extend((key, token, args, refs, kwargs))
                where[key] = bit  # sent once: no worker has it yet
                continue
            break
        if not wire:
            return
        w.inflight.extend(items)
        w.batches_sent += 1
        w.tasks_sent += len(items)
        releases = self.pending_release[widx]
        self.pending_release[widx] = []
        try:
            send(w.conn, "run", self.cid, (funcs, wire, inputs, releases, self.timed))
        except OSError:
            self._died(w)
        except Exception as exc:
            raise _unpicklable([(order[i], tasks[order[i]]) for i in items], inputs, exc) from None

    def _defer(self, widx: int, items: list[int], deps: Any, bit: int) -> None:
        """Hold ``items`` back until the large inputs of the first one, held elsewhere, arrive here."""
        data, where = self.state.data, self.where
        missing = [d for d in deps if data.get(d) is _HELD and not where.get(d, 0) & bit]
        entry: list[Any] = [widx, items, len(missing)]
        for d in missing:
            self.deferred[d].append(entry)
            self._fetch(d)

    def _token(self, key: Key, func: Any) -> int:
        """The number standing for ``func`` in this compute's messages; pickled once, by value if needed."""
        token = self.tokens.get(id(func))
        if token is None:
            import cloudpickle

            try:
                blob = cloudpickle.dumps(func, protocol=5)
            except Exception as exc:
                raise SerializationError(
                    f"task {key!r} cannot be sent to a worker process: its function is "
                    f"{describe(func)}, which cannot be pickled ({type(exc).__name__}: {exc})"
                ) from None
            token = self.tokens[id(func)] = len(self.func_blobs)
            self.func_blobs.append(blob)
            self.func_refs.append(func)
        return token

    def _fetch(self, key: Key) -> None:
        if key in self.fetching:
            return
        self.fetching.add(key)
        bits = self.where[key]
        holder = (bits & -bits).bit_length() - 1
        send(self.workers[holder].conn, "fetch", self.cid, [key])

    # -- outputs -----------------------------------------------------------------------------
    def _outputs_ready(self) -> bool:
        data = self.state.data
        for key in self.outputs_wanted:
            if key in self.outputs:
                continue
            value = data[key]
            if value is _HELD:
                self._fetch(key)
            else:
                self.outputs[key] = value.load() if type(value) is Payload else value
        return len(self.outputs) == len(self.outputs_wanted)


_HELD: Any = object()  # the value of a large result that stays in the worker that made it
_VALUE = ("value", None)  # the status of a plain result, which travels as itself


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


def _nbytes(events: TaskEvents, status: str, data: Any) -> int | None:
    """The result size for the diagnostics hooks: measured here, or as the worker reported it."""
    if not events.sizes:
        return None
    if status == "held":
        return int(data)  # the worker keeps the result and sent its pickled size
    if status == "inline":
        return int(data.nbytes)  # a Payload: the pickled frames
    return events.nbytes(data)
