"""Graceful retirement, work stealing and adaptive scaling: the rules alone, then on real clusters.

The rules (:mod:`taskloom_distributed.scheduler.retire`, ``.stealing``,
:mod:`taskloom_distributed.cluster.adaptive`) are driven without sockets.  The cluster tests
count every execution of a task in a file, so "nothing was recomputed" is checked, not assumed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import taskloom
from taskloom.errors import TaskloomError
from taskloom.testing import wait_until
from taskloom_distributed import Client, LocalCluster
from taskloom_distributed.cluster.adaptive import AdaptivePolicy, Observation, WorkerLoad
from taskloom_distributed.scheduler.retire import LEAVING, Retirement, workers_to_close
from taskloom_distributed.scheduler.state import Messages, SchedulerState
from taskloom_distributed.scheduler.stealing import WorkStealing
from taskloom_distributed.worker.state import WorkerState

pytestmark = pytest.mark.timeout(180)

A, B, C = "tcp://a:1", "tcp://b:1", "tcp://c:1"


# -- tasks (module level: the worker processes import them) --------------------------------------
def logged(i: int, log: str, seconds: float = 0.0) -> tuple[int, int]:
    """``(i, pid)``; each execution leaves a line in ``log``."""
    with open(log, "a") as f:
        f.write(f"{i} {os.getpid()}\n")
    if seconds:
        time.sleep(seconds)
    return i, os.getpid()


def executions(log: str) -> list[int]:
    with open(log) as f:
        return [int(line.split()[0]) for line in f]


# -- helpers -------------------------------------------------------------------------------------


def submit(st: SchedulerState, deps: dict[Any, list[Any]], wanted: list[Any], client: str = "c1") -> Messages:
    tasks = {k: (f"spec-{k}", d) for k, d in deps.items()}
    return st.update_graph(client, tasks, wanted, {k: i for i, k in enumerate(deps)})


def computes(out: Messages) -> dict[Any, str]:
    return {m["key"]: r[1] for r, m in out if r[0] == "worker" and m["op"] == "compute-task"}


def to_workers(out: Messages, op: str) -> list[tuple[str, dict[str, Any]]]:
    return [(r[1], m) for r, m in out if r[0] == "worker" and m["op"] == op]


def finish_on(st: SchedulerState, worker: str, keys: list[Any], nbytes: int = 100) -> None:
    for key in keys:
        st.task_finished(worker, key, nbytes)


def worker_processes() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


@pytest.fixture(autouse=True)
def no_process_left_behind(tmp_path: Path) -> Iterator[None]:
    before = {p.pid for p in worker_processes()}
    with taskloom.config.set({"distributed.nanny.log_directory": str(tmp_path)}):
        yield
    _, alive = psutil.wait_procs([p for p in worker_processes() if p.pid not in before], timeout=30)
    left = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in left:
        p.kill()
    assert not left, f"processes left running: {left}"


# -- retirement: the rules -----------------------------------------------------------------------
def three_workers_with_results_on_a() -> SchedulerState:
    st = SchedulerState()
    st.add_worker(A)
    out = submit(st, {"x": [], "y": [], "z": []}, ["x", "y", "z"])
    assert set(computes(out).values()) == {A}
    finish_on(st, A, ["x", "y", "z"])
    st.add_worker(B)
    st.add_worker(C)
    return st


def test_retiring_a_worker_copies_its_unique_results_to_the_others_then_it_is_drained() -> None:
    st = three_workers_with_results_on_a()
    retirement = Retirement(frozenset([A]))
    retirement.start(st)
    assert st.workers[A].status == LEAVING and A not in st.running  # no new tasks for it
    step = retirement.step(st, now=0.0)
    assert step.drained == [] and step.stuck == {}
    asked = to_workers(step.messages, "acquire-replicas")
    copies = {key: (recipient, sources) for recipient, m in asked for key, sources in m["who_has"].items()}
    assert set(copies) == {"x", "y", "z"}
    assert all(sources == [A] for _, sources in copies.values())
    assert {recipient for recipient, _ in copies.values()} == {B, C}  # spread over the recipients
    again = retirement.step(st, now=1.0)  # the copies are on their way: not asked for twice
    assert again.messages == [] and again.drained == []
    for key, (recipient, _) in copies.items():
        st.add_keys(recipient, {key: 0})
    retirement.count_moved(st)
    done = retirement.step(st, now=2.0)
    assert done.drained == [A]
    assert retirement.moved == {A: 3}
    assert {k: sorted(st.who_has()[k]) for k in "xyz"} == {k: sorted([A, copies[k][0]]) for k in "xyz"}


def test_a_copy_that_does_not_arrive_is_asked_for_again() -> None:
    st = three_workers_with_results_on_a()
    retirement = Retirement(frozenset([A]), retry_after=5.0)
    retirement.start(st)
    first = to_workers(retirement.step(st, now=0.0).messages, "acquire-replicas")
    assert sum(len(m["who_has"]) for _, m in first) == 3
    assert retirement.step(st, now=4.0).messages == []
    again = to_workers(retirement.step(st, now=6.0).messages, "acquire-replicas")
    assert sum(len(m["who_has"]) for _, m in again) == 3


def test_a_worker_still_processing_is_not_drained_until_its_task_is_done_and_copied() -> None:
    st = SchedulerState()
    st.add_worker(A)
    out = submit(st, {"slow": []}, ["slow"])
    assert computes(out) == {"slow": A}
    st.add_worker(B)
    retirement = Retirement(frozenset([A]))
    retirement.start(st)
    step = retirement.step(st, now=0.0)
    assert step.drained == [] and step.messages == []  # it runs to the end there
    st.task_finished(A, "slow", 10)
    step = retirement.step(st, now=1.0)
    assert to_workers(step.messages, "acquire-replicas") == [
        ("tcp://b:1", {"op": "acquire-replicas", "who_has": {"slow": [A]}})
    ]


def test_a_worker_whose_results_have_nowhere_to_go_is_stuck_and_keeps_its_status_after_abort() -> None:
    st = SchedulerState()
    st.add_worker(A)
    finish_on(st, A, list(computes(submit(st, {"x": []}, ["x"]))))
    retirement = Retirement(frozenset([A]))
    retirement.start(st)
    step = retirement.step(st, now=0.0)
    assert A in step.stuck and "no other running worker" in step.stuck[A]
    retirement.abort(st, [A])
    assert st.workers[A].status == "running" and A in st.running


def test_a_dependent_that_could_not_fetch_from_a_retired_worker_is_sent_again_with_the_new_holder() -> None:
    st = SchedulerState()
    st.add_worker(A)
    finish_on(st, A, list(computes(submit(st, {"x": []}, ["x"]))))
    st.add_worker(B)
    retirement = Retirement(frozenset([A]))
    retirement.start(st)
    sent = st.update_graph("c1", {"y": ("spec", ["x"])}, ["y"], {"y": 1})
    assert computes(sent) == {"y": B} and to_workers(sent, "compute-task")[0][1]["who_has"] == {"x": [A]}
    st.add_worker(C)
    st.add_keys(C, {"x": 0})  # the copy arrived
    st.remove_worker(A, "retired", expected=True)
    out = st.missing_data(B, "x", A)  # B's fetch from A failed: A had closed
    [(where, again)] = to_workers(out, "compute-task")
    assert again["key"] == "y" and again["deps"] == ["x"]
    assert again["who_has"] == ({} if where == C else {"x": [C]})  # C holds it: made there, or fetched


def test_results_held_elsewhere_too_are_not_copied() -> None:
    st = three_workers_with_results_on_a()
    st.add_keys(B, {"x": 0, "y": 0, "z": 0})
    retirement = Retirement(frozenset([A]))
    retirement.start(st)
    step = retirement.step(st, now=0.0)
    assert step.messages == [] and step.drained == [A]


def test_scale_down_picks_idle_workers_holding_least() -> None:
    st = SchedulerState()
    for w in (A, B, C):
        st.add_worker(w)
    [busy] = computes(st.update_graph("c1", {"busy": ("spec", [])}, ["busy"])).values()
    [held_on] = computes(st.update_graph("c1", {"held": ("spec", [])}, ["held"])).values()
    assert held_on != busy  # the idle ones get new work first
    st.task_finished(held_on, "held", 10_000)
    [third] = {A, B, C} - {busy, held_on}
    assert workers_to_close(st, 3) == [third, held_on, busy]
    assert workers_to_close(st, 1) == [third]


# -- the worker's side of retirement and stealing ------------------------------------------------
def test_a_worker_fetches_replicas_and_reports_them() -> None:
    ws = WorkerState(1, B)
    assert ws.acquire_replicas({"x": [A], "y": [A]}) == [("fetch", A, ["x", "y"])]
    again = ws.acquire_replicas({"x": [A]})
    assert again == []  # already coming
    out = ws.fetched(A, {"x": 1, "y": 2})
    assert ("send", {"op": "add-keys", "keys": {"x": 0, "y": 0}}) in out
    assert ws.acquire_replicas({"x": [A]}) == [("send", {"op": "add-keys", "keys": {"x": 0}})]


def test_a_worker_gives_up_a_task_it_has_not_started_only() -> None:
    ws = WorkerState(1, A)
    ws.compute_task({"key": "running", "spec": None, "priority": (0,), "who_has": {}})
    ws.compute_task({"key": "queued", "spec": None, "priority": (1,), "who_has": {}})
    [(_, running)] = ws.steal("running")
    assert running["stolen"] is False and running["state"] == "executing"
    [(_, queued)] = ws.steal("queued")
    assert queued["stolen"] is True
    assert ws.executed("running", 1) == []  # the stolen task is not started afterwards
    [(_, unknown)] = ws.steal("never-heard-of")
    assert unknown["stolen"] is False


# -- work stealing: the rules --------------------------------------------------------------------
def test_queued_tasks_move_to_a_worker_that_joins_until_the_queues_are_even() -> None:
    st = SchedulerState()
    st.add_worker(A)
    keys = [f"t{i}" for i in range(10)]
    submit(st, {k: [] for k in keys}, keys)
    assert len(st.workers[A].processing) == 10
    st.add_worker(B)
    stealing = WorkStealing()
    requests = stealing.balance(st, now=0.0)
    stolen = [m["key"] for w, m in to_workers(requests, "steal-request") if w == A]
    assert len(stolen) == 5  # 10 on A, 0 on B: 5 each
    assert set(stolen) == {f"t{i}" for i in range(5, 10)}  # those A would run last
    assert stealing.balance(st, now=0.1) == []  # asked already
    moved = stealing.response(st, A, "t9", stolen=True)
    assert computes(moved) == {"t9": B}
    assert st.tasks["t9"].processing_on is st.workers[B]
    assert stealing.response(st, A, "t8", stolen=False) == []  # it had started there
    assert st.tasks["t8"].processing_on is st.workers[A]
    for key in ("t7", "t6", "t5"):
        stealing.response(st, A, key, stolen=False)
    st.task_finished(B, "t9", 8)  # B is idle again, A has 9
    again = [m["key"] for _, m in to_workers(stealing.balance(st, now=0.2), "steal-request")]
    assert again and not {"t8", "t7", "t6", "t5"} & set(again)  # not asked for again while they run


def test_a_busy_worker_with_one_task_per_thread_is_left_alone() -> None:
    st = SchedulerState()
    st.add_worker(A)
    submit(st, {"a": []}, ["a"])
    st.add_worker(B)
    assert WorkStealing().balance(st, now=0.0) == []


def test_a_late_stolen_answer_for_a_task_rescheduled_meanwhile_changes_nothing() -> None:
    st = SchedulerState()
    st.add_worker(A)
    submit(st, {k: [] for k in ("a", "b", "c")}, ["a", "b", "c"])
    st.add_worker(B)
    stealing = WorkStealing()
    stealing.balance(st, now=0.0)
    st.remove_worker(A, "killed")  # everything goes to B
    assert stealing.response(st, A, "c", stolen=True) == []
    assert all(ts.processing_on is st.workers[B] for ts in st.tasks.values())


# -- adaptive: the policy ------------------------------------------------------------------------
def obs(*processing: int, requested: int | None = None, duration: float = 0.2, **kw: Any) -> Observation:
    workers = tuple(
        WorkerLoad(f"w{i}", 1, p, kw.get("nbytes", 0), kw.get("limit", 0)) for i, p in enumerate(processing)
    )
    names = frozenset(f"w{i}" for i in range(len(processing) if requested is None else requested))
    return Observation(workers, names, kw.get("unrunnable", 0), duration)


def test_queued_work_asks_for_workers_by_duration_within_the_maximum() -> None:
    policy = AdaptivePolicy(minimum=1, maximum=4, wait_count=3, target_duration=1.0)
    assert policy.decide(obs(40)).action == "up"
    assert policy.decide(obs(40)).target == 4  # 8 s of work for 1 s: capped at 4
    assert AdaptivePolicy(0, 100, 3, 1.0).target(obs(40)) == 8
    assert AdaptivePolicy(0, 100, 3, 1.0).target(obs(3, duration=60)) == 3  # 3 long tasks: 3 workers, not 180
    assert AdaptivePolicy(1, 4, 3, 1.0).decide(obs(2)).action == "same"  # 0.4 s of work: one is enough


def test_tasks_waiting_with_no_worker_ask_for_one() -> None:
    policy = AdaptivePolicy(minimum=0, maximum=4, target_duration=5.0)
    decision = policy.decide(obs(requested=0, unrunnable=1, duration=0.001))
    assert decision.action == "up" and decision.target == 1


def test_idle_workers_are_retired_only_after_wait_count_decisions_in_a_row() -> None:
    policy = AdaptivePolicy(minimum=1, maximum=4, wait_count=3, target_duration=1.0)
    idle = obs(0, 0, 0)
    assert policy.decide(idle).action == "same"
    assert policy.decide(idle).action == "same"
    down = policy.decide(idle)
    assert down.action == "down" and down.target == 1 and len(down.workers) == 2
    policy = AdaptivePolicy(minimum=1, maximum=4, wait_count=3, target_duration=1.0)
    policy.decide(idle)
    policy.decide(idle)
    assert policy.decide(obs(0, 20, 20)).action == "up"  # busy again: the counts start over
    assert policy.decide(idle).action == "same"
    assert policy.decide(idle).action == "same"
    assert policy.decide(idle).action == "down"


def test_workers_that_have_not_arrived_go_first_and_busy_ones_stay() -> None:
    policy = AdaptivePolicy(minimum=1, maximum=4, wait_count=1, target_duration=1.0)
    decision = policy.decide(obs(0, 1, requested=3))  # w2 was asked for but has not registered
    assert decision.action == "down" and "w2" in decision.workers and "w1" not in decision.workers


def test_no_worker_is_retired_when_the_others_would_lack_memory_for_the_results() -> None:
    policy = AdaptivePolicy(minimum=1, maximum=4, wait_count=1, target_duration=1.0)
    full = obs(0, 0, nbytes=400, limit=1000)  # 800 of 2000 held: one worker of 1000 is < 2 x 800
    assert policy.target(full) == 1
    assert policy.decide(full).action == "same"


def test_adapt_rejects_settings_that_make_no_sense() -> None:
    with pytest.raises(ValueError, match="minimum"):
        AdaptivePolicy(minimum=3, maximum=2)
    with pytest.raises(ValueError, match="wait_count"):
        AdaptivePolicy(wait_count=0)


# -- on a real cluster ---------------------------------------------------------------------------
def test_retire_workers_moves_unique_results_off_and_the_worker_process_ends(tmp_path: Path) -> None:
    log = str(tmp_path / "runs.log")
    open(log, "w").close()
    with Client(n_workers=3, threads_per_worker=1) as client:
        futures = client.map(logged, range(30), [log] * 30)
        values = client.gather(futures)
        assert sorted(executions(log)) == list(range(30))
        info = client.scheduler_info()["workers"]
        who_has = client.who_has(futures)
        by_worker = {a: [k for k, holders in who_has.items() if holders == [a]] for a in info}
        victim = max(by_worker, key=lambda a: len(by_worker[a]))
        assert by_worker[victim], "some results are held only by the worker to retire"
        pid = info[victim]["pid"]
        retired = client.retire_workers([victim])
        assert set(retired) == {victim} and retired[victim]["moved"] == len(by_worker[victim])
        assert victim not in client.scheduler_info()["workers"]
        assert psutil.wait_procs([psutil.Process(pid)], timeout=30)[1] == []  # the process is gone
        moved = client.who_has(futures)
        assert all(holders and victim not in holders for holders in moved.values())
        assert client.gather(futures) == values
        assert sorted(executions(log)) == list(range(30))  # nothing computed twice
        again = client.submit(logged, 99, log)  # the cluster goes on working
        assert again.result()[0] == 99
        with pytest.raises(TaskloomError, match="no such worker"):
            client.retire_workers(["tcp://127.0.0.1:1"])


def test_scale_down_retires_gracefully_and_nothing_is_recomputed(tmp_path: Path) -> None:
    log = str(tmp_path / "runs.log")
    open(log, "w").close()
    with LocalCluster(n_workers=3, threads_per_worker=1) as cluster, Client(cluster) as client:
        processes = {p: psutil.Process(p) for p in cluster.worker_pids}
        futures = client.map(logged, range(40), [log] * 40)
        values = client.gather(futures)
        assert len({pid for _, pid in values}) > 1  # results spread over the workers
        cluster.scale(1)
        assert len(cluster.workers) == 1 and len(client.scheduler_info()["workers"]) == 1
        gone = [proc for pid, proc in processes.items() if pid not in cluster.worker_pids]
        assert len(gone) == 2 and psutil.wait_procs(gone, timeout=30)[1] == []
        assert client.gather(futures) == values
        assert sorted(executions(log)) == list(range(40))
        cluster.scale(2)
        assert len(client.scheduler_info()["workers"]) == 2


def test_adapt_grows_under_a_burst_and_shrinks_back_when_idle_without_recomputing(tmp_path: Path) -> None:
    log = str(tmp_path / "runs.log")
    open(log, "w").close()
    n = 80
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster) as client:
        adaptive = cluster.adapt(minimum=1, maximum=4, interval=0.2, wait_count=3, target_duration=1.0)
        sizes: list[int] = []
        futures = client.map(logged, range(n), [log] * n, [0.2] * n)  # the busy phase: 16 s on one worker
        while not all(f.done() for f in futures):
            sizes.append(len(client.scheduler_info()["workers"]))
            time.sleep(0.1)
        values = client.gather(futures)
        assert [i for i, _ in values] == list(range(n))
        assert max(sizes) > 1, sizes
        assert len({pid for _, pid in values}) > 1  # the workers that joined took part of the burst
        ups = [d for _, d in adaptive.log if d.action == "up"]
        assert ups and max(d.target for d in ups) <= 4
        # the idle phase: back to the minimum, the results copied off the retired workers
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, 90, "back to one worker")
        wait_until(lambda: len(cluster.workers) == 1, 30, "the cluster forgot the retired workers")
        assert any(d.action == "down" for _, d in adaptive.log)
        assert client.gather(futures) == values
        assert sorted(executions(log)) == list(range(n))  # nothing lost, nothing recomputed
        adaptive.stop()
        assert not adaptive.running
