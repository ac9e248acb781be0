"""The worker's decisions as a state machine: which task to run next, what to fetch from whom.

Events: the scheduler asks for a task (``compute_task``), a dependency arrived from a peer
(``fetched``) or could not be fetched (``fetch_failed``), a task finished (``executed``), keys
were freed (``free``).  Each returns *instructions* for the server, which does the I/O:
``("fetch", peer_address, [keys])``, ``("execute", key)``, ``("follow", input_key, key)`` (run
``key`` on the thread of ``input_key``, right after it: its only missing input, executing here;
the runner may refuse with :meth:`WorkerState.unfollow`) and ``("send", message)``.  Ready
tasks run highest priority first, at most ``nthreads`` at a time.  A *paused* worker (its memory
is above the ``pause`` threshold: :meth:`WorkerState.set_paused`) starts no task and fetches
nothing until it is resumed; tasks keep arriving and wait, ready, meanwhile.  A task may arrive
before its inputs are computed *here* (the scheduler claimed it ahead, see
:mod:`..scheduler.state`): it waits for them like for a fetch and runs as soon as they finish,
and it is never given up to a steal request meanwhile (nor is an input a task here waits on).
When its one missing input is executing here it *follows* it (state ``executing``, counted apart
from the tasks that hold a thread: ``following``).  ``data`` may be any
mutable mapping: the worker passes its spill-to-disk store (:class:`~.memory.SpillBuffer`).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import MutableMapping
from typing import Any

import attrs

Instructions = list[tuple[Any, ...]]


@attrs.define(eq=False)
class WorkerTask:
    key: Any
    spec: Any = None
    priority: tuple[int, ...] = (0,)
    state: str = "new"  # waiting | ready | executing | memory | fetch | flight | error
    dependencies: set[Any] = attrs.Factory(set)
    missing: set[Any] = attrs.Factory(set)
    dependents: set[Any] = attrs.Factory(set)
    who_has: list[str] = attrs.Factory(list)
    inline: bool = False  # a client waits for it: a small result goes back with the news
    relay: int = 0  # its result, if at most this many bytes pickled, goes to the scheduler to relay
    dependents_anywhere: int = 0  # its dependents on any worker when it was sent (see relay)


class WorkerState:
    """What a worker holds, runs and fetches."""

    def __init__(
        self, nthreads: int, address: str = "", data: MutableMapping[Any, Any] | None = None
    ) -> None:
        self.nthreads = nthreads
        self.address = address
        self.tasks: dict[Any, WorkerTask] = {}
        self.data: MutableMapping[Any, Any] = {} if data is None else data
        self.paused = False
        self.ready: list[tuple[tuple[int, ...], int, Any]] = []  # (priority, arrival, key)
        self._arrivals = itertools.count()
        self.executing: set[Any] = set()
        self.following: set[Any] = set()  # executing after their input on its thread (see "follow")
        # tasks handed to the threads beyond one each (queued behind the running ones): the
        # worker raises it while tasks are short, so a thread never waits for the loop between two
        self.prefetch = 0
        self.in_flight: dict[str, set[Any]] = {}  # peer -> keys being fetched from it
        self.inline_limit = 0  # bytes: a result a client waits for comes with the news (see server)

    def compute_task(self, msg: dict[str, Any], inputs: dict[Any, Any] | None = None) -> Instructions:
        """Run ``msg["key"]`` once its inputs are here; ``inputs``: input values that came with
        the message (small results the scheduler relays), held from now on like fetched ones."""
        key = msg["key"]
        if inputs:
            self._relayed(inputs)
        ts = self.tasks.get(key)
        if ts is None:
            ts = self.tasks[key] = WorkerTask(key)
        if ts.state == "memory" and key in self.data:  # fetched here earlier: nothing to run
            return [
                (
                    "send",
                    {"op": "task-finished", "key": key, "nbytes": 0, "type": type(self.data[key]).__name__},
                )
            ]
        if ts.state in ("executing", "ready", "waiting"):
            return []
        ts.spec, ts.priority = msg["spec"], tuple(msg["priority"])
        ts.inline = "inline" in msg
        ts.relay, ts.dependents_anywhere = msg.get("relay", (0, 0))
        who_has = msg["who_has"]
        deps = msg.get("deps")  # (where the scheduler knows them held here, in deps only)
        ts.dependencies = set(who_has if deps is None else deps)
        ts.missing = {d for d in ts.dependencies if d not in self.data}
        out: Instructions = []
        for dep in ts.missing:
            dts = self.tasks.get(dep)
            if dts is None:
                dts = self.tasks[dep] = WorkerTask(dep)
            dts.dependents.add(key)
            if dep in who_has:  # (none: the scheduler counts it here -- what an earlier message said stays)
                dts.who_has = list(who_has[dep])
            if dts.state in ("new", "error"):
                dts.state = "fetch"
        out += self._fetch([self.tasks[dep] for dep in ts.missing])
        if not ts.missing:
            self._make_ready(ts)
            return out + self._schedule()
        ts.state = "waiting"
        if len(ts.missing) == 1 and not self.paused:
            (dep,) = ts.missing
            dts = self.tasks.get(dep)
            if dts is not None and dts.state == "executing":
                ts.state = "executing"
                self.following.add(key)
                out.append(("follow", dep, key))
        return out + self._schedule()

    def _relayed(self, inputs: dict[Any, Any]) -> None:
        for key, value in inputs.items():
            dts = self.tasks.get(key)
            if dts is None:
                dts = self.tasks[key] = WorkerTask(key)
            elif dts.state not in ("new", "fetch", "flight", "error"):
                continue  # computed here (or about to be): the scheduler did not know yet
            if dts.state == "flight":  # the fetch under way stores the same value again
                for keys in self.in_flight.values():
                    keys.discard(key)
            self._arrived(dts, value)

    def _arrived(self, dts: WorkerTask, value: Any) -> None:
        """An input is here (fetched, or relayed): the tasks waiting only for it are ready."""
        key = dts.key
        self.data[key] = value
        dts.state = "memory"
        for dependent in list(dts.dependents):
            ts = self.tasks.get(dependent)
            if ts is not None and key in ts.missing:
                ts.missing.discard(key)
                if not ts.missing and ts.state == "waiting":
                    self._make_ready(ts)

    def unfollow(self, key: Any) -> Instructions:
        """``key`` did not follow its input after all (the input had finished, or failed): it waits
        for it as before (made ready when its report arrives; freed by the scheduler after a failure)."""
        ts = self.tasks.get(key)
        self.following.discard(key)
        if ts is not None and ts.state == "executing" and key not in self.executing:
            ts.state = "waiting"
            if not ts.missing:
                self._make_ready(ts)
        return self._schedule()

    def _fetch(self, deps: list[WorkerTask]) -> Instructions:
        """Fetch instructions for the dependencies in state ``fetch`` (none while paused)."""
        if self.paused:
            return []
        wanted: dict[str, list[Any]] = {}
        for dts in deps:
            if dts.state == "fetch":
                peer = self._pick_peer(dts)
                if peer is None:
                    continue
                dts.state = "flight"
                wanted.setdefault(peer, []).append(dts.key)
        out: Instructions = []
        for peer, keys in wanted.items():
            self.in_flight.setdefault(peer, set()).update(keys)
            out.append(("fetch", peer, keys))
        return out

    def set_paused(self, paused: bool) -> Instructions:
        """Pause (memory above ``pause``: start nothing, fetch nothing) or resume."""
        self.paused = paused
        if paused:
            return []
        needed = [ts for ts in self.tasks.values() if ts.state == "fetch" and ts.dependents]
        return self._fetch(needed) + self._schedule()

    def set_prefetch(self, prefetch: int) -> Instructions:
        """Hand the threads up to ``prefetch`` tasks beyond one each (queued behind the running ones)."""
        self.prefetch = prefetch
        return self._schedule()

    def acquire_replicas(self, who_has: dict[Any, list[str]]) -> Instructions:
        """Copy results from the peers holding them (a retiring worker's): fetched like inputs, and
        reported with ``add-keys`` once here.  Keys held, coming or being computed here are skipped."""
        out: Instructions = []
        held = {key: 0 for key in who_has if key in self.data}
        if held:  # here already: the scheduler just did not know
            out.append(("send", {"op": "add-keys", "keys": held}))
        wanted = []
        for key, holders in who_has.items():
            if key in held:
                continue
            dts = self.tasks.get(key)
            if dts is None:
                dts = self.tasks[key] = WorkerTask(key)
            if dts.state in ("new", "error", "fetch"):
                dts.state = "fetch"
                dts.who_has = list(holders)
                wanted.append(dts)
        return out + self._fetch(wanted)

    def steal(self, key: Any) -> Instructions:
        """The scheduler would move ``key`` to another worker: dropped if it has not started here,
        waits for no input computed here and no task here waits for it."""
        ts = self.tasks.get(key)
        stolen = ts is not None and ts.state in ("ready", "waiting") and not self._bound_here(ts)
        if stolen and ts is not None:
            del self.tasks[key]  # its entry in the ready heap is skipped when it comes up
            for dep in ts.dependencies:
                dts = self.tasks.get(dep)
                if dts is not None:
                    dts.dependents.discard(key)
                    if dts.state == "fetch" and not dts.dependents:  # not asked for yet: not needed
                        del self.tasks[dep]
        state = ts.state if ts is not None else "released"
        return [("send", {"op": "steal-response", "key": key, "stolen": stolen, "state": state})]

    def _bound_here(self, ts: WorkerTask) -> bool:
        tasks = self.tasks
        for dep in ts.missing:
            dts = tasks.get(dep)
            if dts is not None and dts.state in ("waiting", "ready", "executing"):
                return True
        for key in ts.dependents:
            dependent = tasks.get(key)
            if dependent is not None and ts.key in dependent.missing:
                return True
        return False

    def _pick_peer(self, dts: WorkerTask) -> str | None:
        peers = [p for p in dts.who_has if p != self.address]
        if not peers:
            return None
        return min(peers, key=lambda p: len(self.in_flight.get(p, ())))

    def _make_ready(self, ts: WorkerTask) -> None:
        ts.state = "ready"
        heapq.heappush(self.ready, (ts.priority, next(self._arrivals), ts.key))

    def _schedule(self) -> Instructions:
        out: Instructions = []
        while self.ready and len(self.executing) < self.nthreads + self.prefetch and not self.paused:
            _, _, key = heapq.heappop(self.ready)
            ts = self.tasks.get(key)
            if ts is None or ts.state != "ready":
                continue
            ts.state = "executing"
            self.executing.add(key)
            out.append(("execute", key))
        return out

    def fetched(self, peer: str, data: dict[Any, Any]) -> Instructions:
        """Dependencies arrived; the scheduler is told this worker holds them too (to free them)."""
        self.in_flight.get(peer, set()).difference_update(data)
        out: Instructions = [("send", {"op": "add-keys", "keys": {k: 0 for k in data}})]
        for key, value in data.items():
            dts = self.tasks.get(key)
            if dts is None:
                self.data[key] = value
            else:
                self._arrived(dts, value)
        return out + self._schedule()

    def fetch_failed(self, peer: str, keys: list[Any], reason: str) -> Instructions:
        """A peer did not have the data (it died or freed it): try another holder, else report."""
        self.in_flight.get(peer, set()).difference_update(keys)
        out: Instructions = []
        for key in keys:
            dts = self.tasks.get(key)
            if dts is None or dts.state != "flight":  # freed, or to be computed here, since
                continue
            dts.who_has = [p for p in dts.who_has if p != peer]
            nxt = self._pick_peer(dts)
            if nxt is not None and self.paused:
                dts.state = "fetch"  # fetched from another holder once resumed
            elif nxt is not None:
                self.in_flight.setdefault(nxt, set()).add(key)
                out.append(("fetch", nxt, [key]))
            else:
                dts.state = "fetch"
                out.append(
                    ("send", {"op": "missing-data", "key": key, "errant_worker": peer, "reason": reason})
                )
        return out

    def relay_limit(self, key: Any) -> int:
        """How large a result of ``key`` may be (pickled) to go to the scheduler with the news
        that it is done: for a client waiting for it, or to relay to dependents elsewhere (none
        when every dependent it had when sent is here); call before :meth:`executed`."""
        ts = self.tasks.get(key)
        if ts is None:
            return 0
        relay = ts.relay if len(ts.dependents) < ts.dependents_anywhere else 0
        return max(self.inline_limit if ts.inline else 0, relay)

    def executed(
        self, key: Any, value: Any = None, error: bool = False, stored: bool = False
    ) -> Instructions:
        """A task finished here; tasks claimed ahead that waited only for it are ready now (after
        a failure they wait until the scheduler frees them)."""
        self.executing.discard(key)
        self.following.discard(key)
        ts = self.tasks.get(key)
        if ts is not None:
            ts.state = "error" if error else "memory"
            if not error:
                if not stored:  # a follower's input is stored by the runner already
                    self.data[key] = value
                if ts.dependents:
                    tasks = self.tasks
                    for dependent in ts.dependents:
                        dts = tasks.get(dependent)
                        if dts is not None and key in dts.missing:
                            dts.missing.discard(key)
                            if not dts.missing and dts.state == "waiting":
                                self._make_ready(dts)
                    ts.dependents.clear()
        return self._schedule()

    def free(self, keys: list[Any]) -> Instructions:
        """Drop ``keys``; a task executing finishes first (and is freed again once reported),
        one that follows its input is taken back from the runner (``("unfollow", key)``): if it
        has started there, it finishes the same way."""
        out: Instructions = []
        for key in keys:
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "executing":
                if key in self.following:
                    out.append(("unfollow", key))
                continue  # it finishes, is reported, and the scheduler frees it again
            if key in self.data:  # not pop(): that would read a spilled value back from disk
                del self.data[key]
            self.tasks.pop(key, None)
        return out + self._schedule()

    def unfollowed(self, key: Any) -> Instructions:
        """The runner gave follower ``key`` back before it started (it was freed): dropped."""
        self.following.discard(key)
        ts = self.tasks.get(key)
        if ts is not None and ts.state == "executing" and key not in self.executing:
            del self.tasks[key]
        return []
