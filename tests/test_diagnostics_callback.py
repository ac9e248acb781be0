"""``taskloom.diagnostics.Callback`` on every installed scheduler: events, activation, errors."""

from __future__ import annotations

import operator
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import pytest
import taskloom
from taskloom import Ref, Task
from taskloom.diagnostics import Callback
from taskloom.local import task_events
from taskloom.plugins import hook_has_impls
from taskloom.testing.fixtures import DIAGNOSTICS_HOOKS

SCHEDULERS = sorted(taskloom.schedulers())
pytestmark = pytest.mark.usefixtures("no_callback_left_behind")


@pytest.fixture(params=SCHEDULERS)
def scheduler(request: pytest.FixtureRequest) -> Iterator[str]:
    """The scheduler's name, set up as its ``SchedulerSpec.setup`` says (options via config)."""
    name = str(request.param)
    spec = taskloom.schedulers()[name]
    with ExitStack() as stack:
        if spec.setup is not None:
            options = stack.enter_context(spec.setup())
            if options:
                stack.enter_context(taskloom.config.set(options))
        yield name


class Recorder(Callback):
    """Records every event, from any thread."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def _add(self, *event: Any) -> None:
        with self._lock:
            self.events.append(event)

    def start(self, graph: Mapping[Any, Any], keys: Sequence[Any], scheduler: str) -> None:
        self._add("start", graph, list(keys), scheduler)

    def task_start(self, key: Any, worker: str) -> None:
        self._add("task_start", key, worker)

    def task_finish(self, key: Any, worker: str, duration: float, error: BaseException | None) -> None:
        self._add("task_finish", key, worker, duration, error)

    def finish(self, keys: Sequence[Any], error: BaseException | None) -> None:
        self._add("finish", list(keys), error)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e[1:] for e in self.events if e[0] == kind]


def fail(x: Any) -> Any:
    raise ValueError(f"bad input {x!r}")


def make_graph() -> dict[Any, Any]:
    """Four tasks computing "total" and ("part", 1), a literal, and one task nobody needs."""
    return {
        "a": 1,
        "b": Task(operator.add, Ref("a"), 10),
        ("part", 0): Task(operator.mul, Ref("b"), 2),
        ("part", 1): Task(operator.mul, Ref("b"), 3),
        "total": Task(operator.add, Ref(("part", 0)), Ref(("part", 1))),
        "unused": Task(operator.neg, Ref("a")),
    }


TASKS = {"b", ("part", 0), ("part", 1), "total"}


# --- events ----------------------------------------------------------------------------------


def test_task_hooks_fire_once_per_task_with_its_key_and_worker(scheduler: str) -> None:
    with Recorder() as rec:
        assert taskloom.get(make_graph(), ["total", ("part", 1)], scheduler=scheduler) == [55, 33]
    started = rec.of("task_start")
    finished = rec.of("task_finish")
    assert sorted(map(repr, (key for key, _ in started))) == sorted(map(repr, TASKS))
    assert sorted(map(repr, (key for key, *_ in finished))) == sorted(map(repr, TASKS))
    for _, worker in started:
        assert isinstance(worker, str) and worker
    for key, worker, duration, error in finished:
        assert (key, worker) in started  # finished on the worker it started on
        assert duration >= 0.0
        assert error is None
    for key in TASKS:  # each task starts before it finishes
        kinds = [e[0] for e in rec.events if e[0].startswith("task_") and e[1] == key]
        assert kinds == ["task_start", "task_finish"]


def test_start_and_finish_fire_once_per_compute_with_flat_keys_and_scheduler_name(scheduler: str) -> None:
    graph = make_graph()
    with Recorder() as rec:
        taskloom.get(graph, [["total"], [("part", 1), "b"]], scheduler=scheduler)
    assert rec.of("start") == [(graph, ["total", ("part", 1), "b"], scheduler)]
    assert rec.of("start")[0][0] is graph  # the graph as given
    assert rec.of("finish") == [(["total", ("part", 1), "b"], None)]
    assert rec.events[0][0] == "start"
    assert rec.events[-1][0] == "finish"


def test_scheduler_given_by_alias_is_reported_by_its_name(scheduler: str) -> None:
    spec = taskloom.schedulers()[scheduler]
    if not spec.aliases:
        pytest.skip(f"{scheduler} has no alias")
    with Recorder() as rec:
        taskloom.get(make_graph(), "b", scheduler=spec.aliases[0])
    assert [name for _, _, name in rec.of("start")] == [scheduler]


def test_delayed_compute_is_observed(scheduler: str) -> None:
    x = taskloom.delayed(operator.add)(1, 2)
    y = taskloom.delayed(operator.mul)(x, 10)
    with Recorder() as rec:
        assert y.compute(scheduler=scheduler) == 30
    assert sorted(map(repr, (k for k, _ in rec.of("task_start")))) == sorted(map(repr, [x.key, y.key]))
    assert [keys for _, keys, _ in rec.of("start")] == [[y.key]]


def test_task_error_reaches_task_finish_and_finish(scheduler: str) -> None:
    graph: dict[Any, Any] = {"a": 1, "b": Task(operator.add, Ref("a"), 1), "c": Task(fail, Ref("b"))}
    with Recorder() as rec, pytest.raises(ValueError, match="bad input 2") as raised:
        taskloom.get(graph, "c", scheduler=scheduler)
    failed = [(key, error) for key, _, _, error in rec.of("task_finish") if error is not None]
    assert failed == [("c", raised.value)]
    assert ("b", None) in [(key, error) for key, _, _, error in rec.of("task_finish")]
    assert rec.of("finish") == [(["c"], raised.value)]


def test_callback_from_plain_functions(scheduler: str) -> None:
    seen: list[Any] = []
    cb = Callback(
        start=lambda graph, keys, name: seen.append(("start", list(keys), name)),
        task_start=lambda key, worker: seen.append(("task_start", key)),
        task_finish=lambda key, worker, duration, error: seen.append(("task_finish", key, error)),
        finish=lambda keys, error: seen.append(("finish", list(keys), error)),
    )
    with cb:
        assert taskloom.get({"x": Task(operator.neg, 5)}, "x", scheduler=scheduler) == -5
    assert seen == [
        ("start", ["x"], scheduler),
        ("task_start", "x"),
        ("task_finish", "x", None),
        ("finish", ["x"], None),
    ]


def test_nested_callbacks_both_observe_and_unwind_separately(scheduler: str) -> None:
    with Recorder() as outer:
        with Recorder() as inner:
            taskloom.get(make_graph(), "b", scheduler=scheduler)
        assert hook_has_impls("taskloom_task_start")  # the outer one is still active
        taskloom.get(make_graph(), "b", scheduler=scheduler)
    assert len(inner.of("task_start")) == 1
    assert len(outer.of("task_start")) == 2


@pytest.mark.timeout(10)
@pytest.mark.parametrize("method", ["start", "task_start", "task_finish", "finish"])
def test_exception_raised_by_a_callback_reaches_the_caller(scheduler: str, method: str) -> None:
    class Broken(RuntimeError):
        pass

    def boom(*args: Any) -> None:
        raise Broken(method)

    with Callback(**{method: boom}), pytest.raises(Broken, match=method):
        # a pool size of its own, so that a failure here cannot starve other tests' pools
        taskloom.get(make_graph(), "total", scheduler=scheduler, num_workers=3)
    # and the scheduler still works afterwards
    assert taskloom.get(make_graph(), "total", scheduler=scheduler, num_workers=3) == 55


# --- activation ------------------------------------------------------------------------------


def test_with_block_registers_and_restores_on_exit() -> None:
    assert not hook_has_impls("taskloom_task_start")
    with Recorder() as rec:
        assert rec.active
        assert all(hook_has_impls(name) for name in DIAGNOSTICS_HOOKS)
    assert not rec.active
    assert not hook_has_impls("taskloom_task_start")
    assert not hook_has_impls("taskloom_task_finish")
    assert not task_events().active


def test_with_block_restores_when_the_block_raises() -> None:
    with pytest.raises(KeyError), Recorder():
        raise KeyError("x")
    assert not hook_has_impls("taskloom_task_start")


def test_register_and_unregister_globally() -> None:
    rec = Recorder()
    rec.register()
    try:
        assert hook_has_impls("taskloom_task_start")
        taskloom.get(make_graph(), "b", scheduler="sync")
        assert len(rec.of("task_start")) == 1
    finally:
        rec.unregister()
    assert not hook_has_impls("taskloom_task_start")
    taskloom.get(make_graph(), "b", scheduler="sync")
    assert len(rec.of("task_start")) == 1  # nothing more once unregistered
    rec.unregister()  # a second unregister does nothing


def test_a_callback_is_reusable_after_it_exits() -> None:
    rec = Recorder()
    for _ in range(2):
        with rec:
            taskloom.get(make_graph(), "b", scheduler="sync")
    assert len(rec.of("task_start")) == 2


def test_entering_the_same_instance_twice_is_an_error() -> None:
    rec = Recorder()
    with rec:
        with pytest.raises(RuntimeError, match="already active"), rec:
            pass  # pragma: no cover
        assert rec.active  # the failed enter left the outer activation alone
        with pytest.raises(RuntimeError, match="already active"):
            rec.register()
    assert not hook_has_impls("taskloom_task_start")


def test_only_the_overridden_hooks_are_registered() -> None:
    class OnlyFinish(Callback):
        def finish(self, keys: Sequence[Any], error: BaseException | None) -> None:
            pass

    with OnlyFinish():
        assert hook_has_impls("taskloom_compute_finish")
        assert not hook_has_impls("taskloom_compute_start")
        assert not hook_has_impls("taskloom_task_start")
        assert not hook_has_impls("taskloom_task_finish")
        assert not task_events().active  # no per-task cost
    with Callback(task_finish=lambda key, worker, duration, error: None):
        assert hook_has_impls("taskloom_task_finish")
        assert not hook_has_impls("taskloom_task_start")
        assert not hook_has_impls("taskloom_compute_finish")
    with Callback():
        assert not any(hook_has_impls(name) for name in DIAGNOSTICS_HOOKS)


def test_a_subclass_need_not_call_init() -> None:
    class Plain(Callback):
        def __init__(self) -> None:
            self.keys: list[Any] = []

        def task_start(self, key: Any, worker: str) -> None:
            self.keys.append(key)

    with Plain() as cb:
        taskloom.get(make_graph(), "b", scheduler="sync")
    assert cb.keys == ["b"]


def test_register_and_unregister_are_thread_safe() -> None:
    threads = 8
    shared = Recorder()
    barrier = threading.Barrier(threads)
    outcomes: list[str] = []

    def contend() -> None:
        barrier.wait()
        try:
            shared.register()
            outcomes.append("registered")
        except RuntimeError:
            outcomes.append("refused")
        barrier.wait()
        for _ in range(50):  # many different callbacks entering and leaving at once
            with Recorder():
                pass

    workers = [threading.Thread(target=contend) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert sorted(outcomes) == ["refused"] * (threads - 1) + ["registered"]
    assert shared.active
    shared.unregister()
    assert not hook_has_impls("taskloom_task_start")
