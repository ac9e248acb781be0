"""Workers that die, crash the tasks they run, freeze or lose their scheduler: real processes, real kills."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import taskloom
from taskloom import delayed
from taskloom.errors import KilledWorkerError, TaskloomError
from taskloom.testing import live_processes, wait_gone, wait_until
from taskloom_distributed import CancelledError, Client
from taskloom_distributed.nanny import MEMORY_EXIT_CODE
from taskloom_distributed.worker.state import WorkerState

pytestmark = pytest.mark.timeout(120)


# -- tasks (module level: the worker processes import them) --------------------------------------
def inc(x: int) -> int:
    return x + 1


def square(i: int, log: str) -> int:
    time.sleep(0.005)
    return i * i


def add(total: int, x: int, i: int, log: str) -> int:
    """One step of a long chain; each run leaves a line saying which process ran it."""
    with open(log, "a") as f:
        f.write(f"{i} {os.getpid()}\n")
    time.sleep(0.03)
    return total + x


def pid_after(x: Any, seconds: float) -> tuple[Any, int]:
    time.sleep(seconds)
    return x, os.getpid()


def exit_3(x: int) -> int:
    os._exit(3)


def kill_self(x: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return x


def segfault(x: int) -> int:
    ctypes.string_at(0)
    return x


def exit_for_memory(x: int) -> int:
    os._exit(MEMORY_EXIT_CODE)


# -- helpers -------------------------------------------------------------------------------------


def workers(client: Client) -> dict[str, dict[str, Any]]:
    info: dict[str, dict[str, Any]] = client.scheduler_info()["workers"]
    return info


def worker_processes(parent: psutil.Process | None = None) -> list[psutil.Process]:
    """The children of ``parent`` (default: this process) but multiprocessing's resource tracker
    (it lives as long as its parent does)."""
    out = []
    for p in (parent or psutil.Process()).children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


@pytest.fixture(autouse=True)
def worker_logs_in_tmp_path(tmp_path: Path) -> Iterator[None]:
    """Clusters whose workers died keep their logs: here, not in the system temp directory."""
    with taskloom.config.set({"distributed.nanny.log_directory": str(tmp_path)}):
        yield


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    before = {p.pid for p in worker_processes()}
    yield
    left = wait_gone([p for p in worker_processes() if p.pid not in before], 30)
    for p in left:
        p.kill()
    assert not left, f"processes left running: {left}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- 1. worker death -------------------------------------------------------------------------------
async def _holder_of_running_total(scheduler: Any, steps: list[Any]) -> int | None:
    """On the scheduler's loop: the pid of the one worker holding the latest finished step (not
    one of the last ten), if only one does, the next step is not running on the other one (it
    would have a copy), and both workers are up."""
    state = scheduler.state
    for i in range(len(steps) - 11, -1, -1):
        ts = state.tasks.get(steps[i])
        if ts is not None and ts.state == "memory":
            holders = list(ts.who_has)
            after = state.tasks[steps[i + 1]].processing_on
            if len(holders) != 1 or len(state.workers) != 2 or after not in (None, holders[0]):
                return None
            pid: int = holders[0].pid
            return pid
    return None


def test_killing_the_worker_that_holds_the_running_total_again_and_again_gives_the_exact_answer(
    tmp_path: Path,
) -> None:
    log = str(tmp_path / "steps.log")
    open(log, "w").close()
    n, kills = 80, 3
    total = delayed(square)(0, log)
    steps = []
    for i in range(1, n):
        total = delayed(add)(total, delayed(square)(i, log), i, log)
        steps.append(total.key)
    config = {"distributed.scheduler.allowed_failures": 100}  # kills, not culprits
    with taskloom.config.set(config), Client(n_workers=2, threads_per_worker=1) as client:
        cluster = client.cluster
        future = client.compute(total)
        killed: list[int] = []
        last_kill = 0

        def running_total_holder() -> int | None:
            """Once the chain has moved 8 steps since the last kill (the steps before the latest
            are released by then), the pid of the only worker that holds the running total."""
            with open(log) as f:
                if len(f.read().splitlines()) < last_kill + 8:
                    return None
            pid: int | None = cluster._loop.run(_holder_of_running_total(cluster.scheduler, steps))
            return pid

        while len(killed) < kills:
            holder = wait_until(running_total_holder, what="a running total held by one worker")
            with open(log) as f:
                last_kill = len(f.read().splitlines())
            psutil.Process(holder).kill()
            killed.append(holder)
            assert not future.done()
            wait_until(
                lambda gone=holder: gone not in [w["pid"] for w in workers(client).values()],
                what="the scheduler to remove the killed worker",
            )
        assert future.result(timeout=90) == sum(i * i for i in range(n))
        with open(log) as f:
            runs_of_step_1 = sum(line.split()[0] == "1" for line in f)
        assert runs_of_step_1 >= 2  # a lost running total was recomputed from the start of the chain
        assert not set(killed) & set(cluster.worker_pids)  # replaced by their nannies
        deaths = [d["how"] for nanny in cluster.nannies for d in nanny.deaths]
        assert deaths.count("killed by signal SIGKILL") == kills


def test_a_finished_future_whose_worker_dies_is_pending_again_then_finishes() -> None:
    with Client(n_workers=2, threads_per_worker=1) as client:
        futures = client.map(pid_after, range(8), [0.01] * 8)
        done = client.gather(futures)
        victim = done[0][1]
        lost = [f for f, (_, pid) in zip(futures, done) if pid == victim]
        psutil.Process(victim).kill()
        assert [v for v, _ in client.gather(futures)] == list(range(8))
        for f in lost:
            assert f.result()[1] != victim  # recomputed elsewhere


def test_an_input_being_fetched_from_a_dead_worker_and_then_computed_here_does_run() -> None:
    """The worker's state machine: the failed fetch must not undo the task made ready meanwhile."""
    dead = "tcp://127.0.0.1:1"
    ws = WorkerState(1, "tcp://127.0.0.1:2")
    assert ws.compute_task({"key": "busy", "spec": None, "priority": (0,), "who_has": {}}) == [
        ("execute", "busy")
    ]
    out = ws.compute_task({"key": "d", "spec": None, "priority": (1,), "who_has": {"k": [dead]}})
    assert ("fetch", dead, ["k"]) in out
    ws.free(["d"])  # the scheduler withdraws d, and has k computed here, behind "busy"
    ws.compute_task({"key": "k", "spec": None, "priority": (2,), "who_has": {}})
    ws.fetch_failed(dead, ["k"], "connection refused")  # the old fetch fails only now
    assert ws.executed("busy", 1) == [("execute", "k")]


