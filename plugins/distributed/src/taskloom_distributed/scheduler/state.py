"""The scheduler's decisions as a state machine: events in, messages out, no I/O.

Every public method takes one event (a client submitted a graph, a worker finished or failed a
task, a worker joined or left, a client released keys) and returns the messages it causes, as
``(recipient, message)`` pairs where the recipient is ``("worker", address)`` or
``("client", client_id)``.  The server (:mod:`.server`) does the sockets; tests drive this class
directly.  What happens when a worker dies or goes quiet (rescheduling, recomputing lost
results, blaming the tasks that kill workers) is in :mod:`.recovery`.

Task life cycle: ``waiting`` (dependencies not yet in memory) -> ``processing`` (sent to a
worker) -> ``memory`` (held by one or more workers) or ``erred``; a task nobody needs any more is
``released``, and forgotten once no task that depends on it is known either: while a result is
held, the tasks it came from stay known (``released``) so that it can be recomputed if its
worker dies.  A ready task goes to the running worker with the smallest estimated start time:
bytes of its inputs that would have to move there divided by the bandwidth, plus the work
already queued there per thread.

Where a ready task goes is decided in :mod:`.placement`; waiting dependents sent ahead to the
worker running their inputs (*claims*) in :mod:`.claims`; worker restrictions (``workers=`` of a
submission) in :mod:`.restrictions`; how errors spread and :meth:`SchedulerState.retry` in
:mod:`.failures`; dropping what nobody needs in :mod:`.releasing`; the task and worker records
in :mod:`.tasks`.

Task specifications and results stay opaque ``Serialized`` frames here: the scheduler never
unpickles user data.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterable
from typing import Any

from . import claims, failures, placement, recovery, releasing
from .claims import CLAIM_MAX_DEPS
from .placement import BANDWIDTH, TRANSFER_LATENCY
from .restrictions import _names, _some_keys, allows, restrict
from .tasks import EMPTY, NO_DEATHS, Messages, Recipient, TaskState, WorkerInfo

__all__ = [
    "BANDWIDTH",
    "CLAIM_MAX_DEPS",
    "DEFAULT_DURATION",
    "EVENTS_KEPT",
    "INLINE_MAX_KEYS",
    "MissingDependencyError",
    "RELEASE_NOW_MAX",
    "TRANSFER_LATENCY",
    "Messages",
    "Recipient",
    "SchedulerState",
    "TaskState",
    "WorkerInfo",
    "_names",
    "_some_keys",
    "allows",
]

logger = logging.getLogger("taskloom.distributed.scheduler")

DEFAULT_DURATION = 0.005  # seconds assumed for a task before any has been measured
EVENTS_KEPT = 10_000  # notable events (workers joining, leaving, retiring, stalls) remembered
INLINE_MAX_KEYS = 16  # a submission wanting more keys has its results fetched in bulk, not inline
RELAY_BYTES = 1024  # default of distributed.scheduler.relay_bytes
RELEASE_NOW_MAX = 64  # a task that finishes with more inputs lets go of them in release_inputs()


class MissingDependencyError(KeyError):
    """A submitted task depends on a key the scheduler does not know.  ``messages``: what letting
    go of the tasks held for the rest of its graph caused (``free-keys`` for their workers)."""

    def __init__(self, error: str, messages: Messages) -> None:
        super().__init__(error)
        self.messages = messages


class SchedulerState:
    """All tasks, workers and clients the scheduler knows, and the rules that move them.

    ``allowed_failures``: how many workers a task may see die while it runs on them before it
    fails with :class:`~taskloom.errors.KilledWorkerError` (at least one).
    """

    def __init__(self, allowed_failures: int = 3, relay_bytes: int = RELAY_BYTES) -> None:
        self.tasks: dict[Any, TaskState] = {}
        self.workers: dict[str, WorkerInfo] = {}
        self.running: dict[str, WorkerInfo] = {}  # the workers that take new tasks
        self.clients: dict[Any, set[TaskState]] = {}
        # graphs that come in parts: (client, graph id) -> (generation, the tasks held for it)
        self.held: dict[tuple[Any, Any], tuple[int, list[TaskState]]] = {}
        self.failed_graphs: dict[tuple[Any, Any], str] = {}  # -> the error of the failed part
        # finished with many inputs, and those not let go yet (see release_inputs)
        self.inputs_to_release: list[tuple[TaskState, list[TaskState]]] = []
        self.unrunnable: set[TaskState] = set()  # ready, but there is no running worker
        self.generation = itertools.count()
        self.mean_duration = DEFAULT_DURATION
        self.plugins: dict[str, Any] = {}  # worker plugins: name -> Serialized plugin, in order
        self.events: deque[tuple[str, Any]] = deque(maxlen=EVENTS_KEPT)  # recent notable events
        self.progress = 0  # tasks finished or failed so far: the stall watchdog watches it
        self.allowed_failures = allowed_failures
        # results up to this many bytes pickled come with the news they are done and are relayed
        # inside the compute-task message of a dependent placed on another worker (0: never)
        self.relay_bytes = relay_bytes
        # tasks without inputs submitted together go to one worker in runs of consecutive
        # priority (siblings of a reduction meet where they were made): run length, and the
        # worker of the current run with how many it may still take
        self._run_length = 1
        self._run: tuple[WorkerInfo | None, int] = (None, 0)

    # -- clients ---------------------------------------------------------------------------------
    def add_client(self, client: Any) -> Messages:
        self.clients.setdefault(client, set())
        return []

    def remove_client(self, client: Any) -> Messages:
        wanted = self.clients.pop(client, set())
        out = self.release_keys(client, [ts.key for ts in wanted], known=wanted)
        for c, graph in [k for k in self.held if k[0] == client]:
            out += self.abandon_graph(c, graph)
        for k in [k for k in self.failed_graphs if k[0] == client]:
            del self.failed_graphs[k]
        return out

    def update_graph(
        self,
        client: Any,
        tasks: dict[Any, tuple[Any, list[Any]]],
        keys: Iterable[Any],
        priorities: dict[Any, int] | None = None,
        retries: int = 0,
        observe: bool = False,
        workers: Iterable[str] | None = None,
        allow_other_workers: bool = False,
        graph: Any = None,
        more: bool = False,
        hold: Iterable[Any] | None = None,
    ) -> Messages:
        """A client submits ``tasks`` (key -> (spec, dependency keys)) and wants ``keys``.

        ``workers``: addresses or names of the workers the submitted tasks may run on (None: any);
        with ``allow_other_workers`` they are a preference only.  A restriction naming no known
        worker is accepted (its tasks wait for such a worker to join) and logged as a warning.

        A large graph may come in parts, in priority order (each part's dependencies in earlier
        parts), so that its first tasks run while the client still prepares the rest: every
        part names the same ``graph`` id and all but the last say ``more``.  The tasks of a
        part that later parts need (``hold``; default: all of them) are held -- not released,
        whatever finishes -- until the last part is in; all parts share the first one's
        generation.  A missing dependency fails the whole graph: its held
        tasks are let go, its other parts ignored, and the last one raises the same error.
        """
        out: Messages = []
        held = self.held.get((client, graph)) if graph is not None else None
        failed = self.failed_graphs.get((client, graph)) if graph is not None else None
        if failed is not None:
            if more:  # (the last part raises it)
                return out
            del self.failed_graphs[client, graph]
            raise MissingDependencyError(failed, out)
        if held is None:
            gen = next(self.generation)
            if more:
                held = self.held[client, graph] = (gen, [])
        else:
            gen = held[0]
        priorities = priorities or {}
        new: list[TaskState] = []
        revived: list[TaskState] = []
        for key, (spec, _deps) in tasks.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = self.tasks[key] = TaskState(key, spec, (gen, priorities.get(key, 0)))
                ts.retries = retries
                new.append(ts)
            elif ts.state in ("released", "erred"):  # dropped since, or failed: run it again
                ts.spec = spec if spec is not None else ts.spec
                ts.state = "released"
                ts.exception = ts.traceback = ts.erred_on = None
                ts.deaths = NO_DEATHS
                revived.append(ts)
            if observe:
                ts.observers = {*ts.observers, client}
        if more and held is not None:
            kept = held[1]
            for ts in new + revived if hold is None else (self.tasks[k] for k in hold if k in tasks):
                ts.held += 1
                kept.append(ts)
        if workers is not None:
            restrict(new + revived, workers, allow_other_workers, self.workers.values())
        try:
            self._link(new, tasks)
        except KeyError as exc:
            self._drop_new(new)
            error = str(exc.args[0])
            freed: Messages = []
            if graph is not None:
                freed = self.abandon_graph(client, graph)
                if more:
                    self.failed_graphs[client, graph] = error
            raise MissingDependencyError(error, freed) from None
        wanted = self.clients.setdefault(client, set())
        keys = list(keys)
        inline = len(keys) <= INLINE_MAX_KEYS  # a few results: each comes with its news
        for key in keys:
            ts = self.tasks[key]
            if ts.who_wants:
                ts.who_wants.add(client)
            else:
                ts.who_wants = {client}
            ts.inline = ts.inline or inline
            wanted.add(ts)
        roots = sum(1 for ts in new if not ts.dependencies)
        threads = sum(ws.nthreads for ws in self.running.values())
        if threads > 1 and roots >= 4 * threads:
            self._run_length = -(-roots // threads)
        try:
            for ts in sorted(new + revived, key=lambda t: t.priority):
                self._activate(ts, out)
        finally:
            self._run_length, self._run = 1, (None, 0)
        for key in keys:  # already computed (or failed) before this submission
            ts = self.tasks[key]
            if ts.state == "memory":
                out.append((("client", client), self._in_memory_msg(ts)))
            elif ts.state == "erred":
                out.append((("client", client), self._erred_msg(ts)))
        if not more and held is not None:  # the last part: the earlier ones need no holding now
            del self.held[client, graph]
            releasing.unhold(self, held[1], out)
        return out

    def _link(self, new: list[TaskState], tasks: dict[Any, tuple[Any, list[Any]]]) -> None:
        for ts in new:
            for dkey in tasks[ts.key][1]:
                dep = self.tasks.get(dkey)
                if dep is None:
                    raise KeyError(f"task {ts.key!r} depends on {dkey!r}, which the scheduler does not know")
                ts.dependencies.add(dep)
                dep.dependents.add(ts)

    def _drop_new(self, new: list[TaskState]) -> None:
        """Forget the tasks a submission that failed made (nothing ran yet)."""
        for ts in new:
            for dep in ts.dependencies:
                dep.dependents.discard(ts)
            ts.dependencies.clear()
            if self.tasks.get(ts.key) is ts:
                del self.tasks[ts.key]

    def abandon_graph(self, client: Any, graph: Any) -> Messages:
        """The rest of ``graph`` will not come (the client failed to prepare it, or left): the
        tasks held for it are let go (dropped, unless something else needs them)."""
        out: Messages = []
        held = self.held.pop((client, graph), None)
        if held is not None:
            releasing.unhold(self, held[1], out)
        return out

    def _activate(self, ts: TaskState, out: Messages) -> None:
        """A new or released task: wait for its dependencies (recomputing lost ones), or run it."""
        if ts.state != "released":
            return
        for dep in ts.dependencies:
            if dep.state == "released" and dep.spec is not None:
                break
        else:  # nothing upstream to run again (a new task, usually): no search
            self._activate_one(ts, out)
            return
        order: list[TaskState] = []  # ts and the released tasks upstream of it, inputs first
        seen: set[TaskState] = set()
        stack: list[tuple[TaskState, bool]] = [(ts, False)]
        while stack:  # iterative: a long chain of lost results must not hit the recursion limit
            t, expanded = stack.pop()
            if expanded:
                order.append(t)
                continue
            if t in seen:
                continue
            seen.add(t)
            stack.append((t, True))
            for dep in t.dependencies:
                if dep.state == "released" and dep.spec is not None and dep not in seen:
                    stack.append((dep, False))
        for t in order:
            self._activate_one(t, out)

    def _activate_one(self, ts: TaskState, out: Messages) -> None:
        if ts.state != "released":
            return
        for dep in ts.dependencies:
            dep.waiters.add(ts)
            if dep.state == "erred":
                failures.inherit_error(self, ts, dep, out)
                return
        ts.waiting_on = {d for d in ts.dependencies if d.state != "memory"}
        if ts.waiting_on:
            ts.state = "waiting"
            ws = claims.claimer(self, ts)
            if ws is not None:
                claims.claim(self, ts, ws, out)
        else:
            self._ready(ts, out)

    def _ready(self, ts: TaskState, out: Messages) -> None:
        if ts.dependents:  # claimed ahead where it was sent before: withdrawn, maybe claimed again below
            claims.withdraw_claims(self, ts, out)
        ts.claims = 0
        ws = self.decide_worker(ts)
        if ws is None:
            ts.state = "waiting"
            ts.waiting_on = EMPTY
            self.unrunnable.add(ts)
            return
        ts.state = "processing"
        ts.processing_on = ws
        ws.processing.add(ts)
        out.append((("worker", ws.address), self._compute_msg(ts)))
        if ts.dependents:
            claims.claim_downstream(self, ts, ws, out)

    # -- claims and placement (:mod:`.claims`, :mod:`.placement`) -------------------------------
    def withdraw_claims(self, ts: TaskState, out: Messages) -> None:
        """The dependents claimed ahead on ``ts`` (and downstream of them) go back to waiting."""
        claims.withdraw_claims(self, ts, out)

    def _unclaim(self, ts: TaskState, out: Messages) -> None:
        claims.unclaim(ts, out)

    def decide_worker(self, ts: TaskState) -> WorkerInfo | None:
        """The running worker where ``ts`` would start soonest (None: none may take it now)."""
        return placement.decide_worker(self, ts)

    def _compute_msg(self, ts: TaskState, ws: WorkerInfo | None = None) -> dict[str, Any]:
        """The compute-task message of ``ts`` for ``ws`` (default: the worker processing it).

        ``deps`` lists its inputs; ``who_has`` says where those ``ws`` lacks are (an empty list:
        not computed yet, as for a task claimed ahead of its inputs); those ``ws`` holds are in
        ``deps`` only -- a task of thousands of inputs made where they are costs a key each.
        Small inputs the scheduler holds (``relayed``) and ``ws`` lacks travel inside it, so
        ``ws`` needs no fetch from a peer; from then on ``ws`` counts as a holder of them.
        """
        if ws is None:
            ws = ts.processing_on
        deps: list[Any] = []
        who_has: dict[Any, list[str]] = {}
        msg = {
            "op": "compute-task",
            "key": ts.key,
            "spec": ts.spec,
            "priority": ts.priority,
            "deps": deps,
            "who_has": who_has,
        }
        if ts.inline and ts.who_wants:  # a client waits for it: a small result comes with the news
            msg["inline"] = True
        if ts.dependents and self.relay_bytes:  # (the worker skips it when they all run there)
            msg["relay"] = (self.relay_bytes, len(ts.dependents))
        data = None
        for d in ts.dependencies:
            deps.append(d.key)
            holders = d.who_has
            if ws in holders:
                continue
            who_has[d.key] = [w.address for w in holders]  # (also for a relayed one it cannot load)
            if d.relayed is not None and ws is not None and d.state == "memory":
                if data is None:
                    data = msg["data"] = {}
                data[d.key] = d.relayed
                holders.add(ws)
                ws.has_what.add(d)
                ws.nbytes += d.nbytes
        return msg

    # -- workers -------------------------------------------------------------------------------
    def add_worker(
        self,
        address: str,
        name: str = "",
        nthreads: int = 1,
        memory_limit: int = 0,
        pid: int = 0,
        nanny: str | None = None,
        log: str = "",
        now: float = 0.0,
    ) -> Messages:
        """A worker registered (a new one, or one that rejoins after it was removed)."""
        out: Messages = []
        if address in self.workers:  # the same address registering again: the old one is gone
            out += self.remove_worker(address, "registered again", expected=True)
        ws = WorkerInfo(address, name or address, nthreads, memory_limit, pid, nanny=nanny, log=log)
        ws.last_seen = now
        self.workers[address] = self.running[address] = ws
        self.events.append(("add-worker", address))
        if self.plugins:
            out.append((("worker", address), {"op": "plugins", "plugins": dict(self.plugins)}))
        self._place_unrunnable(out)
        return out

    def worker_status(self, address: str, status: str) -> Messages:
        """A worker stops taking new tasks (``"closing"``, ``"paused"``, ...) or takes them again."""
        out: Messages = []
        ws = self.workers.get(address)
        if ws is None or ws.status == status:
            return out
        ws.status = status
        if status == "running":
            self.running[address] = ws
            self._place_unrunnable(out)
        else:
            self.running.pop(address, None)
        return out

    def _place_unrunnable(self, out: Messages) -> None:
        if not self.running:
            return
        pending, self.unrunnable = self.unrunnable, set()
        for ts in sorted(pending, key=lambda t: t.priority):
            if ts.state == "waiting" and not ts.waiting_on:
                self._ready(ts, out)

    def remove_worker(
        self,
        address: str,
        reason: str = "",
        how: str | None = None,
        executing: Iterable[bytes] | None = None,
        expected: bool = False,
    ) -> Messages:
        """A worker left: rerun what it was running, recompute what only it held.

        ``how`` says how it died (for :class:`~taskloom.errors.KilledWorkerError`); ``executing``
        holds the digests of the tasks it was running when it died, if its nanny knows them
        (otherwise every task sent to it is suspect); ``expected`` (a restart, a requested close)
        blames no task.
        """
        return recovery.remove_worker(self, address, reason, how, executing, expected)

    def missing_data(self, worker: str, key: Any, errant_worker: str) -> Messages:
        """``worker`` could not get ``key`` from ``errant_worker`` (nor from any other holder)."""
        return recovery.missing_data(self, worker, key, errant_worker)

    def stale_workers(self, now: float, ttl: float) -> list[str]:
        """Workers not heard from for longer than ``ttl`` seconds."""
        return [a for a, ws in self.workers.items() if now - ws.last_seen > ttl]

    def restart(self, reason: str) -> Messages:
        """Forget every task (their futures fail with ``CancelledError``); workers are restarted."""
        return recovery.restart(self, reason)

    # -- results ---------------------------------------------------------------------------------
    def task_finished(
        self,
        worker: str,
        key: Any,
        nbytes: int,
        type_name: str = "",
        duration: float = 0.0,
        value: Any = None,
    ) -> Messages:
        """``worker`` holds the result of ``key``; ``value``: the result itself, when small and
        wanted by a client (opaque frames), passed on to the clients that want it and not kept."""
        out: Messages = []
        ts = self.tasks.get(key)
        ws = self.workers.get(worker)
        if ws is None:  # a worker that has been removed: it is told nothing, it is gone
            return out
        if ts is None or ts.state not in ("processing", "waiting", "released", "memory"):
            return [(("worker", worker), {"op": "free-keys", "keys": [key]})]
        if ts.processing_on is not None:
            ts.processing_on.processing.discard(ts)
            ts.processing_on = None
        if duration:
            self.mean_duration = 0.9 * self.mean_duration + 0.1 * duration
        if ws not in ts.who_has:
            ts.who_has.add(ws)
            ws.has_what.add(ts)
            ws.nbytes += nbytes
        if ts.state == "memory":
            return out
        for client in ts.observers:
            event = {"op": "task-event", "key": key, "worker": worker, "duration": duration, "nbytes": nbytes}
            out.append((("client", client), event))
        ts.state = "memory"
        self.progress += 1
        ts.nbytes, ts.type = nbytes, type_name
        ts.exception = ts.traceback = None
        ts.waiting_on = EMPTY
        self.unrunnable.discard(ts)
        if value is not None and ts.dependents and sum(len(f) for f in value[1]) <= self.relay_bytes:
            ts.relayed = value  # relayed to the workers of its dependents (a client's may be larger)
        if ts.who_wants:
            msg = self._in_memory_msg(ts)
            if value is not None:
                msg["value"] = value
            for client in ts.who_wants:
                out.append((("client", client), msg))
        dependents = ts.dependents
        for dep in sorted(dependents, key=lambda t: t.priority) if len(dependents) > 1 else dependents:
            if ts in dep.waiting_on:
                dep.waiting_on.discard(ts)
                if not dep.waiting_on and dep.state == "waiting":
                    self._ready(dep, out)
        if len(ts.dependencies) <= RELEASE_NOW_MAX:
            self._release_inputs(ts, ts.dependencies, out)
        else:  # after its news is out (see release_inputs)
            self.inputs_to_release.append((ts, list(ts.dependencies)))
        if not ts.waiters and not ts.who_wants:
            releasing.maybe_release(self, ts, out)
        return out

    def release_inputs(self, limit: int = RELEASE_NOW_MAX) -> Messages:
        """Let go of up to ``limit`` inputs of the tasks that finished with more than
        :data:`RELEASE_NOW_MAX` of them (``task_finished`` leaves that to this event: releasing
        10,000 inputs takes tens of ms).  The server sends it once the news of the finished task
        is out, and again, a turn of its loop later, while ``inputs_to_release`` is not empty."""
        out: Messages = []
        pending = self.inputs_to_release
        while pending and limit > 0:
            ts, deps = pending[-1]
            chunk = deps[-limit:]
            del deps[-limit:]
            limit -= len(chunk)
            if not deps:
                pending.pop()
            self._release_inputs(ts, chunk, out)
        return out

    def _release_inputs(self, ts: TaskState, deps: Iterable[TaskState], out: Messages) -> None:
        for dep in deps:
            waiters = dep.waiters
            waiters.discard(ts)
            if not waiters and not dep.who_wants:  # (the usual case, still needed: no call)
                releasing.maybe_release(self, dep, out)

    def task_erred(self, worker: str, key: Any, exception: Any, traceback: Any) -> Messages:
        out: Messages = []
        ts = self.tasks.get(key)
        if ts is None or ts.state != "processing" or worker not in self.workers:
            return out
        self.progress += 1
        for client in ts.observers:
            msg = {"op": "task-event", "key": key, "worker": worker, "duration": 0.0, "error": exception}
            out.append((("client", client), msg))
        if ts.processing_on is not None:
            ts.processing_on.processing.discard(ts)
        ts.processing_on = None
        if ts.retries > 0:
            ts.retries -= 1
            ts.state = "released"
            self._activate(ts, out)
            return out
        self.fail(ts, exception, traceback, out)
        return out

    def retry(self, keys: Iterable[Any]) -> Messages:
        """Run failed ``keys`` again in place, with the failed tasks upstream that caused their
        errors and the failed dependents that inherited them (keys that did not fail: nothing).

        Each task run again is pending once more for the clients that want it (``task-retried``);
        its earlier error, and the workers that died under it, are forgotten.
        """
        return failures.retry(self, keys)

    def fail(self, ts: TaskState, exception: Any, traceback: Any, out: Messages) -> None:
        """``ts`` failed for good: its clients are told, and everything downstream fails with it."""
        failures.fail(self, ts, exception, traceback, out)

    def _in_memory_msg(self, ts: TaskState) -> dict[str, Any]:
        # who_has: the client fetches the result from there without asking the scheduler first
        who_has = [ws.address for ws in ts.who_has]
        return {
            "op": "key-in-memory",
            "key": ts.key,
            "type": ts.type,
            "nbytes": ts.nbytes,
            "who_has": who_has,
        }

    def _erred_msg(self, ts: TaskState) -> dict[str, Any]:
        return {
            "op": "task-erred",
            "key": ts.key,
            "exception": ts.exception,
            "traceback": ts.traceback,
            "cause": ts.erred_on,
        }

    # -- releasing (:mod:`.releasing`) ----------------------------------------------------------
    def release_keys(self, client: Any, keys: Iterable[Any], known: set[TaskState] | None = None) -> Messages:
        return releasing.release_keys(self, client, keys)

    def _maybe_release(self, ts: TaskState, out: Messages) -> None:
        releasing.maybe_release(self, ts, out)

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
                    ws.nbytes += ts.nbytes  # released from every holder later
                continue
            if ts is not None and ts.spec is not None:
                if ts.state in ("processing", "waiting"):  # a copy made before it was lost: use it
                    out += self.task_finished(worker, key, nbytes or ts.nbytes, ts.type)
                else:  # not needed (any more), or failed
                    out.append((("worker", worker), {"op": "free-keys", "keys": [key]}))
                continue
            if ts is None:
                ts = self.tasks[key] = TaskState(key, None, (next(self.generation), 0))
            ts.state = "memory"
            ts.exception = ts.traceback = ts.erred_on = None
            ts.nbytes = nbytes
            ts.who_has.add(ws)
            ws.has_what.add(ts)
            ws.nbytes += nbytes
            if client is not None:  # scattered by a client: it holds a Future for it
                ts.who_wants = {*ts.who_wants, client}
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
