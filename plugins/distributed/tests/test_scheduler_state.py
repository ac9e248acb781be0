"""The scheduler's state machine on its own (no sockets): worker loss, blame, restarts, heartbeats."""

from __future__ import annotations

from typing import Any

import pytest
from taskloom.errors import KilledWorkerError
from taskloom_distributed.client.futures import CancelledError
from taskloom_distributed.nanny.slots import key_digest
from taskloom_distributed.scheduler.state import Messages, SchedulerState

pytestmark = pytest.mark.timeout(120)

A, B, C = "tcp://a:1", "tcp://b:1", "tcp://c:1"


def submit(st: SchedulerState, deps: dict[Any, list[Any]], wanted: list[Any], client: str = "c1") -> Messages:
    """Submit a graph of opaque specs: ``{key: [dependency keys]}`` (keys in priority order)."""
    tasks = {k: (f"spec-{k}", d) for k, d in deps.items()}
    return st.update_graph(client, tasks, wanted, {k: i for i, k in enumerate(deps)})


def computes(out: Messages) -> dict[Any, str]:
    """key -> the worker told to compute it."""
    return {m["key"]: r[1] for r, m in out if r[0] == "worker" and m["op"] == "compute-task"}


def to_clients(out: Messages, op: str) -> dict[Any, dict[str, Any]]:
    return {m["key"]: m for r, m in out if r[0] == "client" and m["op"] == op}


def freed(out: Messages) -> list[tuple[str, Any]]:
    return [(r[1], k) for r, m in out if m["op"] == "free-keys" for k in m["keys"]]


def run_all(st: SchedulerState, out: Messages) -> Messages:
    """Finish every task sent to a worker, and every task that becomes ready meanwhile."""
    log: Messages = list(out)
    pending = dict(computes(out))
    while pending:
        key, worker = next(iter(pending.items()))
        del pending[key]
        more = st.task_finished(worker, key, 8)
        log += more
        pending.update(computes(more))
    return log


def chain_on_one_worker(n: int = 3) -> tuple[SchedulerState, list[str]]:
    """A chain t0 -> t1 -> ... computed entirely on worker A (B joins afterwards)."""
    st = SchedulerState()
    st.add_worker(A)
    keys = [f"t{i}" for i in range(n)]
    deps = {k: ([keys[i - 1]] if i else []) for i, k in enumerate(keys)}
    out = run_all(st, submit(st, deps, [keys[-1]]))
    assert to_clients(out, "key-in-memory").keys() == {keys[-1]}
    st.add_worker(B)
    return st, keys


def test_a_result_held_by_a_dead_worker_is_recomputed_from_its_released_inputs() -> None:
    st, _ = chain_on_one_worker(3)
    assert {k: ts.state for k, ts in st.tasks.items()} == {"t0": "released", "t1": "released", "t2": "memory"}
    out = st.remove_worker(A, "connection closed")
    # the walk back starts at the first input; the rest of the chain is claimed to follow it
    assert computes(out) == {"t0": B, "t1": B, "t2": B}
    assert st.tasks["t1"].waiting_on == {st.tasks["t0"]}
    assert to_clients(out, "lost-data").keys() == {"t2"}  # its future is pending again
    log = run_all(st, out)
    assert list(computes(log)) == ["t0", "t1", "t2"]
    assert to_clients(log, "key-in-memory").keys() == {"t2"}
    assert [(w, k) for w, k in freed(log)] == [(B, "t0"), (B, "t1")]  # intermediates dropped again


def test_a_long_chain_of_lost_results_is_walked_back_without_recursion() -> None:
    st, _ = chain_on_one_worker(3000)
    out = st.remove_worker(A, "killed")
    sent = computes(out)
    assert next(iter(sent)) == "t0" and set(sent.values()) == {B} and len(sent) == 3000
    assert sum(ts.state == "processing" for ts in st.tasks.values()) == 3000


def test_tasks_processing_on_a_dead_worker_are_sent_elsewhere() -> None:
    st = SchedulerState()
    st.add_worker(A)
    out = submit(st, {"x": [], "y": []}, ["x", "y"])
    assert computes(out) == {"x": A, "y": A}
    st.add_worker(B)
    out = st.remove_worker(A, "killed")
    assert computes(out) == {"x": B, "y": B}
    assert not to_clients(out, "task-erred")