# -- 2. allowed_failures ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "how"),
    [
        (exit_3, "exit code 3"),
        (kill_self, "killed by signal SIGKILL"),
        (segfault, "killed by signal SIGSEGV"),
    ],
)
def test_a_task_that_kills_every_worker_it_runs_on_fails_after_allowed_failures(
    task: Callable[[int], int], how: str
) -> None:
    with Client(n_workers=2, threads_per_worker=1) as client:
        good = client.map(inc, range(20))
        bad = client.submit(task, 1)
        after = client.submit(inc, bad)
        more = client.map(inc, range(100, 120))
        with pytest.raises(KilledWorkerError) as info:
            bad.result(timeout=90)
        assert client.gather(good) == list(range(1, 21))
        assert client.gather(more) == list(range(101, 121))
        error = info.value
        assert error.key == bad.key and repr(bad.key) in str(error)
        assert len(error.deaths) == 3  # distributed.scheduler.allowed_failures
        assert len({d["worker"] for d in error.deaths}) == 3
        for death in error.deaths:
            assert death["how"] == how
            assert death["worker"] in str(error) and how in str(error)
            assert death["log"] in str(error) and os.path.isfile(death["log"])
            assert death["log"].startswith(client.cluster.log_directory)
        if task is segfault:
            assert "Segmentation fault" in Path(error.deaths[0]["log"]).read_text()
        assert isinstance(after.exception(), KilledWorkerError)
        wait_until(lambda: len(workers(client)) == 2, what="the nannies to restart the workers")
        assert client.submit(inc, 41).result() == 42


