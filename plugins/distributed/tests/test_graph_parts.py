"""A large graph sent in parts: its first tasks run while the client still prepares the rest.

The scheduler's side on its own (held tasks, a failing part, an abandoned graph), then a real
cluster: a ``get`` in parts gives the right result and leaves nothing behind, also when a late
part cannot be pickled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import taskloom.errors
import taskloom.serialize
from taskloom.graph import Ref, Task
from taskloom_distributed import Client
from taskloom_distributed.client import submit
from taskloom_distributed.scheduler.state import Messages, MissingDependencyError, SchedulerState

pytestmark = pytest.mark.timeout(120)

A = "tcp://a:1"


def part(
    st: SchedulerState, deps: dict[Any, list[Any]], start: int, more: bool, keys: Any = (), hold: Any = None
) -> Messages:
    """One part of graph 7 of client c1: ``{key: [dependency keys]}``, priorities from ``start``;
    ``hold``: the keys later parts need (None: all of them)."""
    tasks = {k: (f"spec-{k}", d) for k, d in deps.items()}
    priorities = {k: start + i for i, k in enumerate(deps)}
    return st.update_graph("c1", tasks, list(keys), priorities, graph=7, more=more, hold=hold)


def computes(out: Messages) -> list[Any]:
    return [m["key"] for r, m in out if r[0] == "worker" and m["op"] == "compute-task"]


def freed(out: Messages) -> list[Any]:
    return [k for _, m in out if m["op"] == "free-keys" for k in m["keys"]]


def one_worker() -> SchedulerState:
    st = SchedulerState()
    st.add_worker(A)
    return st


def test_the_tasks_of_a_part_are_held_until_the_last_part_is_in() -> None:
    st = one_worker()
    assert computes(part(st, {"a": [], "b": ["a"]}, 0, more=True, hold=["b"])) == ["a", "b"]  # b claimed
    st.task_finished(A, "a", 8)
    out = st.task_finished(A, "b", 8)  # nothing known needs b yet, but a later part does
    assert freed(out) == ["a"] and st.tasks["b"].state == "memory"
    assert st.tasks["a"].state == "released"  # (known while b is: b can be made again from it)
    out = part(st, {"c": ["b"]}, 2, more=False, keys=["c"])
    assert computes(out) == ["c"] and st.held == {}
    assert st.tasks["c"].priority[0] == st.tasks["b"].priority[0]  # one generation for the graph
    out = st.task_finished(A, "c", 8)
    assert [m["key"] for r, m in out if r == ("client", "c1")] == ["c"]
    assert freed(out) == ["b"]


def test_held_tasks_nothing_needs_are_dropped_when_the_last_part_comes() -> None:
    st = one_worker()
    part(st, {"a": [], "spare": []}, 0, more=True)
    st.task_finished(A, "a", 8)
    st.task_finished(A, "spare", 8)
    out = part(st, {"b": ["a"]}, 2, more=False, keys=["b"])
    assert freed(out) == ["spare"] and "spare" not in st.tasks
    assert st.tasks["a"].state == "memory"


def test_a_missing_dependency_fails_the_graph_and_lets_go_of_its_parts() -> None:
    st = one_worker()
    part(st, {"a": []}, 0, more=True)
    st.task_finished(A, "a", 8)
    with pytest.raises(MissingDependencyError, match="'b' depends on 'gone'") as failure:
        part(st, {"b": ["a", "gone"]}, 1, more=True)
    assert freed(failure.value.messages) == ["a"]  # its worker is told
    assert st.tasks == {} and st.held == {}  # a dropped; b never made it
    assert part(st, {"c": ["b"]}, 2, more=True) == []  # the rest of the graph is ignored...
    with pytest.raises(MissingDependencyError, match="'b' depends on 'gone'"):  # ...and its last part fails
        part(st, {"d": ["c"]}, 3, more=False, keys=["d"])
    assert st.tasks == {} and st.failed_graphs == {}


def test_an_abandoned_graph_and_a_client_that_leaves_let_go_of_held_tasks() -> None:
    st = one_worker()
    part(st, {"a": []}, 0, more=True)
    st.task_finished(A, "a", 8)
    assert freed(st.abandon_graph("c1", 7)) == ["a"] and st.tasks == {}
    part(st, {"b": []}, 0, more=True)
    st.task_finished(A, "b", 8)
    assert freed(st.remove_client("c1")) == ["b"] and st.tasks == {} and st.held == {}


def test_a_task_wanted_by_another_client_stays_when_the_graph_is_abandoned() -> None:
    st = one_worker()
    st.update_graph("c2", {"a": ("spec-a", [])}, ["a"], {"a": 0})
    part(st, {"a": [], "b": ["a"]}, 0, more=True)
    st.abandon_graph("c1", 7)
    assert "a" in st.tasks and "b" not in st.tasks


# -- on a cluster -----------------------------------------------------------------------------------
@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submit, "FIRST_PART", 10)
    monkeypatch.setattr(submit, "MAX_PART", 40)


@pytest.fixture
def parts_sent(client: Client) -> Iterator[list[dict[str, Any]]]:
    """The update-graph messages the client sends meanwhile."""
    sent: list[dict[str, Any]] = []
    post = client._post

    def recording(msg: dict[str, Any]) -> None:
        if msg["op"] in ("update-graph", "abandon-graph"):
            sent.append(msg)
        post(msg)

    client._post = recording  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        del client._post


def inc(x: int) -> int:
    return x + 1


def total(xs: list[int]) -> int:
    return sum(xs)


def chains(width: int, depth: int) -> dict[Any, Any]:
    graph: dict[Any, Any] = {("x", i, 0): Task(inc, i) for i in range(width)}
    for i in range(width):
        for d in range(1, depth):
            graph["x", i, d] = Task(inc, Ref(("x", i, d - 1)))
    graph["total"] = Task(total, [Ref(("x", i, depth - 1)) for i in range(width)])
    return graph


def scheduler_tasks(client: Client) -> int:
    client.run_on_scheduler(len, [])  # a round trip: what the client sent before is handled
    return len(client.cluster.scheduler.state.tasks)


class HeldDone:
    """Pickled as 0 once every task held for a graph in parts is in memory (the client pickles
    it, so the parts before it have been computed when the next part goes)."""

    def __init__(self, client: Client) -> None:
        self.state = client.cluster.scheduler.state

    def __reduce__(self) -> tuple[Any, ...]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            held = [ts for _, tasks in list(self.state.held.values()) for ts in list(tasks)]
            if held and all(ts.state == "memory" for ts in held):
                break
        return (int, (0,))


def held_on_worker() -> int:
    from taskloom.worker import get_worker

    return len(get_worker().data)


def workers_hold_nothing(client: Client, timeout: float = 30) -> bool:
    """Whether every worker's data is empty within ``timeout`` (asks again after each reply)."""
    deadline = time.monotonic() + timeout
    while any(client.run(held_on_worker).values()):
        if time.monotonic() > deadline:
            return False
    return True


