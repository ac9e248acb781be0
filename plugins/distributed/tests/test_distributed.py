"""taskloom-distributed on its own: the conformance suite and the Client API on a LocalCluster."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest
import taskloom
from taskloom.testing import SchedulerConformance, live_processes, wait_gone
from taskloom_distributed import Client, LocalCluster
from taskloom_distributed.comm import HandshakeError, connect, connect_handshake

pytestmark = pytest.mark.timeout(120)


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


class TestDistributedConformance(SchedulerConformance):
    scheduler = "distributed"
    in_process = False
    max_live_intermediates_check = False

    @pytest.fixture(autouse=True)
    def _cluster(self, client: Client) -> None:
        """The module's client is the running one the ``distributed`` scheduler uses."""


def test_submit_map_gather(client: Client) -> None:
    assert client.submit(inc, 1).result() == 2
    futures = client.map(inc, range(100))
    assert client.gather(futures) == list(range(1, 101))
    total = client.submit(sum, futures)
    assert total.result() == sum(range(1, 101))


def test_a_client_is_the_default_scheduler(client: Client) -> None:
    assert taskloom.config.get("scheduler") is client
    pid = taskloom.get({"pid": (os.getpid,)}, "pid")
    assert pid in client.cluster.worker_pids


def test_task_error_is_the_same_type_with_the_remote_traceback(client: Client) -> None:
    def boom(x: int) -> int:
        raise ValueError(f"bad {x}")

    future = client.submit(boom, 3)
    with pytest.raises(ValueError, match="bad 3") as info:
        future.result()
    assert "boom" in str(info.value.__cause__)
    assert any("boom" in note for note in info.value.__notes__)
    assert isinstance(future.exception(), ValueError)


def test_scatter_then_compute_on_it(client: Client) -> None:
    [data] = client.scatter([list(range(10))])
    assert client.submit(sum, data).result() == 45
    assert data.key in client.who_has()


def test_run_and_run_on_scheduler_and_info(client: Client) -> None:
    pids = client.run(os.getpid)
    assert set(pids.values()) == set(client.cluster.worker_pids)
    assert client.run_on_scheduler(os.getpid) == os.getpid()
    info = client.scheduler_info()
    assert len(info["workers"]) == 2
    for w in info["workers"].values():
        assert {"address", "name", "nthreads", "memory_limit", "memory", "tasks"} <= set(w)


async def _loop_kind() -> str:
    """Awaited on the loop it runs on: which event loop that is."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_run_awaits_a_coroutine_function_on_each_workers_loop(client: Client) -> None:
    kinds = client.run(_loop_kind)
    assert set(kinds) == set(client.scheduler_info()["workers"])
    assert set(kinds.values()) == {"uvloop"}  # the default, "auto", with uvloop installed
    assert client.run_on_scheduler(_loop_kind) == "uvloop"


def test_run_on_chosen_workers_only_and_an_unknown_address_is_named(client: Client) -> None:
    first = sorted(client.scheduler_info()["workers"])[0]
    assert list(client.run(os.getpid, workers=[first])) == [first]
    with pytest.raises(ValueError, match=r"no worker at tcp://127\.0\.0\.1:1 "):
        client.run(os.getpid, workers=["tcp://127.0.0.1:1"])


def _unpicklable_result() -> object:
    import threading

    return threading.Lock()


def test_run_reports_a_result_that_cannot_be_pickled_and_the_worker_keeps_serving(client: Client) -> None:
    with pytest.raises(taskloom.serialize.SerializationError, match=r"_thread\.lock"):
        client.run(_unpicklable_result)
    assert len(client.run(os.getpid)) == 2


def test_unpicklable_argument_is_reported_at_submit_with_its_path(client: Client) -> None:
    import threading

    class Holder:
        def __init__(self) -> None:
            self.lock = threading.Lock()

    with pytest.raises(taskloom.serialize.SerializationError, match=r"args\[0\]\.lock"):
        client.submit(id, Holder())


def test_connection_with_a_wrong_token_is_refused_and_the_scheduler_keeps_serving(client: Client) -> None:
    async def attempt() -> None:
        comm = await connect(client.scheduler_address)
        await connect_handshake(comm, "not-the-token", "client")

    with pytest.raises(HandshakeError, match="authentication failed"):
        asyncio.run(attempt())
    assert client.submit(inc, 41).result() == 42


def test_local_cluster_binds_to_loopback() -> None:
    with LocalCluster(n_workers=1, processes=False) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")


def test_no_worker_process_outlives_a_killed_client_process(tmp_path: object) -> None:
    script = textwrap.dedent(
        """
        import os, sys
        from taskloom_distributed import Client
        if __name__ == "__main__":
            c = Client(n_workers=2, threads_per_worker=1)
            print(" ".join(str(p) for p in c.cluster.worker_pids), flush=True)
            sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    workers = live_processes(pids)
    proc.kill()
    proc.wait(10)
    alive = wait_gone(workers, 20)
    assert not alive, f"worker processes survived their client: {alive}"


def test_core_reexports_the_client() -> None:
    from taskloom.distributed import Client as Reexported

    assert Reexported is Client