def test_a_worker_that_exits_for_memory_is_reported_as_such() -> None:
    with taskloom.config.set({"distributed.scheduler.allowed_failures": 1}):
        client = Client(n_workers=1, threads_per_worker=1, memory_limit="2GB")
    with client:
        with pytest.raises(
            KilledWorkerError, match=r"memory: it passed the terminate fraction of its 2 GB limit"
        ):
            client.submit(exit_for_memory, 1).result(timeout=60)
        wait_until(lambda: len(workers(client)) == 1, what="the nanny to restart the worker")
        assert client.submit(inc, 1).result() == 2


# -- 3. the nanny and client.restart() -------------------------------------------------------------
def test_a_killed_worker_is_restarted_by_its_nanny_and_rejoins() -> None:
    with Client(n_workers=2, threads_per_worker=1) as client:
        # Client() returns once each nanny has heard its worker start: a kill from now on is a
        # restart (it was taken for a worker that could not start, when it came first)
        assert all(n.worker_address for n in client.cluster.nannies)
        before = {w["pid"] for w in workers(client).values()}
        victim = sorted(before)[0]
        psutil.Process(victim).kill()
        after = wait_until(
            lambda: {w["pid"] for w in workers(client).values()} - before,
            what="a new worker to register",
        )
        assert victim not in client.cluster.worker_pids and after <= set(client.cluster.worker_pids)
        nanny = next(n for n in client.cluster.nannies if n.deaths)
        assert nanny.deaths[-1]["how"] == "killed by signal SIGKILL" and nanny.deaths[-1]["pid"] == victim
        wait_until(lambda: len(workers(client)) == 2)
        assert set(client.run(os.getpid).values()) == set(client.cluster.worker_pids)


def test_restart_forgets_every_result_and_the_cluster_is_usable_after_it() -> None:
    with Client(n_workers=2, threads_per_worker=1) as client:
        done = client.map(inc, range(10))
        assert client.gather(done) == list(range(1, 11))
        slow = client.submit(pid_after, "slow", 30)
        old_pids = set(client.cluster.worker_pids)
        client.restart()
        assert len(workers(client)) == 2
        assert not old_pids & {w["pid"] for w in workers(client).values()}
        for f in [*done, slow]:
            with pytest.raises(CancelledError, match="forgotten"):
                f.result(timeout=10)
        assert client.who_has() == {}
        assert client.gather(client.map(inc, range(10))) == list(range(1, 11))  # the same keys again
        assert client.submit(inc, 1).result() == 2


def test_restart_without_nannies_drops_the_data_of_in_process_workers() -> None:
    with Client(processes=False, n_workers=1, threads_per_worker=1) as client:
        future = client.submit(inc, 1)
        assert future.result() == 2
        client.restart()
        with pytest.raises(CancelledError):
            future.result(timeout=10)
        assert [list(keys) for keys in client.has_what().values()] == [[]]
        [worker] = client.cluster.workers.values()
        assert len(worker.data) == 0
        assert client.submit(inc, 2).result() == 3


def test_closing_the_cluster_stops_every_worker_process() -> None:
    client = Client(n_workers=2, threads_per_worker=1)
    pids = list(client.cluster.worker_pids)
    procs = live_processes(pids)
    log_directory = client.cluster.log_directory
    assert os.path.isdir(log_directory)
    client.close()
    assert not wait_gone(procs, 30)
    assert not os.path.exists(log_directory)  # nothing died: the logs go too


# -- 4. heartbeats ----------------------------------------------------------------------------------
def test_a_frozen_worker_is_removed_its_work_done_elsewhere_and_it_rejoins_when_thawed() -> None:
    config = {"distributed.scheduler.worker_ttl": 2.0, "distributed.worker.heartbeat_interval": 0.1}
    with taskloom.config.set(config), Client(n_workers=2, threads_per_worker=1) as client:
        address, frozen = next((a, w["pid"]) for a, w in sorted(workers(client).items()))
        futures = client.map(pid_after, range(30), [0.05] * 30)
        wait_until(lambda: workers(client)[address]["tasks"] > 0, what="work on the worker to freeze")
        os.kill(frozen, signal.SIGSTOP)
        try:
            wait_until(lambda: address not in workers(client), what="the frozen worker to be removed")
            results = client.gather(futures)
            assert [x for x, _ in results] == list(range(30))
        finally:
            os.kill(frozen, signal.SIGCONT)
        wait_until(lambda: workers(client).get(address, {}).get("pid") == frozen, what="it to register again")
        ran_on = {pid for _, pid in client.gather(client.map(pid_after, range(100, 140), [0.02] * 40))}
        assert frozen in ran_on


