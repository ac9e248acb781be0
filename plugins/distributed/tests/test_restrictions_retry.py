"""Worker restrictions (``workers=``, ``allow_other_workers``) and ``retry()`` of failed futures."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import taskloom
from taskloom.delayed import delayed
from taskloom.errors import KilledWorkerError
from taskloom.testing import wait_until
from taskloom.worker import get_worker
from taskloom_distributed import Client
from taskloom_distributed.nanny.slots import key_digest
from taskloom_distributed.scheduler.state import Messages, SchedulerState
from taskloom_distributed.scheduler.stealing import WorkStealing
from taskloom_distributed.scheduler.tasks import TaskState

pytestmark = pytest.mark.timeout(180)

A, B = "tcp://a:1", "tcp://b:1"


# -- the state machine, without sockets ------------------------------------------------------------
def submit(
    st: SchedulerState, deps: dict[Any, list[Any]], wanted: list[Any], client: str = "c1", **kwargs: Any
) -> Messages:
    tasks = {k: (f"spec-{k}", d) for k, d in deps.items()}
    return st.update_graph(client, tasks, wanted, {k: i for i, k in enumerate(deps)}, **kwargs)


def computes(out: Messages) -> dict[Any, str]:
    return {m["key"]: r[1] for r, m in out if r[0] == "worker" and m["op"] == "compute-task"}


def to_clients(out: Messages, op: str) -> set[Any]:
    return {m["key"] for r, m in out if r[0] == "client" and m["op"] == op}


def two_workers() -> SchedulerState:
    st = SchedulerState()
    st.add_worker(A, name="worker-a")
    st.add_worker(B, name="worker-b", nthreads=4)
    return st


def test_a_restricted_task_goes_only_to_a_worker_it_names_by_address_or_by_name() -> None:
    st = two_workers()
    out = submit(st, {"x": [], "y": []}, ["x", "y"], workers=[A])
    assert computes(out) == {"x": A, "y": A}  # though B, with 4 idle threads, starts sooner
    out = submit(st, {"z": []}, ["z"], workers=["worker-a"])
    assert computes(out) == {"z": A}
    out = submit(st, {"w": []}, ["w"], workers=["a:1"])  # the address without its scheme
    assert computes(out) == {"w": A}


def test_a_restricted_task_waits_for_an_allowed_worker_and_runs_when_one_joins(
    caplog: pytest.LogCaptureFixture,
) -> None:
    st = SchedulerState()
    st.add_worker(A)
    with caplog.at_level(logging.WARNING, "taskloom.distributed.scheduler"):
        out = submit(st, {"x": []}, ["x"], workers=["worker-b"])
    assert computes(out) == {} and to_clients(out, "task-erred") == set()
    assert st.tasks["x"].state == "waiting" and st.tasks["x"] in st.unrunnable
    assert "'worker-b'" in caplog.text and "'x'" in caplog.text and "wait" in caplog.text
    out = st.add_worker(B, name="worker-b")
    assert computes(out) == {"x": B}


def test_the_stall_report_and_the_cluster_dump_show_a_tasks_worker_restrictions() -> None:
    from taskloom_distributed.scheduler.dump import _task
    from taskloom_distributed.scheduler.watchdog import Stall, stuck_tasks

    st = SchedulerState()
    st.add_worker(A)
    submit(st, {"x": []}, ["x"], workers=["worker-b"])
    submit(st, {"y": []}, ["y"], workers=["worker-b"], allow_other_workers=True)
    tasks, total = stuck_tasks(st)
    assert total == 2 and {t["key"]: t["state"] for t in tasks} == {"x": "no-worker", "y": "processing"}
    message = Stall(60.0, total, tasks, 60.0).message()
    assert "'x' ready, but no running worker it may run on (workers=['worker-b'])" in message
    assert _task(st.tasks["x"])["restrictions"] == ["worker-b"] and not _task(st.tasks["x"])["loose"]
    assert _task(st.tasks["y"])["loose"] is True
    assert "restrictions" not in _task(TaskState("z"))  # unrestricted


def test_a_restricted_task_whose_worker_dies_waits_for_it_to_come_back() -> None:
    st = two_workers()
    out = submit(st, {"x": []}, ["x"], workers=[B])
    assert computes(out) == {"x": B}
    out = st.remove_worker(B, "connection closed")
    assert computes(out) == {}
    assert st.tasks["x"] in st.unrunnable
    out = st.add_worker(B, name="worker-b")
    assert computes(out) == {"x": B}


def test_allow_other_workers_prefers_the_named_worker_and_falls_back_to_others() -> None:
    st = two_workers()
    out = submit(st, {"x": []}, ["x"], workers=[A], allow_other_workers=True)
    assert computes(out) == {"x": A}
    out = submit(st, {"y": []}, ["y"], workers=["nowhere:1"], allow_other_workers=True)
    assert computes(out) == {"y": B}


def test_a_dependent_restricted_elsewhere_is_not_claimed_on_its_inputs_worker() -> None:
    st = two_workers()
    out = submit(st, {"a": []}, ["a"], workers=[A])
    out += submit(st, {"b": ["a"]}, ["b"], workers=[B])
    assert computes(out) == {"a": A}  # without the restriction b would be claimed on A with a
    out = st.task_finished(A, "a", 8)
    assert computes(out) == {"b": B}


def test_a_restricted_task_is_not_stolen_by_a_worker_it_does_not_name() -> None:
    st = SchedulerState()
    st.add_worker(A)
    submit(st, {f"r{i}": [] for i in range(6)}, [f"r{i}" for i in range(6)], workers=[A])
    submit(st, {f"u{i}": [] for i in range(6)}, [f"u{i}" for i in range(6)])
    assert len(st.workers[A].processing) == 12
    st.add_worker(B, nthreads=8)
    out = WorkStealing().balance(st, 0.0)
    asked = {m["key"] for _, m in out if m["op"] == "steal-request"}
    assert asked and all(str(k).startswith("u") for k in asked)


def test_retry_reruns_a_failed_task_and_the_dependents_that_failed_with_it() -> None:
    st = SchedulerState()
    st.add_worker(A)
    out = submit(st, {"a": [], "b": ["a"], "c": ["b"]}, ["a", "c"])
    assert computes(out) == {"a": A, "b": A, "c": A}  # b and c claimed ahead with a
    out = st.task_erred(A, "a", "boom", None)
    assert to_clients(out, "task-erred") == {"a", "c"}
    out = st.retry(["a"])
    assert to_clients(out, "task-retried") == {"a", "c"}
    assert computes(out) == {"a": A, "b": A, "c": A}
    assert st.tasks["a"].exception is None and st.tasks["c"].erred_on is None
    out = st.task_finished(A, "a", 8) + st.task_finished(A, "b", 8) + st.task_finished(A, "c", 8)
    assert to_clients(out, "key-in-memory") == {"a", "c"}


def test_retrying_a_dependent_reruns_the_failed_input_it_inherited_its_error_from() -> None:
    st = SchedulerState()
    st.add_worker(A)
    submit(st, {"a": [], "b": ["a"]}, ["b"])
    st.task_erred(A, "a", "boom", None)
    assert st.tasks["b"].state == "erred"
    out = st.retry(["b"])
    assert to_clients(out, "task-retried") == {"b"}
    assert set(computes(out)) == {"a", "b"}


def test_retrying_a_task_that_did_not_fail_does_nothing() -> None:
    st = SchedulerState()
    st.add_worker(A)
    submit(st, {"a": [], "b": []}, ["a", "b"])
    st.task_finished(A, "a", 8)
    assert st.retry(["a", "b", "unknown"]) == []
    assert st.tasks["a"].state == "memory" and st.tasks["b"].state == "processing"


def test_retry_of_a_killed_worker_error_forgets_the_deaths() -> None:
    st = SchedulerState(allowed_failures=1)
    st.add_worker(A)
    st.add_worker(B)
    out = submit(st, {"bad": []}, ["bad"])
    where = computes(out)["bad"]
    out = st.remove_worker(where, "killed", "killed by signal SIGKILL", executing=[key_digest("bad")])
    assert to_clients(out, "task-erred") == {"bad"}
    out = st.retry(["bad"])
    assert to_clients(out, "task-retried") == {"bad"} and set(computes(out)) == {"bad"}
    assert list(st.tasks["bad"].deaths) == []


def test_a_retried_restricted_task_keeps_its_restriction() -> None:
    st = two_workers()
    submit(st, {"x": []}, ["x"], workers=[A])
    st.task_erred(A, "x", "boom", None)
    assert computes(st.retry(["x"])) == {"x": A}


# -- a real cluster --------------------------------------------------------------------------------
def pid() -> int:
    return os.getpid()


def where_am_i(_: Any = None) -> str:
    return str(get_worker().address)


def fails_until(flag: str, x: int) -> int:
    if not os.path.exists(flag):
        raise ValueError(f"no {flag} yet")
    return x + 1


def inc(x: int) -> int:
    return x + 1


def kills_until(flag: str) -> int:
    if not os.path.exists(flag):
        os.kill(os.getpid(), signal.SIGKILL)
    return 42


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with Client(n_workers=2, threads_per_worker=1) as c:
        wait_until(lambda: len(c.scheduler_info()["workers"]) == 2, what="two workers")
        yield c


def workers(client: Client) -> dict[str, dict[str, Any]]:
    info: dict[str, dict[str, Any]] = client.scheduler_info()["workers"]
    return info


def test_a_task_pinned_to_a_worker_runs_in_that_workers_process(client: Client) -> None:
    for address, info in workers(client).items():
        assert client.submit(pid, workers=address, pure=False).result(timeout=60) == info["pid"]
        assert client.submit(pid, workers=[info["name"]], pure=False).result(timeout=60) == info["pid"]
        assert info["pid"] in client.cluster.worker_pids


def test_a_map_pinned_to_one_worker_runs_all_there(client: Client) -> None:
    address = sorted(workers(client))[1]
    futures = client.map(where_am_i, range(40), workers=address)
    assert set(client.gather(futures)) == {address}


def test_compute_and_persist_pinned_to_a_worker_run_there(client: Client) -> None:
    address = sorted(workers(client))[0]
    total = delayed(where_am_i)(delayed(where_am_i)(1))
    assert client.compute(total, workers=[address]).result(timeout=60) == address
    persisted = client.persist(delayed(where_am_i)(2), workers=address)
    assert persisted.compute() == address


def test_allow_other_workers_runs_elsewhere_when_the_named_worker_is_not_there(client: Client) -> None:
    future = client.submit(pid, workers="no-such-worker", allow_other_workers=True, pure=False)
    assert future.result(timeout=60) in client.cluster.worker_pids
    waiting = client.submit(pid, workers="no-such-worker", pure=False)
    with pytest.raises(TimeoutError):
        waiting.result(timeout=0.5)  # it waits for such a worker: no error
    assert waiting.status == "pending"
    waiting.cancel()


def test_a_bad_workers_argument_is_an_error_naming_it(client: Client) -> None:
    with pytest.raises(TypeError, match="workers= takes a worker address or name"):
        client.submit(pid, workers=3)
    with pytest.raises(ValueError, match="allow_other_workers=True needs workers="):
        client.submit(pid, allow_other_workers=True)


def test_retry_reruns_a_failed_future_in_place_with_its_failed_dependents(
    client: Client, tmp_path: Path
) -> None:
    flag = str(tmp_path / "ready")
    future = client.submit(fails_until, flag, 1)
    after = client.submit(inc, future)
    with pytest.raises(ValueError, match=r"no .* yet"):
        future.result(timeout=60)
    assert isinstance(after.exception(timeout=60), ValueError)
    Path(flag).touch()
    future.retry()
    assert future.status in ("pending", "finished")
    assert future.result(timeout=60) == 2
    assert after.result(timeout=60) == 3
    future.retry()  # it did not fail: nothing happens
    assert future.result(timeout=60) == 2


def test_client_retry_reruns_failed_futures_of_map_and_compute(client: Client, tmp_path: Path) -> None:
    flag = str(tmp_path / "ready")
    futures = client.map(fails_until, [flag] * 5, range(5))
    total = client.compute(delayed(sum)([delayed(fails_until)(flag, 10), 5]))
    for f in [*futures, total]:
        assert isinstance(f.exception(timeout=60), ValueError)
    Path(flag).touch()
    client.retry([*futures, total])
    assert client.gather(futures) == [1, 2, 3, 4, 5]
    assert total.result(timeout=60) == 16


def test_retry_after_a_killed_worker_error(tmp_path: Path) -> None:
    flag = str(tmp_path / "ready")
    with taskloom.config.set({"distributed.scheduler.allowed_failures": 1}):
        client = Client(n_workers=1, threads_per_worker=1)
    with client:
        pids = list(client.cluster.worker_pids)
        future = client.submit(kills_until, flag)
        with pytest.raises(KilledWorkerError):
            future.result(timeout=90)
        Path(flag).touch()
        future.retry()
        assert future.result(timeout=90) == 42
        procs = [psutil.Process(p) for p in client.cluster.worker_pids]
    assert not any(psutil.pid_exists(p) for p in pids)
    wait_until(lambda: not any(p.is_running() for p in procs), what="the workers to exit")
