"""The scheduler's decisions as a state machine: events in, messages out, no I/O.

Every public method takes one event (a client submitted a graph, a worker finished or failed a
task, a worker joined or left, a client released keys) and returns the messages it causes, as
``(recipient, message)`` pairs where the recipient is ``("worker", address)`` or
``("client", client_id)``.  The server (:mod:`.server`) does the sockets; tests drive this class
directly.

Task life cycle: ``waiting`` (dependencies not yet in memory) -> ``processing`` (sent to a
worker) -> ``memory`` (held by one or more workers) or ``erred``; a task nobody needs any more is
``released`` and forgotten.  A ready task goes to the worker with the smallest estimated start
time: bytes of its inputs that would have to move there divided by the bandwidth, plus the work
already queued there per thread.  Task specifications and results stay opaque ``Serialized``
frames here: the scheduler never unpickles user data.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import attrs

Recipient = tuple[str, Any]
Messages = list[tuple[Recipient, dict[str, Any]]]

BANDWIDTH = 500e6  # bytes/s assumed between workers, for placement
DEFAULT_DURATION = 0.005  # seconds assumed for a task before any has been measured


@attrs.define(eq=False, repr=False)
class TaskState:
    key: Any
    spec: Any = None
    priority: tuple[int, int] = (0, 0)
    state: str = "released"
    dependencies: set[TaskState] = attrs.Factory(set)
    dependents: set[TaskState] = attrs.Factory(set)
    waiting_on: set[TaskState] = attrs.Factory(set)
    waiters: set[TaskState] = attrs.Factory(set)  # dependents that still need this value
    who_has: set[WorkerInfo] = attrs.Factory(set)
    processing_on: WorkerInfo | None = None
    who_wants: set[Any] = attrs.Factory(set)
    nbytes: int = 0
    type: str = ""
    exception: Any = None
    traceback: Any = None
    erred_on: Any = None  # key of the task whose error this one inherits
    retries: int = 0
    observers: set[Any] = attrs.Factory(set)  # clients that want every state change (diagnostics)

    def __repr__(self) -> str:
        return f"<TaskState {self.key!r} {self.state}>"


@attrs.define(eq=False, repr=False)
class WorkerInfo:
    address: str
    name: str = ""
    nthreads: int = 1
    memory_limit: int = 0
    pid: int = 0
    processing: set[TaskState] = attrs.Factory(set)
    has_what: set[TaskState] = attrs.Factory(set)
    nbytes: int = 0
    metrics: dict[str, Any] = attrs.Factory(dict)

    def __repr__(self) -> str:
        return f"<WorkerInfo {self.address}>"


class SchedulerState:
    """All tasks, workers and clients the scheduler knows, and the rules that move them."""

    def __init__(self) -> None:
        self.tasks: dict[Any, TaskState] = {}
        self.workers: dict[str, WorkerInfo] = {}
        self.clients: dict[Any, set[TaskState]] = {}
        self.unrunnable: set[TaskState] = set()  # ready, but there is no worker
        self.generation = itertools.count()
        self.mean_duration = DEFAULT_DURATION
        self.plugins: dict[str, Any] = {}  # worker plugins: name -> Serialized plugin, in order
        self.events: list[tuple[str, Any]] = []  # recent notable events, for diagnostics

    # -- clients ---------------------------------------------------------------------------------
    def add_client(self, client: Any) -> Messages:
        self.clients.setdefault(client, set())
        return []

    def remove_client(self, client: Any) -> Messages:
        wanted = self.clients.pop(client, set())
        return self.release_keys(client, [ts.key for ts in wanted], known=wanted)

    def update_graph(
        self,
        client: Any,
        tasks: dict[Any, tuple[Any, list[Any]]],
        keys: Iterable[Any],
        priorities: dict[Any, int] | None = None,
        retries: int = 0,
        observe: bool = False,
    ) -> Messages:
        """A client submits ``tasks`` (key -> (spec, dependency keys)) and wants ``keys``."""
        out: Messages = []
        gen = next(self.generation)
        priorities = priorities or {}
        new: list[TaskState] = []
        revived: list[TaskState] = []
        for key, (spec, _deps) in tasks.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = self.tasks[key] = TaskState(key, spec, (gen, priorities.get(key, 0)))
                ts.retries = retries
                new.append(ts)
                if observe:
                    ts.observers.add(client)
            elif ts.state in ("released", "erred"):  # dropped since, or failed: run it again
                ts.spec = spec if spec is not None else ts.spec
                ts.state = "released"
                ts.exception = ts.traceback = ts.erred_on = None
                revived.append(ts)
            if observe:
                ts.observers.add(client)
        for ts in new:
            for dkey in tasks[ts.key][1]:
                dep = self.tasks.get(dkey)
                if dep is None:
                    raise KeyError(f"task {ts.key!r} depends on {dkey!r}, which the scheduler does not know")
                ts.dependencies.add(dep)
                dep.dependents.add(ts)
        wanted = self.clients.setdefault(client, set())
        for key in keys:
            ts = self.tasks[key]
            ts.who_wants.add(client)
            wanted.add(ts)
        for ts in sorted(new + revived, key=lambda t: t.priority):
            self._activate(ts, out)
        for key in keys:  # already computed (or failed) before this submission
            ts = self.tasks[key]
            if ts.state == "memory":
                out.append((("client", client), self._in_memory_msg(ts)))
            elif ts.state == "erred":
                out.append((("client", client), self._erred_msg(ts)))
        return out

    def _activate(self, ts: TaskState, out: Messages) -> None:
        """A new or released task: wait for its dependencies, or run it."""
        if ts.state not in ("released",):
            return
        for dep in ts.dependencies:
            dep.waiters.add(ts)
            if dep.state == "released":
                if dep.spec is None:  # a scattered value that has been lost
                    continue
                self._activate(dep, out)
            if dep.state == "erred":
                self._inherit_error(ts, dep, out)
                return
        ts.waiting_on = {d for d in ts.dependencies if d.state != "memory"}
        if ts.waiting_on:
            ts.state = "waiting"
        else:
            self._ready(ts, out)

    def _ready(self, ts: TaskState, out: Messages) -> None:
        ws = self.decide_worker(ts)
        if ws is None:
            ts.state = "waiting"
            self.unrunnable.add(ts)
            return
        ts.state = "processing"
        ts.processing_on = ws
        ws.processing.add(ts)
        out.append((("worker", ws.address), self._compute_msg(ts)))

    def decide_worker(self, ts: TaskState) -> WorkerInfo | None:
        """The worker where ``ts`` would start soonest (input transfer + queued work)."""
        if not self.workers:
            return None
        candidates: Iterable[WorkerInfo] = self.workers.values()
        holders = {ws for dep in ts.dependencies for ws in dep.who_has}
        if holders and len(self.workers) > 8:
            candidates = holders | {min(self.workers.values(), key=lambda w: len(w.processing) / w.nthreads)}
        best, best_cost = None, float("inf")
        for ws in candidates:
            missing = sum(dep.nbytes for dep in ts.dependencies if ws not in dep.who_has)
            cost = missing / BANDWIDTH + len(ws.processing) / ws.nthreads * self.mean_duration
            if cost < best_cost:
                best, best_cost = ws, cost
        return best

    def _compute_msg(self, ts: TaskState) -> dict[str, Any]:
        return {
            "op": "compute-task",
            "key": ts.key,
            "spec": ts.spec,
            "priority": ts.priority,
            "who_has": {d.key: [w.address for w in d.who_has] for d in ts.dependencies},
            "nbytes": {d.key: d.nbytes for d in ts.dependencies},
        }

    # -- workers -------------------------------------------------------------------------------
    def add_worker(
        self, address: str, name: str = "", nthreads: int = 1, memory_limit: int = 0, pid: int = 0
    ) -> Messages:
        out: Messages = []
        ws = WorkerInfo(address, name or address, nthreads, memory_limit, pid)
        self.workers[address] = ws
        self.events.append(("add-worker", address))
        if self.plugins:
            out.append((("worker", address), {"op": "plugins", "plugins": dict(self.plugins)}))
        pending, self.unrunnable = self.unrunnable, set()
        for ts in sorted(pending, key=lambda t: t.priority):
            if ts.state == "waiting" and not ts.waiting_on:
                self._ready(ts, out)
        return out

    def remove_worker(self, address: str, reason: str = "") -> Messages:
        """A worker left: rerun what it was running, recompute what only it held."""
        out: Messages = []
        ws = self.workers.pop(address, None)
        if ws is None:
            return out
        self.events.append(("remove-worker", (address, reason)))
        lost = []
        for ts in ws.has_what:
            ts.who_has.discard(ws)
            if not ts.who_has and ts.state == "memory":
                lost.append(ts)
        rerun = list(ws.processing)
        ws.processing.clear()
        for ts in rerun:
            ts.processing_on = None
            ts.state = "released"
        for ts in lost:
            ts.state = "released"
            if ts.spec is None:  # scattered data cannot be recomputed
                self._fail_lost(ts, out, reason)
        for ts in sorted(lost + rerun, key=lambda t: t.priority):
            if ts.state == "released" and (ts.waiters or ts.who_wants):
                for dep_of in ts.waiters:  # dependents wait again for the recomputed value
                    if dep_of.state == "waiting":
                        dep_of.waiting_on.add(ts)
                self._activate(ts, out)
        return out

    def _fail_lost(self, ts: TaskState, out: Messages, reason: str) -> None:
        ts.state = "erred"
        ts.exception = f"the data of {ts.key!r} was lost with its worker ({reason}) and cannot be recomputed"
        for client in ts.who_wants:
            out.append((("client", client), self._erred_msg(ts)))

    # -- results ---------------------------------------------------------------------------------
    def task_finished(
        self, worker: str, key: Any, nbytes: int, type_name: str = "", duration: float = 0.0
    ) -> Messages:
        out: Messages = []
        ts = self.tasks.get(key)
        ws = self.workers.get(worker)
        if ts is None or ws is None:
            return [(("worker", worker), {"op": "free-keys", "keys": [key]})]
        for client in ts.observers:
            event = {"op": "task-event", "key": key, "worker": worker, "duration": duration}
            out.append((("client", client), event))
        if ts.processing_on is ws:
            ws.processing.discard(ts)
            ts.processing_on = None
        if duration:
            self.mean_duration = 0.9 * self.mean_duration + 0.1 * duration
        ts.who_has.add(ws)
        ws.has_what.add(ts)
        ws.nbytes += nbytes
        if ts.state == "memory":
            return out
        if ts.state not in ("processing", "waiting", "released"):
            return out
        ts.state = "memory"
        ts.nbytes, ts.type = nbytes, type_name
        ts.exception = ts.traceback = None
        for client in ts.who_wants:
            out.append((("client", client), self._in_memory_msg(ts)))
        for dep in sorted(ts.dependents, key=lambda t: t.priority):
            if ts in dep.waiting_on:
                dep.waiting_on.discard(ts)
                if not dep.waiting_on and dep.state == "waiting":
                    self._ready(dep, out)
        for dep in ts.dependencies:
            dep.waiters.discard(ts)
            self._maybe_release(dep, out)
        self._maybe_release(ts, out)
        return out

    def task_erred(self, worker: str, key: Any, exception: Any, traceback: Any) -> Messages:
        out: Messages = []
        ts = self.tasks.get(key)
        ws = self.workers.get(worker)
        if ts is None or ts.state != "processing":
            return out
        for client in ts.observers:
            msg = {"op": "task-event", "key": key, "worker": worker, "duration": 0.0, "error": exception}
            out.append((("client", client), msg))
        if ws is not None:
            ws.processing.discard(ts)
        ts.processing_on = None
        if ts.retries > 0:
            ts.retries -= 1
            ts.state = "released"
            self._activate(ts, out)
            return out
        ts.state = "erred"
        ts.exception, ts.traceback, ts.erred_on = exception, traceback, key
        for client in ts.who_wants:
            out.append((("client", client), self._erred_msg(ts)))
        for dep in list(ts.dependents):
            self._inherit_error(dep, ts, out)
        return out

    def _inherit_error(self, ts: TaskState, cause: TaskState, out: Messages) -> None:
        """``ts`` and everything downstream of it fail with ``cause``'s error."""
        stack = [ts]
        while stack:
            t = stack.pop()
            if t.state == "erred":
                continue
            if t.processing_on is not None:
                t.processing_on.processing.discard(t)
                t.processing_on = None
            self.unrunnable.discard(t)
            t.state = "erred"
            t.exception, t.traceback, t.erred_on = cause.exception, cause.traceback, cause.erred_on
            t.waiting_on.clear()
            for client in t.who_wants:
                out.append((("client", client), self._erred_msg(t)))
            stack.extend(t.dependents)

    def _in_memory_msg(self, ts: TaskState) -> dict[str, Any]:
        return {"op": "key-in-memory", "key": ts.key, "type": ts.type, "nbytes": ts.nbytes}

    def _erred_msg(self, ts: TaskState) -> dict[str, Any]:
        return {
            "op": "task-erred",
            "key": ts.key,
            "exception": ts.exception,
            "traceback": ts.traceback,
            "cause": ts.erred_on,
        }

    # -- releasing -------------------------------------------------------------------------------
    def release_keys(self, client: Any, keys: Iterable[Any], known: set[TaskState] | None = None) -> Messages:
        out: Messages = []
        wanted = self.clients.get(client, set())
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            ts.who_wants.discard(client)
            wanted.discard(ts)
            self._maybe_release(ts, out)
        return out

    def _maybe_release(self, ts: TaskState, out: Messages) -> None:
        """Drop ``ts`` if no client wants it and no pending dependent needs it (and so on upstream)."""
        stack = [ts]
        while stack:
            t = stack.pop()
            if t.who_wants or t.waiters or t.state == "processing":
                continue
            if t.state == "released" and not t.who_has:
                if not t.dependents:
                    self.tasks.pop(t.key, None)
                continue
            for ws in t.who_has:
                ws.has_what.discard(t)
                ws.nbytes -= t.nbytes
                out.append((("worker", ws.address), {"op": "free-keys", "keys": [t.key]}))
            t.who_has.clear()
            t.state = "released"
            self.unrunnable.discard(t)
            for dep in t.dependencies:
                dep.waiters.discard(t)
                dep.dependents.discard(t)
                stack.append(dep)
            if not t.dependents:
                self.tasks.pop(t.key, None)

    def add_keys(self, worker: str, keys: dict[Any, int], client: Any = None) -> Messages:
        """``worker`` holds ``keys`` too: data scattered there, or copied there as a dependency."""
        ws = self.workers.get(worker)
        if ws is None:
            return []
        out: Messages = []
        for key, nbytes in keys.items():
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "memory":
                if ws not in ts.who_has:
                    ts.who_has.add(ws)
                    ws.has_what.add(ts)
                continue
            if ts is not None and ts.state == "released" and ts.spec is not None:
                out.append((("worker", worker), {"op": "free-keys", "keys": [key]}))  # nobody needs it
                continue
            if ts is None:
                ts = self.tasks[key] = TaskState(key, None, (next(self.generation), 0))
            ts.state = "memory"
            ts.nbytes = nbytes
            ts.who_has.add(ws)
            ws.has_what.add(ts)
            ws.nbytes += nbytes
            if client is not None:  # scattered by a client: it holds a Future for it
                ts.who_wants.add(client)
                self.clients.setdefault(client, set()).add(ts)
        return out

    # -- queries ---------------------------------------------------------------------------------
    def who_has(self, keys: Iterable[Any] | None = None) -> dict[Any, list[str]]:
        chosen = self.tasks.values() if keys is None else (self.tasks[k] for k in keys if k in self.tasks)
        return {ts.key: [w.address for w in ts.who_has] for ts in chosen if ts.who_has}

    def has_what(self) -> dict[str, list[Any]]:
        return {a: [ts.key for ts in ws.has_what] for a, ws in self.workers.items()}

    def task_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ts in self.tasks.values():
            counts[ts.state] = counts.get(ts.state, 0) + 1
        return counts
