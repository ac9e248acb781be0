"""``SchedulerConformance``: the behaviour every taskloom scheduler owes its users, as a pytest mixin.

Subclass it with ``scheduler`` set to a registered name (or a ``get(graph, keys, **kwargs)``
callable) and pytest collects the tests below against that scheduler.  They use only the public
API -- ``taskloom.get``, ``compute``, ``persist``, ``delayed``, ``Task``, ``Ref`` and the errors --
and assert what a user sees: results, their shape, which tasks ran, the errors and tracebacks.

Class attributes a scheduler may set:

* ``in_process = True`` -- tasks run in the test's process.  Set it to ``False`` when they run
  elsewhere: side effects are then recorded in files (same machine) and a task's exception is
  checked for type and arguments instead of identity.
* ``max_live_intermediates_check = True`` -- the one-worker memory check counts live result
  objects in this process; schedulers whose workers are other processes opt out.
* ``compute_kwargs = {}`` -- extra keyword arguments for every call (an address, an executor).

Task functions and observers live in :mod:`taskloom.testing.suite_helpers` (module level, so every
scheduler can ship them to its workers).
"""

from __future__ import annotations

import inspect
import traceback
from pathlib import Path
from typing import Any, ClassVar

import pytest

import taskloom
import taskloom.plugins
from taskloom import CycleError, GraphError, KeysNotFoundError, MissingDependencyError, Ref, Task, delayed

from .suite_helpers import (  # noqa: F401  (re-exported: tests import them from here)
    FileJournal,
    HookRecorder,
    LiveCounter,
    MemoryJournal,
    Point,
    TaskFailure,
    _note_text,
    _Tracked,
    add,
    collect,
    failing_task,
    inc,
    make_adder,
    mul,
    recorded,
    tasks_run_in_this_process,
    tree_graph,
)

# -- the suite -----------------------------------------------------------------------------------