def drained(client: Client, timeout: float = 30) -> bool:
    """Whether the scheduler forgets every task within ``timeout`` (tasks running when their
    graph was let go finish first); asks again after each round trip."""
    deadline = time.monotonic() + timeout
    while scheduler_tasks(client):
        if time.monotonic() > deadline:
            return False
    return True


@pytest.mark.usefixtures("small_parts")
def test_a_large_get_goes_in_parts_and_leaves_nothing_behind(
    client: Client, parts_sent: list[dict[str, Any]]
) -> None:
    graph = chains(20, 10)  # 201 tasks: parts of 10, 20, 40, 40, ...
    assert client.get(graph, "total") == sum(i + 10 for i in range(20))
    sizes = [len(m["tasks"]) for m in parts_sent]
    assert sizes[:3] == [10, 20, 40] and sum(sizes) == 201 and max(sizes) == 40
    # depth first: a part holds whole chains, and only their ends are needed later (by total)
    held = [key[1] for m in parts_sent[:-1] for key in m["hold"]]
    assert held == [("x", i, 9) for i in range(19)]  # (the last chain comes with total)
    assert [m.get("more") for m in parts_sent] == [True] * (len(sizes) - 1) + [False]
    assert len({m["graph"] for m in parts_sent}) == 1 and all(not m["keys"] for m in parts_sent[:-1])
    assert scheduler_tasks(client) == 0 and client.cluster.scheduler.state.held == {}


