"""The shared engine's bookkeeping (``ExecutionState``): batches, followers, claims and release."""

from __future__ import annotations

from typing import Any

from taskloom.local import ExecutionState
from taskloom.order import plan


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def chain(n: int) -> dict[Any, Any]:
    graph: dict[Any, Any] = {("c", 0): (inc, 0)}
    for i in range(1, n):
        graph["c", i] = (inc, ("c", i - 1))
    return graph


def run_batches(state: ExecutionState, n: int, follow: int | None) -> list[int]:
    """Run the whole plan batch by batch; return each batch's size."""
    sizes = []
    while state.remaining:
        batch = state.pop_batch(n, follow)
        assert batch, "nothing ready although tasks remain"
        sizes.append(len(batch))
        for _, key, task in batch:  # in priority order: each task's inputs are ready
            state.data[key] = task(state.data)
        for i, _, _ in batch:
            state.finish(i)
    return sizes


def test_a_single_pick_follows_its_chain_up_to_the_cap() -> None:
    state = ExecutionState(plan(chain(10), [("c", 9)]))
    assert run_batches(state, 1, follow=3) == [4, 4, 2]
    assert state.results() == {("c", 9): 10}


def test_follow_zero_hands_out_one_task_at_a_time() -> None:
    state = ExecutionState(plan(chain(5), [("c", 4)]))
    assert run_batches(state, 1, follow=0) == [1] * 5


def test_by_default_only_a_batch_of_several_is_followed() -> None:
    state = ExecutionState(plan(chain(5), [("c", 4)]))
    assert run_batches(state, 1, follow=None) == [1] * 5
    graph = {"a": (inc, 1), "b": (inc, 2), "ab": (add, "a", "b"), "top": (inc, "ab")}
    state = ExecutionState(plan(graph, ["top"]))
    assert run_batches(state, 2, follow=None) == [4]
    assert state.results() == {"top": 6}


def test_a_dependent_waiting_on_a_task_outside_the_batch_is_not_followed() -> None:
    graph = {"a": (inc, 1), "b": (inc, 2), "ab": (add, "a", "b")}
    state = ExecutionState(plan(graph, ["ab"]))
    first = state.pop_batch(1, follow=10)
    assert [key for _, key, _ in first] == ["a"]  # "ab" still needs "b"
    for i, key, task in first:
        state.data[key] = task(state.data)
        state.finish(i)
    second = state.pop_batch(1, follow=10)
    assert [key for _, key, _ in second] == ["b", "ab"]


def test_intermediates_are_released_when_their_last_dependent_finishes() -> None:
    state = ExecutionState(plan(chain(4), [("c", 3)]))
    run_batches(state, 1, follow=0)
    assert set(state.data) == {("c", 3)}