class SchedulerConformance:
    """Mixin: the conformance tests, run against ``scheduler``."""

    scheduler: Any = None
    """A registered scheduler name or alias, or a ``get(graph, keys, **kwargs)`` callable."""

    in_process: bool = True
    max_live_intermediates_check: bool = True
    compute_kwargs: ClassVar[dict[str, Any]] = {}

    # -- helpers a subclass may override -----------------------------------------------------
    @property
    def scheduler_under_test(self) -> Any:
        """``scheduler`` as set on the class or instance, never bound as a method."""
        value = inspect.getattr_static(self, "scheduler", None)
        return value.__func__ if isinstance(value, staticmethod) else value

    def options(self, **kwargs: Any) -> dict[str, Any]:
        return {"scheduler": self.scheduler_under_test, **self.compute_kwargs, **kwargs}

    def run_get(self, graph: Any, keys: Any, **kwargs: Any) -> Any:
        return taskloom.get(graph, keys, **self.options(**kwargs))

    def run_compute(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return taskloom.compute(*args, **self.options(**kwargs))

    def run_persist(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return taskloom.persist(*args, **self.options(**kwargs))

    @pytest.fixture
    def taskloom_journal(self, tmp_path: Path) -> MemoryJournal | FileJournal:
        """Where tasks record what ran: in memory, or in files for out-of-process schedulers."""
        return MemoryJournal() if self.in_process else FileJournal(tmp_path)

    # -- the classic tuple spec ----------------------------------------------------------------
    def test_classic_nested_tasks(self) -> None:
        graph = {"x": 1, "y": (inc, "x"), "z": (add, (inc, "y"), (mul, "x", (inc, 9)))}
        assert self.run_get(graph, "z") == 13

    def test_classic_lists_are_evaluated_elementwise(self) -> None:
        graph = {
            "a": 1,
            "b": (inc, "a"),
            "total": (sum, ["a", "b", 10]),
            "nested": (collect, [["a"], ["b", (inc, "b")], []]),
        }
        assert self.run_get(graph, "total") == 13
        assert self.run_get(graph, "nested") == (([[1], [2, 3], []],), {})

    def test_classic_tuple_keys(self) -> None:
        graph = {("x", 0): 1, ("x", 1): (inc, ("x", 0)), ("sum", 0): (add, ("x", 0), ("x", 1))}
        assert self.run_get(graph, ("sum", 0)) == 3
        assert self.run_get(graph, [("x", 1), ("sum", 0)]) == [2, 3]

    def test_classic_literal_data(self) -> None:
        graph = {
            "numbers": [1, 2, 3],
            "table": {"k": [4, 5]},
            "none": None,
            "text": "plain text",
            "pair": (1, "two"),
            "out": (collect, "numbers", "table", "none", "text", "pair"),
        }
        expected = ([1, 2, 3], {"k": [4, 5]}, None, "plain text", (1, "two"))
        assert self.run_get(graph, "out") == (expected, {})
        assert self.run_get(graph, ["numbers", "pair"]) == [[1, 2, 3], (1, "two")]

    def test_classic_arguments_that_are_not_keys_are_literals(self) -> None:
        graph = {"a": "x", "b": (add, "a", "-suffix"), "c": (collect, "nowhere", ("no", 0), 1.5, b"a")}
        assert self.run_get(graph, "b") == "x-suffix"
        assert self.run_get(graph, "c") == (("nowhere", ("no", 0), 1.5, b"a"), {})

    def test_classic_aliases(self) -> None:
        graph = {"a": 1, "b": "a", "c": "b", ("t", 0): (inc, "c"), "d": ("t", 0), "e": (inc, "d")}
        assert self.run_get(graph, ["b", "c", "d", "e"]) == [1, 1, 2, 3]

    # -- the Task / Ref spec -------------------------------------------------------------------
    def test_refs_nested_in_containers_and_kwargs(self) -> None:
        graph = {
            "a": 1,
            ("b", 0): Task(inc, Ref("a")),
            "out": Task(
                collect,
                [Ref("a"), [Ref(("b", 0))]],
                (Ref("a"), "a"),
                {"k": Ref(("b", 0)), "lit": "a"},
                key=Ref("a"),
                many=[{"deep": (Ref(("b", 0)),)}],
            ),
        }
        args, kwargs = self.run_get(graph, "out")
        assert args == ([1, [2]], (1, "a"), {"k": 2, "lit": "a"})
        assert kwargs == {"key": 1, "many": [{"deep": (2,)}]}

    def test_task_nested_in_task_arguments(self) -> None:
        graph = {"a": 2, "out": Task(add, Task(mul, Ref("a"), 10), Task(inc, Task(inc, Ref("a"))))}
        assert self.run_get(graph, "out") == 24

    def test_ref_value_is_an_alias(self) -> None:
        graph = {"a": Task(inc, 1), "b": Ref("a"), "c": Task(inc, Ref("b"))}
        assert self.run_get(graph, ["b", "c"]) == [2, 3]

    def test_task_and_classic_specs_mix_in_one_graph(self) -> None:
        graph = {"a": 1, "b": (inc, "a"), "c": Task(add, Ref("a"), Ref("b")), "d": (mul, "c", "b")}
        assert self.run_get(graph, "d") == 6

    # -- results take the shape of the keys ------------------------------------------------------
    def test_results_take_the_shape_of_keys(self) -> None:
        graph = {"x": 1, "y": (inc, "x"), "z": (inc, "y")}
        assert self.run_get(graph, [["x", "y"], "z"]) == [[1, 2], 3]
        assert self.run_get(graph, [[["z"]], [], ["x"]]) == [[[3]], [], [1]]
        assert self.run_get(graph, "y") == 2
        assert self.run_get(graph, ["y"]) == [2]

    def test_tuple_key_is_a_key_not_a_list(self) -> None:
        graph = {("x", 0): 1, ("x", 1): (inc, ("x", 0)), "x": "not a tuple key"}
        assert self.run_get(graph, ("x", 1)) == 2
        assert self.run_get(graph, [("x", 0), [("x", 1)]]) == [1, [2]]

    def test_duplicate_keys_are_computed_once(self, taskloom_journal: Any) -> None:
        graph = {
            "x": Task(recorded, taskloom_journal, "x", 1),
            "y": Task(recorded, taskloom_journal, "y", 2, Ref("x")),
        }
        assert self.run_get(graph, ["x", "x", ["x", "y"], "y"]) == [1, 1, [1, 2], 2]
        assert sorted(taskloom_journal.events()) == ["x", "y"]

    # -- delayed ---------------------------------------------------------------------------------
    def test_delayed_functions(self) -> None:
        d_inc, d_add = delayed(inc), delayed(add)
        x = d_inc(1)
        y = d_add(x, d_inc(x))
        assert y.compute(**self.options()) == 5
        assert self.run_compute(x, y) == (2, 5)

    def test_delayed_attributes_and_methods(self) -> None:
        p = delayed(Point)(3, 4)
        text = delayed("a,b,c")
        assert self.run_compute(p.x, p.norm2(), p.scaled(delayed(2)).y, text.split(",")) == (
            3,
            25,
            8,
            ["a", "b", "c"],
        )

    def test_delayed_call_on_a_delayed_value(self) -> None:
        adder = delayed(make_adder)(10)
        assert adder(5).compute(**self.options()) == 15
        assert adder(delayed(inc)(1)).compute(**self.options()) == 12

    def test_delayed_pure_calls_share_one_task(self, taskloom_journal: Any) -> None:
        pure = delayed(recorded, pure=True)
        a, b = pure(taskloom_journal, "p", 1), pure(taskloom_journal, "p", 1)
        c = delayed(recorded)(taskloom_journal, "q", 2, pure=True)
        d = delayed(recorded)(taskloom_journal, "q", 2, pure=True)
        assert a.key == b.key and c.key == d.key
        assert self.run_compute(a, b, c, d) == (1, 1, 2, 2)
        assert taskloom_journal.count("p") == 1
        assert taskloom_journal.count("q") == 1

    def test_delayed_impure_calls_run_separately(self, taskloom_journal: Any) -> None:
        impure = delayed(recorded)
        a, b = impure(taskloom_journal, "i", 1), impure(taskloom_journal, "i", 1)
        assert a.key != b.key
        assert self.run_compute(a, b) == (1, 1)
        assert taskloom_journal.count("i") == 2

    def test_delayed_names_and_key_names(self) -> None:
        one = delayed(1, name="one")
        total = delayed(add, name="adder")(one, 2)
        custom = delayed(add)(one, 3, taskloom_key_name="custom")
        part = delayed(add)(total, custom, taskloom_key_name=("part", 0))
        assert one.key == "one" and str(total.key).startswith("adder") and custom.key == "custom"
        assert part.key == ("part", 0)
        assert self.run_compute(one, total, custom, part) == (1, 3, 4, 7)

    def test_delayed_nout_unpacks(self) -> None:
        quotient, remainder = delayed(divmod, nout=2)(17, 5)
        assert self.run_compute(quotient, remainder) == (3, 2)
        first, second = delayed((inc, "not a task"), nout=2)
        assert self.run_compute(first, second) == (inc, "not a task")

    def test_delayed_operators(self) -> None:
        a, b = delayed(7), delayed(3)
        expressions = [
            a + b, a - b, a * b, a / b, a // b, a % b, a**2, 2 - a, 10 // a, -a, +a, abs(-a), ~a,
            a & b, a | b, a ^ b, a << 1, a >> 1, a < b, a <= b, a > b, a >= b,
            delayed([1, 2, 3])[1], delayed({"k": 5})["k"], (a + 1) * (b - 1),
        ]  # fmt: skip
        expected = [
            10, 4, 21, 7 / 3, 2, 1, 49, -5, 1, -7, 7, 7, -8, 3, 7, 4, 14, 3, False, False, True, True,
            2, 5, 16,
        ]  # fmt: skip
        assert list(self.run_compute(*expressions)) == expected

    def test_delayed_holding_containers_of_delayed(self) -> None:
        x = delayed(inc)(1)
        box = delayed([x, (x, 5), {"k": x}, {x}])
        assert box.compute(**self.options()) == [2, (2, 5), {"k": 2}, {2}]
        assert delayed(collect)([x, [x]], k={"v": x}).compute(**self.options()) == (
            ([2, [2]],),
            {"k": {"v": 2}},
        )
        assert self.run_compute([x, {"k": x}], 5) == ([2, {"k": 2}], 5)

    # -- compute and persist ---------------------------------------------------------------------
    def test_compute_shares_common_tasks(self, taskloom_journal: Any) -> None:
        shared = delayed(recorded)(taskloom_journal, "shared", 10)
        a = delayed(inc)(shared)
        b = delayed(mul)(shared, 2)
        assert self.run_compute(a, b) == (11, 20)
        assert taskloom_journal.count("shared") == 1

    def test_compute_returns_non_collections_unchanged(self) -> None:
        x = delayed(inc)(1)
        assert self.run_compute(x, 5, "text") == (2, 5, "text")
        assert self.run_compute() == ()

    def test_persist_keeps_values_without_recomputing(self, taskloom_journal: Any) -> None:
        x = delayed(recorded)(taskloom_journal, "x", 5)
        y = x + 1
        (persisted,) = self.run_persist(y)
        assert taskloom_journal.count("x") == 1
        assert persisted.key == y.key
        assert persisted.compute(**self.options()) == 6
        assert (persisted * 2).compute(**self.options()) == 12
        assert x.persist(**self.options()).compute(**self.options()) == 5
        assert taskloom_journal.count("x") == 2  # once for y, once for x.persist()

    # -- bad graphs fail before anything runs -----------------------------------------------------
    def test_cycle_fails_before_any_task_runs(self, taskloom_journal: Any) -> None:
        graph = {
            "free": Task(recorded, taskloom_journal, "free", 0),
            "a": Task(recorded, taskloom_journal, "a", 1, Ref("b")),
            "b": Task(recorded, taskloom_journal, "b", 2, Ref("c")),
            "c": Task(recorded, taskloom_journal, "c", 3, Ref("a")),
            "out": Task(recorded, taskloom_journal, "out", 4, Ref("a")),
        }
        with pytest.raises(CycleError) as info:
            self.run_get(graph, ["free", "out"])
        assert sorted(info.value.keys) == ["a", "b", "c"]
        assert all(repr(k) in str(info.value) for k in "abc")
        assert taskloom_journal.events() == []

    def test_self_reference_is_a_cycle(self, taskloom_journal: Any) -> None:
        graph = {"free": Task(recorded, taskloom_journal, "free", 0), ("s", 0): (inc, ("s", 0))}
        with pytest.raises(CycleError) as info:
            self.run_get(graph, ["free", ("s", 0)])
        assert info.value.keys == [("s", 0)]
        assert taskloom_journal.events() == []

    def test_ref_to_missing_key_fails_before_any_task_runs(self, taskloom_journal: Any) -> None:
        graph = {
            "free": Task(recorded, taskloom_journal, "free", 0),
            "a": Task(recorded, taskloom_journal, "a", 1, [Ref("ghost")]),
        }
        with pytest.raises(MissingDependencyError) as info:
            self.run_get(graph, ["free", "a"])
        assert isinstance(info.value, GraphError)
        assert "'ghost'" in str(info.value) and "'a'" in str(info.value)
        assert taskloom_journal.events() == []

    def test_requested_key_missing_fails_before_any_task_runs(self, taskloom_journal: Any) -> None:
        graph = {"free": Task(recorded, taskloom_journal, "free", 0)}
        with pytest.raises(KeysNotFoundError) as info:
            self.run_get(graph, ["free", ["nowhere", ("no", 1)]])
        assert info.value.keys == ["nowhere", ("no", 1)]
        assert "'nowhere'" in str(info.value)
        assert isinstance(info.value, KeyError)
        assert taskloom_journal.events() == []

    # -- a task's exception ------------------------------------------------------------------------
    def test_task_exception_reaches_the_caller_unchanged(self) -> None:
        raised: list[BaseException] = []
        graph = {"a": (inc, 1), "explode-1": Task(failing_task, raised, "boom", Ref("a"))}
        with pytest.raises(TaskFailure) as info:
            self.run_get(graph, "explode-1")
        assert type(info.value) is TaskFailure
        assert info.value.args == ("boom",)
        if self.in_process:
            assert info.value is raised[0]

    def test_task_exception_names_the_failing_key(self) -> None:
        graph = {("explode", 7): Task(failing_task, [], "boom")}
        with pytest.raises(TaskFailure) as info:
            self.run_get(graph, ("explode", 7))
        assert repr(("explode", 7)) in _note_text(info.value)

    def test_task_exception_traceback_shows_the_task(self) -> None:
        graph = {"explode": Task(failing_task, [], "boom")}
        with pytest.raises(TaskFailure) as info:
            self.run_get(graph, "explode")
        if self.in_process:
            names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
            assert "failing_task" in names
        else:  # a remote traceback travels as text (e.g. in __cause__)
            assert "failing_task" in "".join(traceback.format_exception(info.value))

    def test_tasks_after_a_failure_do_not_run(self, taskloom_journal: Any) -> None:
        graph = {
            "a": Task(recorded, taskloom_journal, "a", 1),
            "b": Task(failing_task, [], "boom", Ref("a")),
            "c": Task(recorded, taskloom_journal, "c", 3, Ref("b")),
            "d": Task(recorded, taskloom_journal, "d", 4, Ref("c")),
        }
        with pytest.raises(TaskFailure):
            self.run_get(graph, "d")
        assert taskloom_journal.events() == ["a"]

    def test_scheduler_works_again_after_a_failure(self) -> None:
        with pytest.raises(TaskFailure):
            self.run_get({"x": Task(failing_task, [], "boom")}, "x")
        assert self.run_get({"x": 1, "y": (inc, "x")}, "y") == 2

    # -- diagnostics hooks ---------------------------------------------------------------------------
    def test_diagnostics_hooks_fire_for_every_task(self) -> None:
        graph = {
            "a": Task(inc, 1),
            "b": Task(inc, Ref("a")),
            "c": Task(add, Ref("a"), Ref("b")),
            "d": (inc, "c"),
        }
        recorder = HookRecorder()
        taskloom.plugins.register(recorder)
        try:
            assert self.run_get(graph, ["d", "b"]) == [6, 3]
        finally:
            taskloom.plugins.unregister(recorder)
        events = recorder.events
        assert events[0][:2] == ("compute_start", ["d", "b"])
        assert isinstance(events[0][2], str)
        assert events[-1] == ("compute_finish", ["d", "b"], None)
        starts = [e[1] for e in recorder.of("task_start")]
        finishes = [e[1] for e in recorder.of("task_finish")]
        assert sorted(starts) == sorted(finishes) == ["a", "b", "c", "d"]
        for key in graph:  # each task starts before it finishes
            start = next(i for i, e in enumerate(events) if e[:2] == ("task_start", key))
            finish = next(i for i, e in enumerate(events) if e[:2] == ("task_finish", key))
            assert start < finish
        for _, _, worker, duration, error in recorder.of("task_finish"):
            assert isinstance(worker, str) and duration >= 0 and error is None
        count = len(events)
        self.run_get(graph, "d")  # unregistered: nothing more is recorded
        assert len(recorder.events) == count

    def test_diagnostics_hooks_report_a_task_error(self) -> None:
        graph = {"ok": Task(inc, 1), "bad": Task(failing_task, [], "boom", Ref("ok"))}
        recorder = HookRecorder()
        taskloom.plugins.register(recorder)
        try:
            with pytest.raises(TaskFailure):
                self.run_get(graph, "bad")
        finally:
            taskloom.plugins.unregister(recorder)
        finished = {e[1]: e[4] for e in recorder.of("task_finish")}
        assert finished["ok"] is None
        assert type(finished["bad"]) is TaskFailure
        (end,) = recorder.of("compute_finish")
        assert type(end[2]) is TaskFailure

    def test_cache_profiler_records_result_sizes(self) -> None:
        from taskloom.diagnostics import CacheProfiler

        graph = {"blob": Task(bytes, 200_000), "size": Task(len, Ref("blob")), "n": (inc, "size")}
        with CacheProfiler() as prof:
            assert self.run_get(graph, "n") == 200_001
        sizes = {r.key: r.nbytes for r in prof.results}
        assert set(sizes) == {"blob", "size", "n"}
        assert 200_000 <= sizes["blob"] < 220_000  # in memory or pickled: the payload dominates
        assert 0 < sizes["size"] < 1_000
        assert max(n for _, n in prof.occupancy("nbytes")) >= 200_000

    # -- size and memory ---------------------------------------------------------------------------
    def test_long_chain(self) -> None:
        graph: dict[Any, Any] = {("chain", 0): 0}
        for i in range(1, 2001):
            graph["chain", i] = (inc, ("chain", i - 1))
        assert self.run_get(graph, ("chain", 2000)) == 2000
        assert self.run_get(graph, [("chain", 1000), ("chain", 1)]) == [1000, 1]

    def test_wide_tree_reduction(self) -> None:
        graph, root, depth = tree_graph(4096, inc, add)
        assert depth == 12
        assert self.run_get(graph, root) == 4096 * 4097 // 2

    def test_tree_reduction_holds_few_intermediates(self) -> None:
        if not self.max_live_intermediates_check:
            pytest.skip("this scheduler keeps results out of this process")
        counter = LiveCounter()
        graph, root, depth = tree_graph(256, counter.leaf, counter.combine)
        result = self.run_get(graph, root, num_workers=1)
        assert result.value == 255 * 256 // 2
        assert counter.peak <= 2 * depth + 2, f"{counter.peak} intermediates alive at once"

    def test_worker_count_does_not_change_results(self) -> None:
        graph, root, _ = tree_graph(64, inc, add)
        graph.update({("sq", i): (mul, ("tree", 0, i), ("tree", 0, i)) for i in range(64)})
        keys = [root, [("sq", i) for i in range(64)]]
        expected = [64 * 65 // 2, [(i + 1) ** 2 for i in range(64)]]
        assert self.run_get(graph, keys, num_workers=1) == expected
        assert self.run_get(graph, keys, num_workers=4) == expected

    # -- degenerate graphs ---------------------------------------------------------------------------
    def test_empty_key_list(self) -> None:
        assert self.run_get({"a": (inc, 1)}, []) == []
        assert self.run_get({}, []) == []
        assert self.run_get({"a": 1}, [[], []]) == [[], []]

    def test_graph_of_literals_only(self) -> None:
        graph = {"a": 1, "b": [1, 2], "c": "text", ("t", 0): None, "d": {"k": 3}, 4: 4.5}
        assert self.run_get(graph, ["a", "b", "c", ("t", 0), "d", 4]) == [
            1,
            [1, 2],
            "text",
            None,
            {"k": 3},
            4.5,
        ]
