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

*Claims*: when a task goes to a worker, a waiting dependent whose every unfinished input is
processing on that same worker (and which has at most ``CLAIM_MAX_DEPS`` inputs) goes there
too, at once, and so on downstream: the worker runs it as soon as its local inputs are done,
with no round trip through the scheduler (a chain runs at the worker's pace).  A claimed task
is ``processing`` with a non-empty ``waiting_on``.  Each task pulls at most ``nthreads``
dependents ahead with it, so a fan-out is still spread over the workers when its input is done.
If an input of a claimed task is sent elsewhere (rescheduled, stolen), fails, or the claimed
task is no longer wanted, the claim is withdrawn (``free-keys`` to its worker); a claimed task
on a worker that dies is rescheduled like any other task processing there.

*Restrictions* (``workers=`` of a submission): a restricted task goes only to a running worker
it names (by address or name) and is claimed only there; while there is none it waits in
``unrunnable`` until one joins.  With ``allow_other_workers`` the named workers are preferred.
*Retry* (:meth:`SchedulerState.retry`): failed tasks, their failed causes upstream and the
dependents that inherited their errors, are released and run again under the same keys.

Task specifications and results stay opaque ``Serialized`` frames here: the scheduler never
unpickles user data.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterable
from typing import Any

import attrs

from . import recovery

logger = logging.getLogger("taskloom.distributed.scheduler")

Recipient = tuple[str, Any]
Messages = list[tuple[Recipient, dict[str, Any]]]

BANDWIDTH = 500e6  # bytes/s assumed between workers, for placement
TRANSFER_LATENCY = 0.0005  # seconds a transfer from a peer costs whatever its size, for placement
DEFAULT_DURATION = 0.005  # seconds assumed for a task before any has been measured
EVENTS_KEPT = 10_000  # notable events (workers joining, leaving, retiring, stalls) remembered
CLAIM_MAX_DEPS = 8  # a task with more inputs than this is never claimed ahead (a reduction over many)
INLINE_MAX_KEYS = 16  # a submission wanting more keys has its results fetched in bulk, not inline


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
    deaths: list[dict[str, Any]] = attrs.Factory(list)  # workers that died while running it
    claims: int = 0  # dependents claimed ahead onto the worker running it (see the module docstring)
    inline: bool = False  # its small result goes to the clients with the news it is done
    # worker restrictions: addresses or names it may run on (None: any); ``loose``: only a preference
    restrictions: frozenset[str] | None = None
    loose: bool = False

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
    nanny: str | None = None  # the id of the nanny that started it, if any
    log: str = ""  # where its output goes (a file its nanny keeps)
    status: str = "running"  # only "running" workers get new tasks ("closing", "paused", ...)
    last_seen: float = 0.0  # when the scheduler last heard from it (server clock)

    def __repr__(self) -> str:
        return f"<WorkerInfo {self.address}>"


class SchedulerState:
    """All tasks, workers and clients the scheduler knows, and the rules that move them.

    ``allowed_failures``: how many workers a task may see die while it runs on them before it
    fails with :class:`~taskloom.errors.KilledWorkerError` (at least one).
    """

    def __init__(self, allowed_failures: int = 3) -> None:
        self.tasks: dict[Any, TaskState] = {}
        self.workers: dict[str, WorkerInfo] = {}
        self.running: dict[str, WorkerInfo] = {}  # the workers that take new tasks
        self.clients: dict[Any, set[TaskState]] = {}
        self.unrunnable: set[TaskState] = set()  # ready, but there is no running worker
        self.generation = itertools.count()
        self.mean_duration = DEFAULT_DURATION
        self.plugins: dict[str, Any] = {}  # worker plugins: name -> Serialized plugin, in order
        self.events: deque[tuple[str, Any]] = deque(maxlen=EVENTS_KEPT)  # recent notable events
        self.progress = 0  # tasks finished or failed so far: the stall watchdog watches it
        self.allowed_failures = allowed_failures
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
        return self.release_keys(client, [ts.key for ts in wanted], known=wanted)

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
    ) -> Messages:
        """A client submits ``tasks`` (key -> (spec, dependency keys)) and wants ``keys``.

        ``workers``: addresses or names of the workers the submitted tasks may run on (None: any);
        with ``allow_other_workers`` they are a preference only.  A restriction naming no known
        worker is accepted (its tasks wait for such a worker to join) and logged as a warning.
        """
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
            elif ts.state in ("released", "erred"):  # dropped since, or failed: run it again
                ts.spec = spec if spec is not None else ts.spec
                ts.state = "released"
                ts.exception = ts.traceback = ts.erred_on = None
                ts.deaths = []
                revived.append(ts)
            if observe:
                ts.observers.add(client)
        restrictions = frozenset(workers) if workers is not None else None
        if restrictions is not None:
            for ts in new + revived:
                ts.restrictions, ts.loose = restrictions, allow_other_workers
            known = {n for ws in self.workers.values() for n in _names(ws)}
            unknown = sorted(restrictions - known)
            if unknown and (new or revived):
                logger.warning(
                    "tasks %s are restricted to worker(s) %s, which the scheduler does not know%s",
                    _some_keys(new + revived),
                    ", ".join(map(repr, unknown)),
                    " (they may run elsewhere)" if allow_other_workers else ": they wait for such a worker",
                )
        for ts in new:
            for dkey in tasks[ts.key][1]:
                dep = self.tasks.get(dkey)
                if dep is None:
                    raise KeyError(f"task {ts.key!r} depends on {dkey!r}, which the scheduler does not know")
                ts.dependencies.add(dep)
                dep.dependents.add(ts)
        wanted = self.clients.setdefault(client, set())
        keys = list(keys)
        inline = len(keys) <= INLINE_MAX_KEYS  # a few results: each comes with its news
        for key in keys:
            ts = self.tasks[key]
            ts.who_wants.add(client)
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
        return out

    def _activate(self, ts: TaskState, out: Messages) -> None:
        """A new or released task: wait for its dependencies (recomputing lost ones), or run it."""
        if ts.state != "released":
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
                self._inherit_error(ts, dep, out)
                return
        ts.waiting_on = {d for d in ts.dependencies if d.state != "memory"}
        if ts.waiting_on:
            ts.state = "waiting"
            ws = self._claimer(ts)
            if ws is not None:
                self._claim(ts, ws, out)
        else:
            self._ready(ts, out)

    def _ready(self, ts: TaskState, out: Messages) -> None:
        if ts.dependents:  # claimed ahead where it was sent before: withdrawn, maybe claimed again below
            self.withdraw_claims(ts, out)
        ts.claims = 0
        ws = self.decide_worker(ts)
        if ws is None:
            ts.state = "waiting"
            ts.waiting_on.clear()
            self.unrunnable.add(ts)
            return
        ts.state = "processing"
        ts.processing_on = ws
        ws.processing.add(ts)
        out.append((("worker", ws.address), self._compute_msg(ts)))
        if ts.dependents:
            self._claim_downstream(ts, ws, out)

    # -- claims ----------------------------------------------------------------------------------
    def _claimer(self, ts: TaskState) -> WorkerInfo | None:
        """The worker that may run waiting ``ts`` ahead: every unfinished input processes there."""
        if ts.state != "waiting" or not ts.waiting_on or len(ts.dependencies) > CLAIM_MAX_DEPS:
            return None
        ws = None
        for dep in ts.waiting_on:
            w = dep.processing_on
            if w is None or (ws is not None and w is not ws) or dep.claims >= w.nthreads:
                return None
            ws = w
        if ws is None or self.running.get(ws.address) is not ws:
            return None
        if ts.restrictions is not None and not allows(ts, ws):  # restricted elsewhere: not claimed here
            return None
        return ws

    def _claim(self, ts: TaskState, ws: WorkerInfo, out: Messages) -> None:
        """Send waiting ``ts`` to ``ws`` ahead of its inputs there, and its dependents that can follow."""
        self._claim_one(ts, ws, out)
        if ts.dependents:
            self._claim_downstream(ts, ws, out)

    def _claim_one(self, ts: TaskState, ws: WorkerInfo, out: Messages) -> None:
        for dep in ts.waiting_on:
            dep.claims += 1
        if ts.dependents:  # claimed on it when it was sent before: they follow it afresh
            self.withdraw_claims(ts, out)
        ts.state = "processing"
        ts.processing_on = ws
        ws.processing.add(ts)
        out.append((("worker", ws.address), self._compute_msg(ts)))

    def _claim_downstream(self, ts: TaskState, ws: WorkerInfo, out: Messages) -> None:
        """The waiting dependents of ``ts`` (processing on ``ws``) that can follow it there, and theirs."""
        stack = [ts]
        while stack:
            for d in stack.pop().dependents:
                if d.state == "waiting" and self._claimer(d) is ws:
                    self._claim_one(d, ws, out)
                    if d.dependents:
                        stack.append(d)

    def withdraw_claims(self, ts: TaskState, out: Messages) -> None:
        """The dependents claimed ahead on ``ts`` (and downstream of them) go back to waiting:
        ``ts`` is about to run elsewhere, or again."""
        ts.claims = 0
        stack = [ts]
        while stack:
            t = stack.pop()
            for d in t.dependents:
                if d.state == "processing" and t in d.waiting_on:
                    self._unclaim(d, out)
                    d.state = "waiting"
                    stack.append(d)

    def _unclaim(self, ts: TaskState, out: Messages) -> None:
        ws = ts.processing_on
        if ws is not None:
            ws.processing.discard(ts)
            out.append((("worker", ws.address), {"op": "free-keys", "keys": [ts.key]}))
        ts.processing_on = None
        ts.claims = 0

    def decide_worker(self, ts: TaskState) -> WorkerInfo | None:
        """The running worker where ``ts`` would start soonest (input transfer + queued work),
        among those its restrictions allow (None: no running worker may take it now)."""
        if not self.running:
            return None
        candidates: Iterable[WorkerInfo] = self.running.values()
        if ts.restrictions is not None:
            allowed = [ws for ws in self.running.values() if allows(ts, ws)]
            if not allowed and not ts.loose:
                return None
            candidates = allowed or candidates
        elif self._run_length > 1 and not ts.dependencies:
            current, left = self._run
            if current is not None and left > 0 and self.running.get(current.address) is current:
                self._run = (current, left - 1)
                return current
            first = min(self.running.values(), key=lambda w: len(w.processing) / w.nthreads)
            self._run = (first, self._run_length - 1)
            return first
        holders = {ws for dep in ts.dependencies for ws in dep.who_has if ws.status == "running"}
        if holders and len(self.running) > 8 and ts.restrictions is None:
            candidates = holders | {min(self.running.values(), key=lambda w: len(w.processing) / w.nthreads)}
        best, best_cost = None, float("inf")
        for ws in candidates:
            missing = 0
            transfers = 0
            for dep in ts.dependencies:
                if ws not in dep.who_has:
                    missing += dep.nbytes
                    transfers += 1
            cost = (
                missing / BANDWIDTH
                + transfers * TRANSFER_LATENCY
                + len(ws.processing) / ws.nthreads * self.mean_duration
            )
            if cost < best_cost:
                best, best_cost = ws, cost
        return best

    def _compute_msg(self, ts: TaskState) -> dict[str, Any]:
        msg = {
            "op": "compute-task",
            "key": ts.key,
            "spec": ts.spec,
            "priority": ts.priority,
            "who_has": {d.key: [w.address for w in d.who_has] for d in ts.dependencies},
            "nbytes": {d.key: d.nbytes for d in ts.dependencies},
        }
        if ts.inline and ts.who_wants:  # a client waits for it: a small result comes with the news
            msg["inline"] = True
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
        ts.waiting_on.clear()
        self.unrunnable.discard(ts)
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
        for dep in ts.dependencies:
            dep.waiters.discard(ts)
            self._maybe_release(dep, out)
        self._maybe_release(ts, out)
        return out

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
        out: Messages = []
        upstream: set[TaskState] = set()
        stack = [ts for ts in map(self.tasks.get, keys) if ts is not None and ts.state == "erred"]
        while stack:  # the failed tasks and their inputs not in memory: the error came from there
            t = stack.pop()
            if t in upstream:
                continue
            upstream.add(t)
            stack.extend(d for d in t.dependencies if d.state in ("erred", "released") and d.spec is not None)
        causes = {t.key for t in upstream}
        revive = {t for t in upstream if t.state == "erred"}
        stack, seen = list(upstream), set(upstream)
        while stack:  # dependents that failed because of them (through released ones between)
            for d in stack.pop().dependents:
                if d in seen or d.state not in ("erred", "released") or d.erred_on not in causes:
                    continue
                seen.add(d)
                stack.append(d)
                if d.state == "erred":
                    revive.add(d)
        for t in revive:
            t.state = "released"
            t.exception = t.traceback = t.erred_on = None
            t.deaths = []
            for client in t.who_wants:
                out.append((("client", client), {"op": "task-retried", "key": t.key}))
        for t in sorted(revive, key=lambda t: t.priority):
            self._activate(t, out)
        return out

    def fail(self, ts: TaskState, exception: Any, traceback: Any, out: Messages) -> None:
        """``ts`` failed for good: its clients are told, and everything downstream fails with it."""
        ts.state = "erred"
        ts.exception, ts.traceback, ts.erred_on = exception, traceback, ts.key
        ts.waiting_on.clear()
        self.unrunnable.discard(ts)
        for client in ts.who_wants:
            out.append((("client", client), self._erred_msg(ts)))
        for dep in list(ts.dependents):
            self._inherit_error(dep, ts, out)
        self._drop_inputs(ts, out)

    def _inherit_error(self, ts: TaskState, cause: TaskState, out: Messages) -> None:
        """``ts`` and everything downstream of it fail with ``cause``'s error."""
        stack = [ts]
        while stack:
            t = stack.pop()
            if t.state in ("erred", "memory"):
                continue
            if t.processing_on is not None:  # claimed ahead there: its worker drops it
                self._unclaim(t, out)
            self.unrunnable.discard(t)
            t.state = "erred"
            t.exception, t.traceback, t.erred_on = cause.exception, cause.traceback, cause.erred_on
            t.waiting_on.clear()
            for client in t.who_wants:
                out.append((("client", client), self._erred_msg(t)))
            stack.extend(t.dependents)
            self._drop_inputs(t, out)

    def _drop_inputs(self, ts: TaskState, out: Messages) -> None:
        """A failed task needs its inputs no more."""
        for dep in list(ts.dependencies):
            if ts in dep.waiters:
                dep.waiters.discard(ts)
                self._maybe_release(dep, out)

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

    # -- releasing -------------------------------------------------------------------------------
    def release_keys(self, client: Any, keys: Iterable[Any], known: set[TaskState] | None = None) -> Messages:
        out: Messages = []
        wanted = self.clients.get(client, set())
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            ts.who_wants.discard(client)
            ts.observers.discard(client)
            wanted.discard(ts)
            self._maybe_release(ts, out)
        return out

    def _maybe_release(self, ts: TaskState, out: Messages) -> None:
        """Drop ``ts``'s data if no client wants it and no pending dependent needs it; forget it
        once no known task depends on it (and so on upstream)."""
        stack = [ts]
        while stack:
            t = stack.pop()
            if t.who_wants or t.waiters:
                continue
            if t.state == "processing":
                if not t.waiting_on:  # running (or about to): it finishes, then is released
                    continue
                self._unclaim(t, out)  # claimed ahead, its inputs not done: it never runs
            if t.state != "released" or t.who_has:
                for ws in t.who_has:
                    ws.has_what.discard(t)
                    ws.nbytes -= t.nbytes
                    out.append((("worker", ws.address), {"op": "free-keys", "keys": [t.key]}))
                t.who_has.clear()
                t.state = "released"
                t.waiting_on.clear()
                self.unrunnable.discard(t)
                for dep in t.dependencies:
                    if t in dep.waiters:
                        dep.waiters.discard(t)
                        stack.append(dep)
            if not t.dependents and self.tasks.get(t.key) is t:
                del self.tasks[t.key]
                for dep in t.dependencies:
                    dep.dependents.discard(t)
                    stack.append(dep)

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


def _names(ws: WorkerInfo) -> tuple[str, ...]:
    """What a restriction may call ``ws``: its address (with or without the scheme) or its name."""
    return (ws.address, ws.address.split("://", 1)[-1], ws.name)


def allows(ts: TaskState, ws: WorkerInfo) -> bool:
    """Whether ``ts``'s worker restrictions name ``ws`` (True for an unrestricted task)."""
    r = ts.restrictions
    return r is None or any(n in r for n in _names(ws))


def _some_keys(tasks: list[TaskState], limit: int = 5) -> str:
    shown = ", ".join(repr(ts.key) for ts in tasks[:limit])
    return shown + (f" and {len(tasks) - limit} more" if len(tasks) > limit else "")
