"""Tasks claimed ahead onto the worker of their inputs (no round trip per task), tasks that follow
their input on its thread, and small results that come back inline with the news they are done."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from taskloom.testing import wait_until
from taskloom.worker import get_worker
from taskloom_distributed import Client
from taskloom_distributed.scheduler.state import Messages, SchedulerState
from taskloom_distributed.scheduler.stealing import WorkStealing
from taskloom_distributed.worker.runner import SKIPPED, Outcome, TaskRunner
from taskloom_distributed.worker.state import WorkerState

pytestmark = pytest.mark.timeout(120)

A, B = "tcp://a:1", "tcp://b:1"


def submit(st: SchedulerState, deps: dict[Any, list[Any]], wanted: list[Any], client: str = "c1") -> Messages:
    tasks = {k: (f"spec-{k}", d) for k, d in deps.items()}
    return st.update_graph(client, tasks, wanted, {k: i for i, k in enumerate(deps)})


def computes(out: Messages) -> dict[Any, str]:
    return {m["key"]: r[1] for r, m in out if r[0] == "worker" and m["op"] == "compute-task"}


def freed(out: Messages) -> list[tuple[str, Any]]:
    return [(r[1], k) for r, m in out if m["op"] == "free-keys" for k in m["keys"]]


def to_clients(out: Messages, op: str) -> dict[Any, dict[str, Any]]:
    return {m["key"]: m for r, m in out if r[0] == "client" and m["op"] == op}


def chain(n: int) -> dict[Any, list[Any]]:
    return {f"t{i}": ([f"t{i - 1}"] if i else []) for i in range(n)}


def two_workers() -> SchedulerState:
    st = SchedulerState()
    st.add_worker(A)
    st.add_worker(B)
    return st


# -- the scheduler ---------------------------------------------------------------------------------
def test_a_chain_is_sent_to_one_worker_at_once_and_needs_no_message_per_step() -> None:
    st = two_workers()
    out = submit(st, chain(100), ["t99"])
    sent = computes(out)
    assert len(sent) == 100 and len(set(sent.values())) == 1
    worker = sent["t0"]
    assert st.tasks["t1"].waiting_on == {st.tasks["t0"]}  # claimed: processing, its input not done
    for i in range(99):
        out = st.task_finished(worker, f"t{i}", 8)
        assert computes(out) == {}  # nothing to send: the worker runs t(i+1) by itself
    out = st.task_finished(worker, "t99", 8)
    assert to_clients(out, "key-in-memory").keys() == {"t99"}
    assert st.tasks["t99"].state == "memory"


def test_a_fan_out_claims_one_dependent_per_thread_and_spreads_the_rest_when_its_input_is_done() -> None:
    st = two_workers()
    deps: dict[Any, list[Any]] = {"x": [], **{f"d{i}": ["x"] for i in range(6)}}
    out = submit(st, deps, [f"d{i}" for i in range(6)])
    sent = computes(out)
    assert list(sent) == ["x", "d0"]  # one thread each: x pulls one dependent along
    out = st.task_finished(sent["x"], "x", 8)
    assert set(computes(out)) == {f"d{i}" for i in range(1, 6)}
    assert set(computes(out).values()) == {A, B}


def test_a_dependent_with_inputs_on_two_workers_is_not_claimed() -> None:
    st = two_workers()
    out = submit(st, {"x": [], "y": [], "z": ["x", "y"]}, ["z"])
    assert set(computes(out)) == {"x", "y"}
    assert st.tasks["z"].state == "waiting"


def test_a_failed_input_fails_its_claimed_dependents_and_frees_them_on_their_worker() -> None:
    st = two_workers()
    sent = computes(submit(st, chain(3), ["t2"]))
    worker = sent["t0"]
    out = st.task_erred(worker, "t0", "boom", "tb")
    assert to_clients(out, "task-erred")["t2"]["cause"] == "t0"
    assert {k for w, k in freed(out) if w == worker} >= {"t1", "t2"}
    assert not st.workers[worker].processing
    assert st.tasks["t2"].state == "erred"  # the intermediate t1 failed too, then was dropped


def test_claims_on_an_input_that_is_stolen_are_withdrawn_and_follow_it_later() -> None:
    st = two_workers()
    sent = computes(submit(st, chain(3), ["t2"]))
    victim = sent["t0"]
    thief = B if victim == A else A
    stealing = WorkStealing()
    out = stealing.response(st, victim, "t0", stolen=True)
    assert computes(out) == {"t0": thief}
    assert set(freed(out)) == {(victim, "t1"), (victim, "t2")}
    assert st.tasks["t1"].state == st.tasks["t2"].state == "waiting"
    out = st.task_finished(thief, "t0", 8)
    assert computes(out) == {"t1": thief, "t2": thief}  # t1 ready there, t2 claimed to follow it


def test_releasing_a_claimed_chain_withdraws_what_has_not_run() -> None:
    st = two_workers()
    sent = computes(submit(st, chain(4), ["t3"]))
    worker = sent["t0"]
    out = st.release_keys("c1", ["t3"])
    assert set(freed(out)) == {(worker, "t1"), (worker, "t2"), (worker, "t3")}
    assert [ts.key for ts in st.workers[worker].processing] == ["t0"]  # running: it finishes


def test_claimed_tasks_on_a_dead_worker_are_rescheduled_and_not_blamed() -> None:
    st = two_workers()
    sent = computes(submit(st, chain(3), ["t2"]))
    dead = sent["t0"]
    other = B if dead == A else A
    out = st.remove_worker(dead, "killed")  # no nanny: every task that could have run is suspect
    assert computes(out) == {"t0": other, "t1": other, "t2": other}
    assert len(st.tasks["t0"].deaths) == 1
    assert not st.tasks["t1"].deaths and not st.tasks["t2"].deaths  # claimed, never started: not blamed


def test_only_tasks_a_client_waits_for_ask_for_their_result_inline() -> None:
    st = two_workers()
    out = submit(st, {"x": [], "y": ["x"]}, ["y"])
    flags = {m["key"]: m.get("inline", False) for _, m in out if m["op"] == "compute-task"}
    assert flags == {"x": False, "y": True}
    worker = computes(out)["x"]
    st.task_finished(worker, "x", 8)
    value = ("pickle", [b"frames"])
    out = st.task_finished(worker, "y", 8, "int", value=value)
    assert to_clients(out, "key-in-memory")["y"]["value"] == value
    assert not hasattr(st.tasks["y"], "value")  # relayed, never kept by the scheduler
    many = {f"m{i}": ("spec", []) for i in range(100)}  # a large map: fetched in bulk
    out = st.update_graph("c1", many, list(many))
    assert not any("inline" in m for _, m in out if m["op"] == "compute-task")


# -- the worker --------------------------------------------------------------------------------------
def compute(ws: WorkerState, key: str, deps: list[str], priority: int = 0) -> list[tuple[Any, ...]]:
    msg = {"key": key, "spec": f"spec-{key}", "priority": (priority,), "who_has": {d: [] for d in deps}}
    return ws.compute_task(msg)


def test_a_claimed_task_follows_its_executing_input_on_its_thread() -> None:
    ws = WorkerState(1, A)
    assert compute(ws, "t0", []) == [("execute", "t0")]
    assert compute(ws, "t1", ["t0"], 1) == [("follow", "t0", "t1")]
    assert compute(ws, "t2", ["t1"], 2) == [("follow", "t1", "t2")]
    assert ws.tasks["t1"].state == "executing" and ws.following == {"t1", "t2"}
    assert not ws.in_flight  # nothing fetched: computed here
    assert ws.executed("t0", 1, stored=True) == []
    assert ws.executed("t1", 2, stored=True) == []
    assert ws.executed("t2", 3) == []
    assert dict(ws.data) == {"t2": 3}  # stored inputs are the runner's to write


def test_a_claimed_task_waits_for_a_queued_input_and_runs_when_it_is_done() -> None:
    ws = WorkerState(1, A)
    compute(ws, "a", [])  # takes the only thread
    compute(ws, "t0", [], 1)  # ready, queued
    assert compute(ws, "t1", ["t0"], 2) == []  # its input is not executing yet: it waits
    assert ws.steal("t1")[0][1]["stolen"] is False  # bound to an input computed here
    assert ws.steal("t0")[0][1]["stolen"] is False  # a task here waits for it
    assert ws.executed("a", 0) == [("execute", "t0")]
    assert ws.executed("t0", 1) == [("execute", "t1")]


def test_a_follower_refused_by_the_runner_waits_for_its_input_as_usual() -> None:
    ws = WorkerState(1, A)
    compute(ws, "t0", [])
    compute(ws, "t1", ["t0"], 1)
    assert ws.unfollow("t1") == []
    assert ws.tasks["t1"].state == "waiting"
    assert ws.executed("t0", 1) == [("execute", "t1")]


def test_the_runner_runs_followers_after_their_input_and_skips_them_when_it_fails() -> None:
    stored: dict[Any, Any] = {}

    def run(key: Any, spec: Any) -> tuple[bool, Any]:
        if spec == "fail":
            return False, ("error", "tb")
        return True, (stored.get(spec, 0) + 1) if isinstance(spec, str) else spec

    async def main() -> list[Outcome]:
        loop = asyncio.get_running_loop()
        done: list[Outcome] = []
        finished = asyncio.Event()

        def report(batch: list[Outcome]) -> None:
            done.extend(batch)
            if len(done) == 6:
                finished.set()

        runner = TaskRunner(1, loop, run, report, store=lambda k, v, e: stored.__setitem__(k, v))
        runner.submit("t0", 10, 1)
        assert runner.follow("t0", "t1", "t0", 1)  # t1 reads t0's stored value
        assert runner.follow("t1", "t2", "t1", 1)
        runner.submit("bad", "fail", 1)
        assert runner.follow("bad", "f1", "x", 1)
        assert runner.follow("f1", "f2", "x", 1)
        await asyncio.wait_for(finished.wait(), 30)
        assert not runner.follow("t0", "late", "t0", 1)  # t0 is done: no longer followable
        runner.stop(time.monotonic() + 10)
        return done

    done = asyncio.run(main())
    assert [(o.key, o.value) for o in done if o.ok] == [("t0", 10), ("t1", 11), ("t2", 12)]
    assert [o.stored for o in done if o.ok] == [True, True, False]
    assert {o.key for o in done if o.value is SKIPPED} == {"f1", "f2"}


# -- on a cluster ----------------------------------------------------------------------------------
def step(trail: tuple[str, ...]) -> tuple[str, ...]:
    return (*trail, get_worker().name)


def start() -> tuple[str, ...]:
    return (get_worker().name,)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with Client(n_workers=2, threads_per_worker=1) as c:
        yield c


def test_a_chain_runs_on_one_worker_with_few_messages_from_the_scheduler(client: Client) -> None:
    n = 300
    graph: dict[Any, Any] = {("c", 0): (start,)}
    for i in range(1, n):
        graph[("c", i)] = (step, ("c", i - 1))
    scheduler = client.cluster.scheduler
    streams = [s for (kind, _), s in scheduler.streams.items() if kind == "worker"]
    before = sum(s.writes for s in streams)
    trail = client.get(graph, ("c", n - 1))
    writes = sum(s.writes for s in streams) - before
    assert len(trail) == n and len(set(trail)) == 1  # every step ran on one worker
    assert writes < n / 4  # without claims: at least one write per step


def big(n: int) -> bytes:
    return b"x" * n


def test_a_small_result_comes_inline_and_a_large_one_is_fetched(client: Client) -> None:
    used = client.inline_results_used
    small = client.submit(big, 100)
    assert small.result() == b"x" * 100
    assert client.inline_results_used == used + 1
    large = client.submit(big, 1_000_000)
    assert large.result() == b"x" * 1_000_000
    assert client.inline_results_used == used + 1  # fetched from its worker
    assert client.gather([small, large]) == [b"x" * 100, b"x" * 1_000_000]
    assert client.inline_results_used == used + 1  # taken once; fetched the second time
    again = client.submit(big, 200)
    assert client.gather([again]) == [b"x" * 200]
    assert client.inline_results_used == used + 2
    # memory accounting is the worker's as before: held while a Future refers to the key
    assert set(client.who_has([small, large])) == {small.key, large.key}
    key = small.key
    del small
    wait_until(lambda: key not in client.who_has(), timeout=30, what=f"{key!r} released")


def test_a_freed_follower_is_taken_back_from_the_runner_before_it_starts() -> None:
    ws = WorkerState(1, A)
    compute(ws, "t0", [])
    compute(ws, "t1", ["t0"], 1)
    assert ws.free(["t1"]) == [("unfollow", "t1")]
    assert ws.unfollowed("t1") == []
    assert "t1" not in ws.tasks and not ws.following

    gate = threading.Event()
    ran: list[Any] = []

    def run(key: Any, spec: Any) -> tuple[bool, Any]:
        gate.wait(30)
        ran.append(key)
        return True, key

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported = asyncio.Event()
        runner = TaskRunner(1, loop, run, lambda batch: reported.set(), store=lambda k, v, e: None)
        runner.submit("t0", None, 1)
        assert runner.follow("t0", "t1", None, 1)
        assert runner.unfollow("t1")  # t0 still running: t1 never starts
        assert not runner.unfollow("t1")
        gate.set()
        await asyncio.wait_for(reported.wait(), 30)
        runner.stop(time.monotonic() + 10)

    asyncio.run(main())
    assert ran == ["t0"]


def test_a_claimed_task_sent_again_takes_its_claimed_dependents_with_it() -> None:
    st = SchedulerState()
    st.add_worker(A)
    st.update_graph("c1", {"y": ("spec-y", [])}, ["y"])
    st.task_finished(A, "y", 8)
    out = submit(st, {"x": [], "d": ["x", "y"], "e": ["d"]}, ["e"])
    assert computes(out) == {"x": A, "d": A, "e": A}
    d = st.tasks["d"]
    out = []
    st._unclaim(d, out)  # as recovery withdraws it (an input it fetches was lost) ...
    d.state = "released"
    st._activate(d, out)  # ... and activates it again: it waits for x (x pulled its one claim)
    assert d.state == "waiting" and st.tasks["e"].state == "processing"
    out = st.task_finished(A, "x", 8)
    assert freed(out) == [(A, "e")]  # e was linked to the old d on A: dropped there ...
    assert list(computes(out)) == ["d", "e"]  # ... and sent again after the new d
