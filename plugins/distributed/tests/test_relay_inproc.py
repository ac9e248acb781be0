"""Small results relayed by the scheduler to the workers of their dependents (no worker-to-worker
fetch), and in-process connections between a client and the scheduler of the cluster it started."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import taskloom
from taskloom_distributed import Client
from taskloom_distributed.comm import (
    CommClosedError,
    CommTimeoutError,
    accept,
    connect,
    connect_handshake,
    listen,
)
from taskloom_distributed.comm.handshake import HandshakeError
from taskloom_distributed.comm.inproc import InProcComm
from taskloom_distributed.comm.tcp import Comm
from taskloom_distributed.scheduler.state import Messages, SchedulerState
from taskloom_distributed.worker.state import WorkerState

pytestmark = pytest.mark.timeout(120)

A, B = "tcp://a:1", "tcp://b:1"
VALUE = ("pickle", [b"small"])  # a result as a worker sends it inline: serializer name, frames


def computes(out: Messages) -> dict[Any, tuple[str, dict[str, Any]]]:
    return {m["key"]: (r[1], m) for r, m in out if r[0] == "worker" and m["op"] == "compute-task"}


def two_workers(relay_bytes: int = 1024) -> SchedulerState:
    st = SchedulerState(relay_bytes=relay_bytes)
    st.add_worker(A)
    st.add_worker(B)
    return st


def x_and_y_then_z(st: SchedulerState) -> dict[Any, tuple[str, dict[str, Any]]]:
    """``z = f(x, y)`` submitted at once: ``x`` and ``y`` go to different workers."""
    tasks = {"x": ("spec-x", []), "y": ("spec-y", []), "z": ("spec-z", ["x", "y"])}
    sent = computes(st.update_graph("c", tasks, ["z"], {"x": 0, "y": 1, "z": 2}))
    assert {sent["x"][0], sent["y"][0]} == {A, B}
    return sent


# -- the scheduler ---------------------------------------------------------------------------------
def test_a_small_input_from_another_worker_travels_inside_the_task_message() -> None:
    st = two_workers()
    sent = x_and_y_then_z(st)
    # they have a dependent: small results come with the news (limit, dependents anywhere)
    assert sent["x"][1]["relay"] == (1024, 1) and sent["y"][1]["relay"] == (1024, 1)
    st.task_finished(sent["x"][0], "x", 5, "bytes", value=VALUE)
    out = st.task_finished(sent["y"][0], "y", 5, "bytes", value=VALUE)
    where, msg = computes(out)["z"]
    assert "relay" not in msg  # nothing depends on z
    other = "y" if where == sent["x"][0] else "x"
    assert msg["data"] == {other: VALUE}  # the input on the other worker travels, not the local one
    assert {w.address for w in st.tasks[other].who_has} == {A, B}  # z's worker holds it from now on
    out = st.task_finished(where, "z", 5, "bytes")
    freed = sorted((r[1], k) for r, m in out if m["op"] == "free-keys" for k in m["keys"])
    assert freed == sorted([(where, "x"), (where, "y"), (sent[other][0], other)])  # the copy too
    assert st.tasks[other].state == "released" and st.tasks[other].relayed is None


def test_relaying_is_off_with_relay_bytes_0_and_for_results_sent_without_a_value() -> None:
    st = two_workers(relay_bytes=0)
    sent = x_and_y_then_z(st)
    assert "relay" not in sent["x"][1]
    st = two_workers()
    sent = x_and_y_then_z(st)
    st.task_finished(sent["x"][0], "x", 5, "bytes")
    out = st.task_finished(sent["y"][0], "y", 5, "bytes")  # large results: no value with the news
    where, msg = computes(out)["z"]
    other = "y" if where == sent["x"][0] else "x"
    assert "data" not in msg and sorted(msg["deps"]) == ["x", "y"]
    assert msg["who_has"] == {other: [sent[other][0]]}  # the local input is in deps only


# -- the worker ------------------------------------------------------------------------------------
def test_a_worker_runs_a_task_whose_inputs_came_with_it_without_fetching() -> None:
    ws = WorkerState(1, A)
    msg = {"key": "z", "spec": "spec-z", "priority": (0,), "who_has": {"y": [B]}, "relay": (64, 1)}
    assert ws.compute_task(msg, {"y": b"small"}) == [("execute", "z")]
    assert ws.data["y"] == b"small" and ws.tasks["y"].state == "memory"
    assert ws.tasks["z"].relay == 64
    ws.free(["y"])
    assert "y" not in ws.data and "y" not in ws.tasks


def test_a_worker_sends_a_small_result_only_when_a_dependent_runs_elsewhere_or_a_client_waits() -> None:
    ws = WorkerState(1, A)
    ws.inline_limit = 4096
    base = {"spec": "s", "priority": (0,), "who_has": {}}
    ws.compute_task({**base, "key": "x", "relay": (64, 2)})  # two dependents somewhere
    ws.compute_task({**base, "key": "x1", "who_has": {"x": []}})  # one of them here (claimed)
    assert ws.relay_limit("x") == 64  # the other is elsewhere: it needs x's value relayed
    ws.compute_task({**base, "key": "x2", "who_has": {"x": []}})
    assert ws.relay_limit("x") == 0  # both here: nothing to relay
    ws.compute_task({**base, "key": "w", "inline": True, "relay": (64, 1)})
    assert ws.relay_limit("w") == 4096  # a client waits for it
    assert ws.relay_limit("unknown") == 0


def test_an_input_being_fetched_that_comes_with_a_task_message_serves_every_task_waiting_for_it() -> None:
    ws = WorkerState(2, A)
    first = {"key": "z1", "spec": "s", "priority": (0,), "who_has": {"y": [B]}}
    assert ws.compute_task(first) == [("fetch", B, ["y"])]
    second = {"key": "z2", "spec": "s", "priority": (1,), "who_has": {"y": [B]}}
    assert ws.compute_task(second, {"y": 7}) == [("execute", "z1"), ("execute", "z2")]
    assert ws.in_flight[B] == set()
    assert ws.fetched(B, {"y": 7}) == [("send", {"op": "add-keys", "keys": {"y": 0}})]  # nothing reruns


def test_an_input_the_scheduler_counts_here_keeps_the_holders_an_earlier_message_gave() -> None:
    ws = WorkerState(1, A)
    first = {"key": "z1", "spec": "s", "priority": (0,), "deps": ["y"], "who_has": {"y": [B]}}
    assert ws.compute_task(first) == [("fetch", B, ["y"])]  # (its relayed copy could not be loaded)
    second = {"key": "z2", "spec": "s", "priority": (1,), "deps": ["y"], "who_has": {}}  # "here"
    assert ws.compute_task(second) == []
    assert ws.tasks["y"].who_has == [B] and ws.tasks["z2"].missing == {"y"}


# -- a real cluster --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with Client(n_workers=2, threads_per_worker=1) as c:
        yield c


def add(x: Any, y: Any) -> Any:
    return x + y


def made(size: int) -> tuple[str, bytes]:
    return taskloom.get_worker().name, b"v" * size


def joined(x: tuple[str, bytes], y: tuple[str, bytes]) -> tuple[str, str, str, int]:
    return x[0], y[0], taskloom.get_worker().name, len(x[1] + y[1])


def fetched_keys() -> list[Any]:
    return [k for t in taskloom.get_worker().transfer_log for k in t["keys"]]  # type: ignore[attr-defined]


def two_inputs(client: Client, size: int) -> tuple[tuple[str, str, str, int], int]:
    """``joined(made(size), made(size))`` on the cluster, and how many keys the workers fetched."""
    before = sum(len(v) for v in client.run(fetched_keys).values())
    graph = {"x": (made, size), "y": (made, size + 1), "z": (joined, "x", "y")}
    result = client.get(graph, "z")
    assert result[0] != result[1]  # x and y ran on different workers: z lacks one of them
    return result, sum(len(v) for v in client.run(fetched_keys).values()) - before


def test_a_small_result_reaches_a_dependent_on_another_worker_without_a_fetch(client: Client) -> None:
    result, fetches = two_inputs(client, 100)
    assert result[3] == 201 and fetches == 0  # the input came inside z's task message
    result, fetches = two_inputs(client, 10_000)  # over distributed.scheduler.relay_bytes
    assert result[3] == 20_001 and fetches == 1


def test_with_relay_bytes_0_every_input_is_fetched_from_its_worker() -> None:
    with taskloom.config.set({"distributed.scheduler.relay_bytes": 0}):
        with Client(n_workers=2, threads_per_worker=1) as c:
            result, fetches = two_inputs(c, 100)
            assert result[3] == 201 and fetches == 1


# -- in-process connections ------------------------------------------------------------------------
def test_a_client_talks_to_the_scheduler_of_its_own_cluster_without_a_socket(client: Client) -> None:
    port = int(client.scheduler_address.rsplit(":", 1)[1])
    mine = [c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port]
    assert mine == []  # the workers (other processes) connect over TCP; this client does not
    assert client.submit(add, 1, 1).result() == 2
    with Client(client.scheduler_address, auth_token=client.auth_token) as other:  # its own loop
        assert other.submit(add, 2, 2).result() == 4
        mine = [c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port]
        assert len(mine) == 1  # a client on another loop connects over TCP


def test_an_in_process_connection_authenticates_delivers_in_order_and_closes_like_tcp() -> None:
    async def main() -> None:
        got: asyncio.Queue[Any] = asyncio.Queue()

        async def handler(comm: Any) -> None:
            try:
                await accept(comm, "secret", "scheduler")
            except HandshakeError:
                await got.put("refused")
                return
            await got.put(await comm.read())
            await comm.write({"op": "reply", "n": 1})
            await comm.write({"op": "reply", "n": 2})
            comm.close()

        server = await listen("127.0.0.1", 0, handler)
        address = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            wrong = await connect(address)
            assert isinstance(wrong, InProcComm)
            with pytest.raises(HandshakeError):
                await connect_handshake(wrong, "not the secret", "client")
            assert await got.get() == "refused"
            comm = await connect(address)
            await connect_handshake(comm, "secret", "client")
            await comm.write({"op": "hello", "key": ("x", 1), "items": [1, 2]})
            assert await got.get() == {"op": "hello", "key": ("x", 1), "items": (1, 2)}  # as over TCP
            assert [await comm.read(), await comm.read()] == [
                {"op": "reply", "n": 1},
                {"op": "reply", "n": 2},
            ]
            with pytest.raises(CommClosedError):
                await comm.read()
            assert comm.closed
            with pytest.raises(CommClosedError):
                await comm.write({"op": "late"})
            tcp = await connect(address, local=False)
            assert isinstance(tcp, Comm)
            tcp.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_an_in_process_peer_that_sends_nothing_times_out() -> None:
    async def main() -> None:
        async def handler(comm: Any) -> None:
            await asyncio.Event().wait()  # a peer that never answers (cancelled when the loop ends)

        server = await listen("127.0.0.1", 0, handler)
        try:
            comm = await connect(f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}")
            with pytest.raises(CommTimeoutError, match=r"no data from .* for 0\.2 s"):
                await comm.read_frames(0.2)
            assert comm.closed
        finally:
            server.close()

    asyncio.run(main())


async def recording_server() -> tuple[Any, str, asyncio.Queue[Any]]:
    """A TCP server on 127.0.0.1 that puts every message it reads in a queue: (server, address, queue)."""
    received: asyncio.Queue[Any] = asyncio.Queue()

    async def handler(comm: Any) -> None:
        comm.set_authenticated()
        while True:
            try:
                await received.put(await comm.read())
            except CommClosedError:
                return

    server = await listen("127.0.0.1", 0, handler)
    return server, f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}", received


def test_a_batched_stream_writes_the_first_message_after_a_quiet_spell_at_once_and_batches_the_rest() -> None:
    from taskloom_distributed.batched import BatchedSend

    async def main() -> None:
        server, address, received = await recording_server()
        try:
            tcp = await connect(address, local=False)
            stream = BatchedSend(tcp, interval=0.05)
            stream.send({"n": 1})
            assert stream.writes == 1  # written from send() itself, not by the background task
            for n in (2, 3, 4):
                stream.send({"n": n})  # within the interval: they wait and go together
            assert stream.writes == 1
            assert await received.get() == ({"n": 1},)
            assert await received.get() == ({"n": 2}, {"n": 3}, {"n": 4})
            assert stream.writes == 2
            await stream.close()
            tcp.close()
            local = await connect(address)
            assert isinstance(local, InProcComm)
            stream = BatchedSend(local)
            stream.send({"n": 5}, {"n": 6})
            assert stream.writes == 1 and received.empty()  # delivered; read on the next turn
            assert await received.get() == ({"n": 5}, {"n": 6})
            await stream.close()
            local.close()
        finally:
            server.close()

    asyncio.run(main())


def test_a_batched_stream_measures_its_quiet_spell_finer_than_uvloops_millisecond_clock() -> None:
    """uvloop's ``loop.time()`` moves in whole milliseconds: a stream with a sub-millisecond
    interval must not hold back a message sent after a real quiet spell of that length."""
    import time

    import uvloop
    from taskloom_distributed.batched import BatchedSend

    interval = 0.0004

    async def main() -> None:
        server, address, received = await recording_server()
        tcp = await connect(address, local=False)
        stream = BatchedSend(tcp, interval=interval)
        try:
            for n in range(20):
                sent = time.perf_counter()
                while time.perf_counter() - sent < 1.5 * interval:  # a quiet spell, by the clock
                    pass
                before = stream.writes
                stream.send({"n": n})
                assert stream.writes == before + 1, f"message {n} was held back after a quiet spell"
                assert await received.get() == ({"n": n},)
        finally:
            await stream.close()
            tcp.close()
            server.close()

    uvloop.run(main())