def test_a_dependent_sent_to_another_worker_is_withdrawn_there_and_sent_again() -> None:
    st = SchedulerState()
    st.add_worker(A)
    submit(st, {"x": []}, ["x"])
    st.task_finished(A, "x", 8)
    st.add_worker(B)
    st.worker_status(A, "paused")  # so y goes to B, which would fetch x from A
    out = st.update_graph("c1", {"y": ("spec-y", ["x"])}, ["y"])
    assert computes(out) == {"y": B}
    st.worker_status(A, "running")
    out = st.remove_worker(A, "killed")
    assert freed(out) == [(B, "y")]  # withdrawn first ...
    assert computes(out) == {"x": B, "y": B}  # ... x recomputed, and y claimed to follow it on B
    msg = next(m for _, m in out if m["op"] == "compute-task" and m["key"] == "y")
    assert msg["who_has"] == {"x": []}  # computed there, not fetched
    out = st.task_finished(B, "x", 8)
    assert computes(out) == {}  # y was there already: no round trip
    assert st.tasks["y"].state == "processing" and not st.tasks["y"].waiting_on


def test_only_the_tasks_executing_when_a_worker_died_are_blamed() -> None:
    st = SchedulerState(allowed_failures=3)
    st.add_worker(A)
    submit(st, {"bad": [], "queued": []}, ["bad", "queued"])
    st.remove_worker(A, "killed", "killed by signal SIGKILL", executing=[key_digest("bad")])
    assert len(st.tasks["bad"].deaths) == 1
    assert list(st.tasks["queued"].deaths) == []


def test_without_a_nanny_account_every_task_sent_there_is_suspect() -> None:
    st = SchedulerState()
    st.add_worker(A)
    submit(st, {"x": [], "y": []}, ["x", "y"])
    st.remove_worker(A, "connection closed")
    assert [len(st.tasks[k].deaths) for k in "xy"] == [1, 1]


def test_an_expected_departure_blames_nothing() -> None:
    st = SchedulerState()
    st.add_worker(A)
    submit(st, {"x": []}, ["x"])
    st.remove_worker(A, "closing", expected=True)
    assert list(st.tasks["x"].deaths) == []


def where(st: SchedulerState, key: Any) -> str | None:
    ws = st.tasks[key].processing_on
    return None if ws is None else ws.address


def test_a_task_that_kills_allowed_failures_workers_fails_and_the_rest_of_the_graph_goes_on() -> None:
    st = SchedulerState(allowed_failures=3)
    workers = [f"tcp://w:{i}" for i in range(4)]
    st.add_worker(workers[0])
    submit(st, {"bad": [], "after_bad": ["bad"], "good": []}, ["after_bad", "good"])
    for i in range(3):
        assert where(st, "bad") == workers[i]
        st.add_worker(workers[i + 1])
        how = f"killed by signal SIGKILL #{i}"
        out = st.remove_worker(workers[i], "died", how, executing=[key_digest("bad")])
        if i < 2:
            assert not to_clients(out, "task-erred")
    erred = to_clients(out, "task-erred")
    assert erred.keys() == {"after_bad"}  # what the client wants: the dependent, failing with it
    assert erred["after_bad"]["cause"] == "bad"
    exc = erred["after_bad"]["exception"]
    assert isinstance(exc, KilledWorkerError)
    assert exc.key == "bad"
    assert [d["worker"] for d in exc.deaths] == workers[:3]
    assert [d["how"] for d in exc.deaths] == [f"killed by signal SIGKILL #{i}" for i in range(3)]
    assert "'bad'" in str(exc) and workers[2] in str(exc) and "allowed_failures = 3" in str(exc)
    assert list(st.tasks["good"].deaths) == []
    good_on = where(st, "good")
    assert good_on == workers[3]
    out = st.task_finished(good_on, "good", 8)
    assert to_clients(out, "key-in-memory").keys() == {"good"}


def test_a_missing_replica_is_dropped_and_the_value_recomputed() -> None:
    st = SchedulerState()
    st.add_worker(A)
    submit(st, {"x": []}, ["x"])
    st.task_finished(A, "x", 8)
    st.add_worker(B)
    st.worker_status(A, "paused")
    out = st.update_graph("c1", {"y": ("spec-y", ["x"])}, ["y"])
    assert computes(out) == {"y": B}
    out = st.missing_data(B, "x", A)
    assert (A, "x") in freed(out) and (B, "y") in freed(out)
    assert computes(out) == {"x": B, "y": B}  # y claimed to follow x there
    assert st.missing_data(B, "x", A) == []  # the same report again is stale