@pytest.mark.usefixtures("small_parts")
def test_a_small_get_is_one_message(client: Client, parts_sent: list[dict[str, Any]]) -> None:
    assert client.get(chains(3, 3), "total") == sum(i + 3 for i in range(3))
    assert len(parts_sent) == 1 and "graph" not in parts_sent[0]


@pytest.mark.usefixtures("small_parts")
def test_a_late_part_that_cannot_be_pickled_fails_the_get_and_the_cluster_forgets_the_rest(
    client: Client, parts_sent: list[dict[str, Any]]
) -> None:
    graph = chains(10, 8)
    graph["x", 9, 7] = Task(inc, threading.Lock())  # late in priority order: after some parts
    with pytest.raises(taskloom.serialize.SerializationError, match=r"\('x', 9, 7\)"):
        client.get(graph, "total")
    assert [m["op"] for m in parts_sent][-1] == "abandon-graph" and len(parts_sent) >= 3
    state = client.cluster.scheduler.state
    assert scheduler_tasks(client) < 70 and state.held == {}  # parts sent: 10 + 20 + 40 tasks
    assert all(ts.state == "processing" for ts in list(state.tasks.values()))  # they finish, then go
    assert drained(client)
    del graph["x", 9, 7], graph["total"]  # and the client goes on working
    assert client.get(graph, ("x", 0, 7)) == 8


@pytest.mark.usefixtures("small_parts")
def test_futures_inside_a_graph_in_parts(client: Client) -> None:
    base = client.scatter(100)
    graph = chains(10, 5)
    graph["x", 9, 4] = Task(inc, base)  # a Future in a late part
    assert client.get(graph, "total") == sum(i + 5 for i in range(9)) + 101
    del base


@pytest.mark.usefixtures("small_parts")
def test_a_part_holds_what_later_parts_need(client: Client, parts_sent: list[dict[str, Any]]) -> None:
    assert client.get(chains(5, 7), "total") == sum(i + 7 for i in range(5))  # parts of 10, 20, 6
    first, second, last = ([key[1] for key in m.get("hold", ())] for m in parts_sent)
    assert first == [("x", 0, 6), ("x", 1, 2)]  # a chain's end (for total), a chain cut in two
    assert second == [("x", 1, 6), ("x", 2, 6), ("x", 3, 6), ("x", 4, 1)] and last == []


@pytest.mark.usefixtures("small_parts")
def test_a_graph_needing_a_released_future_fails_naming_it_and_leaves_nothing(client: Client) -> None:
    gone = client.submit(inc, 41)
    assert gone.result() == 42
    gone.release()  # the cluster forgets it
    assert scheduler_tasks(client) == 0
    graph = chains(10, 8)  # parts of 10, 20, 40 and the last 4 tasks, with this one:
    graph["x", 9, 7] = Task(total, [HeldDone(client), gone])  # (prepared once the rest is done)
    unknown = r"depends on 'inc-.*which the scheduler does not know"
    with pytest.raises(taskloom.errors.TaskloomError, match=unknown):
        client.get(graph, "total")
    assert drained(client) and client.cluster.scheduler.state.held == {}
    assert client.cluster.scheduler.state.failed_graphs == {}
    assert workers_hold_nothing(client)  # the held parts' results were dropped where they were