# -- 5. losing the scheduler -------------------------------------------------------------------------
def test_closing_the_scheduler_fails_pending_futures_and_new_calls_clearly() -> None:
    client = Client(n_workers=1, threads_per_worker=1, set_as_default=False)
    with client:
        pending = client.submit(pid_after, "slow", 30)
        cluster = client.cluster
        cluster._loop.run(cluster.scheduler.close())
        start = time.monotonic()
        with pytest.raises(TaskloomError, match=r"scheduler at .* went away"):
            pending.result(timeout=30)
        assert time.monotonic() - start < 10
        with pytest.raises(TaskloomError, match="scheduler"):
            client.submit(inc, 1)
        with pytest.raises(TaskloomError, match="scheduler"):
            client.scheduler_info()


def start_cluster(cli: Any, port: int, token: str, reconnect_timeout: float) -> tuple[Any, Any]:
    scheduler = cli("scheduler", "--port", str(port), "--auth-token", token)
    scheduler.wait_for("scheduler at")
    env = {"TASKLOOM_DISTRIBUTED__WORKER__RECONNECT_TIMEOUT": reconnect_timeout}
    worker = cli("worker", f"127.0.0.1:{port}", "--auth-token", token, "--nthreads", "1", env=env)
    worker.wait_for("worker at")
    return scheduler, worker


def test_when_the_scheduler_process_dies_clients_fail_clearly_and_workers_exit(cli: Any) -> None:
    port, token = free_port(), "tok"
    scheduler, nanny = start_cluster(cli, port, token, reconnect_timeout=1)
    [worker] = worker_processes(nanny.psutil)  # the command's process is the worker's nanny
    with Client(f"127.0.0.1:{port}", auth_token=token, set_as_default=False) as client:
        assert workers(client).popitem()[1]["pid"] == worker.pid
        pending = client.submit(pid_after, "slow", 30)
        wait_until(lambda: client.scheduler_info()["tasks"].get("processing"), what="the task to start")
        scheduler.proc.kill()
        start = time.monotonic()
        with pytest.raises(TaskloomError, match="went away"):
            pending.result(timeout=30)
        assert time.monotonic() - start < 10
        with pytest.raises(TaskloomError, match="scheduler-lost"):
            client.submit(inc, 1)
        with pytest.raises(TaskloomError):
            client.scheduler_info()
    assert not wait_gone([nanny.psutil, worker], 30), "the worker and its nanny outlived the scheduler"
    assert nanny.proc.wait(10) == 0
    assert "lost the scheduler" in nanny.output()


def test_a_worker_reconnects_to_a_scheduler_that_comes_back_in_time(cli: Any) -> None:
    port, token = free_port(), "tok"
    first, nanny = start_cluster(cli, port, token, reconnect_timeout=60)
    [worker] = worker_processes(nanny.psutil)
    first.proc.kill()
    first.proc.wait(10)
    second = cli("scheduler", "--port", str(port), "--auth-token", token)
    second.wait_for("scheduler at")
    with Client(f"127.0.0.1:{port}", auth_token=token, set_as_default=False) as client:
        wait_until(lambda: workers(client), what="the worker to register again")
        assert client.submit(pid_after, 1, 0).result() == (1, worker.pid)  # the same process
    assert second.stop() == 0
    assert not wait_gone([nanny.psutil, worker], 30)


def test_the_worker_command_runs_without_a_nanny_when_asked(cli: Any) -> None:
    scheduler = cli("scheduler", "--port", "0", "--no-auth")
    address = scheduler.wait_for(r"scheduler at (tcp://\S+)").group(1)
    worker = cli("worker", address, "--no-nanny")
    worker.wait_for("worker at")
    with Client(address, set_as_default=False) as client:
        assert [w["pid"] for w in workers(client).values()] == [worker.pid]
        assert worker_processes(worker.psutil) == []