def test_a_result_from_a_second_worker_is_a_replica_not_a_second_event() -> None:
    st = SchedulerState()
    st.add_worker(A)
    st.add_worker(B)
    submit(st, {"x": []}, ["x"])
    st.tasks["x"].observers = {"c1"}
    first = st.task_finished(A, "x", 8)
    second = st.task_finished(B, "x", 8)
    assert [m["op"] for _, m in first].count("task-event") == 1
    assert second == []
    assert {w.address for w in st.tasks["x"].who_has} == {A, B}


def test_a_copy_reported_while_the_value_is_being_recomputed_is_used() -> None:
    st = SchedulerState()
    st.add_worker(A)
    submit(st, {"x": []}, ["x"])
    st.task_finished(A, "x", 8)
    st.add_worker(B)
    st.remove_worker(A, "killed")
    assert st.tasks["x"].state == "processing"
    st.add_worker(C)
    out = st.add_keys(C, {"x": 8})
    assert to_clients(out, "key-in-memory").keys() == {"x"}
    assert st.tasks["x"].state == "memory" and st.tasks["x"].processing_on is None


def test_restart_forgets_every_task_and_cancels_every_future() -> None:
    st = SchedulerState()
    st.add_worker(A)
    submit(st, {"x": [], "y": ["x"]}, ["y"], client="c1")
    submit(st, {"z": []}, ["z"], client="c2")
    out = st.restart("client.restart()")
    erred = to_clients(out, "task-erred")
    assert erred.keys() == {"y", "z"}
    assert all(isinstance(m["exception"], CancelledError) for m in erred.values())
    assert "forgotten" in str(erred["y"]["exception"])
    assert st.tasks == {} and st.workers[A].processing == set()
    assert computes(submit(st, {"x": []}, ["x"])) == {"x": A}  # usable afterwards


def test_releasing_the_last_result_forgets_the_whole_graph() -> None:
    st, keys = chain_on_one_worker(5)
    st.release_keys("c1", [keys[-1]])
    assert st.tasks == {}


def test_workers_not_heard_from_are_stale() -> None:
    st = SchedulerState()
    st.add_worker(A, now=100.0)
    st.add_worker(B, now=104.0)
    assert st.stale_workers(106.0, ttl=5) == [A]


def test_a_worker_that_is_not_running_gets_no_new_tasks() -> None:
    st = SchedulerState()
    st.add_worker(A)
    st.worker_status(A, "closing")
    assert computes(submit(st, {"x": []}, ["x"])) == {}
    assert computes(st.add_worker(B)) == {"x": B}


def test_a_worker_registering_again_under_the_same_address_replaces_the_old_one() -> None:
    st = SchedulerState()
    st.add_worker(A)
    submit(st, {"x": []}, ["x"])
    out = st.add_worker(A)
    assert computes(out) == {"x": A}
    assert list(st.tasks["x"].deaths) == []


def test_a_task_with_many_inputs_lets_go_of_them_after_its_news_in_chunks() -> None:
    from taskloom_distributed.scheduler.state import RELEASE_NOW_MAX

    st = SchedulerState()
    st.add_worker(A)
    n = 3 * RELEASE_NOW_MAX + 5
    deps = {f"x{i}": [] for i in range(n)}
    out = run_all(st, submit(st, {**deps, "total": list(deps)}, ["total"]))
    assert to_clients(out, "key-in-memory").keys() == {"total"}
    assert freed(out) == [] and all(st.tasks[k].state == "memory" for k in deps)  # not yet
    released: list[tuple[str, Any]] = []
    rounds = 0
    while st.inputs_to_release:
        chunk = freed(st.release_inputs(RELEASE_NOW_MAX))
        assert len(chunk) == min(RELEASE_NOW_MAX, n - len(released))
        released += chunk
        rounds += 1
    assert rounds == 4 and sorted(released) == sorted((A, k) for k in deps)
    assert all(st.tasks[k].state == "released" for k in deps) and st.release_inputs() == []


def test_inputs_waiting_to_be_let_go_of_are_safe_when_the_task_is_released_first() -> None:
    from taskloom_distributed.scheduler.state import RELEASE_NOW_MAX

    st = SchedulerState()
    st.add_worker(A)
    deps = {f"x{i}": [] for i in range(RELEASE_NOW_MAX + 1)}
    run_all(st, submit(st, {**deps, "total": list(deps)}, ["total"]))
    out = st.release_keys("c1", ["total"])  # the client is done before the inputs were let go of
    assert sorted(freed(out)) == sorted([(A, "total"), *((A, k) for k in deps)]) and st.tasks == {}
    assert st.release_inputs(10_000) == [] and st.inputs_to_release == []
