"""The graph spec (``Task``, ``Ref``, the classic tuple spec, key shapes) and the planner."""

from __future__ import annotations

import operator
import pickle
from typing import Any

import pytest
from taskloom import CycleError, GraphError, KeysNotFoundError, MissingDependencyError, Ref, Task
from taskloom.graph import convert_graph, flatten_keys, pack_results, to_task
from taskloom.order import plan


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def collect(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
    return args, kwargs


def run(task: Task, **data: Any) -> Any:
    return task(data)


# -- Task and Ref --------------------------------------------------------------------------


def test_ref_equality_hash_and_repr() -> None:
    assert Ref("a") == Ref("a") and Ref(("x", 1)) == Ref(("x", 1))
    assert Ref("a") != Ref("b") and Ref("a") != "a"
    assert len({Ref("a"), Ref("a"), Ref("b")}) == 2
    assert repr(Ref(("x", 1))) == "Ref(('x', 1))"


def test_task_dependencies_in_order_without_repeats() -> None:
    task = Task(
        collect, Ref("b"), [Ref("a"), {"k": Ref("b")}], (Ref("c"),), x=Task(inc, Ref("d")), y=Ref("a")
    )
    assert task.dependencies == ("b", "a", "c", "d")
    assert Task(inc, 1).dependencies == ()
    assert Task(add, Ref("a"), Ref("a")).dependencies == ("a",)


def test_task_fills_refs_nested_anywhere() -> None:
    task = Task(
        collect, Ref("a"), [Ref("a"), [Ref("b")]], (Ref("b"), "a"), {"k": Ref("a")}, {Ref("a")},
        kw=Task(add, Ref("a"), Ref("b")), lit="b",
    )  # fmt: skip
    args, kwargs = run(task, a=1, b=2)
    assert args == (1, [1, [2]], (2, "a"), {"k": 1}, {1})
    assert kwargs == {"kw": 3, "lit": "b"}


def test_task_without_refs_calls_with_its_literals() -> None:
    assert run(Task(add, 1, 2)) == 3
    assert run(Task(collect, "a", k="b")) == (("a",), {"k": "b"})
    assert run(Task(dict)) == {}


def test_task_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        Task("not callable", 1)  # type: ignore[arg-type]


def test_task_equality_repr_and_pickle() -> None:
    task = Task(add, Ref("a"), 2)
    assert task == Task(add, Ref("a"), 2)
    assert task != Task(add, Ref("a"), 3)
    assert repr(task) == "Task(add, Ref('a'), 2)"
    copy = pickle.loads(pickle.dumps(task))
    assert copy == task and copy.dependencies == ("a",)
    assert run(copy, a=1) == 3


# -- the classic tuple spec ----------------------------------------------------------------


def test_to_task_converts_keys_in_arguments_to_refs() -> None:
    graph = {"a": 1, ("x", 0): 2, "t": (add, "a", ("x", 0))}
    assert to_task(graph["t"], graph) == Task(add, Ref("a"), Ref(("x", 0)))


def test_to_task_leaves_non_keys_literal() -> None:
    graph = {"a": 1, "t": (collect, "b", ("a", 0), 1, b"a", 1.5, None)}
    assert to_task(graph["t"], graph) == Task(collect, "b", ("a", 0), 1, b"a", 1.5, None)


def test_to_task_converts_nested_tasks_and_lists() -> None:
    graph = {"a": 1, "t": (add, (inc, "a"), (sum, ["a", ["a"], (inc, "a")]))}
    task = to_task(graph["t"], graph)
    assert task == Task(add, Task(inc, Ref("a")), Task(sum, [Ref("a"), [Ref("a")], Task(inc, Ref("a"))]))
    assert task.dependencies == ("a",)


def test_to_task_literals_come_back_unchanged() -> None:
    graph: dict[Any, Any] = {"a": 1}
    for value in [1, "text", None, (1, 2), ("b", [1]), [1, "b"], {"k": "b"}, b"x", 2.5]:
        assert to_task(value, graph) is value


def test_to_task_makes_aliases_identity_tasks() -> None:
    graph = {"a": 1, ("x", 0): 2, 3: 3.0}
    for value, target in [("a", "a"), (("x", 0), ("x", 0)), (3, 3), (Ref("a"), "a")]:
        task = to_task(value, graph)
        assert isinstance(task, Task) and task.dependencies == (target,)
        assert task({target: "value"}) == "value"


def test_to_task_evaluates_lists_and_dicts_that_hold_keys() -> None:
    graph = {"a": 1, "b": 2}
    task = to_task(["a", ["b", 3]], graph)
    assert isinstance(task, Task) and task({"a": 1, "b": 2}) == [1, [2, 3]]


def test_to_task_keeps_task_objects() -> None:
    task = Task(inc, Ref("a"))
    assert to_task(task, {"a": 1}) is task


def test_convert_graph_converts_every_value() -> None:
    graph = {"a": 1, "b": (inc, "a"), "c": "b", "d": Task(add, Ref("a"), 1)}
    assert convert_graph(graph) == {
        "a": 1,
        "b": Task(inc, Ref("a")),
        "c": to_task("b", graph),
        "d": Task(add, Ref("a"), 1),
    }


# -- keys and result shapes ----------------------------------------------------------------


def test_flatten_keys() -> None:
    assert flatten_keys("a") == ["a"]
    assert flatten_keys(("x", 0)) == [("x", 0)]
    assert flatten_keys(["a", ["b", [("x", 0)]], [], "a"]) == ["a", "b", ("x", 0), "a"]
    assert flatten_keys([]) == []


def test_pack_results_takes_the_shape_of_keys() -> None:
    results = {"a": 1, "b": 2, ("x", 0): 3}
    assert pack_results("a", results) == 1
    assert pack_results(("x", 0), results) == 3
    assert pack_results(["a", ["b", [("x", 0)]], []], results) == [1, [2, [3]], []]


# -- the planner ---------------------------------------------------------------------------


def tree(leaves: int) -> tuple[dict[Any, Any], Any]:
    graph: dict[Any, Any] = {("leaf", i): (inc, i) for i in range(leaves)}
    level: list[Any] = [("leaf", i) for i in range(leaves)]
    depth = 0
    while len(level) > 1:
        depth += 1
        upper = [("sum", depth, j) for j in range(len(level) // 2)]
        for j, key in enumerate(upper):
            graph[key] = (add, level[2 * j], level[2 * j + 1])
        level = upper
    return graph, level[0]


def test_plan_orders_a_tree_depth_first_leaves_pairwise() -> None:
    graph, root = tree(8)
    order = plan(graph, [root]).order
    leaf = [("leaf", i) for i in range(8)]
    assert order == [
        leaf[0], leaf[1], ("sum", 1, 0), leaf[2], leaf[3], ("sum", 1, 1), ("sum", 2, 0),
        leaf[4], leaf[5], ("sum", 1, 2), leaf[6], leaf[7], ("sum", 1, 3), ("sum", 2, 1),
        ("sum", 3, 0),
    ]  # fmt: skip


def test_plan_is_a_post_order_of_the_requested_keys() -> None:
    graph = {"a": (inc, 1), "b": (inc, "a"), "c": (inc, 2), "d": (add, "b", "c")}
    assert plan(graph, ["d"]).order == ["a", "b", "c", "d"]
    assert plan(graph, ["c", "d"]).order == ["c", "a", "b", "d"]


def test_plan_culls_what_the_keys_do_not_need() -> None:
    graph = {"a": 1, "b": (inc, "a"), "unused": (inc, "b"), "lonely": 5, "c": (add, "a", "b")}
    p = plan(graph, ["c"])
    assert p.order == ["b", "c"]
    assert set(p.tasks) == {"b", "c"}
    assert p.literals == {"a": 1}


def test_plan_counts_references() -> None:
    graph = {"a": 1, "b": (inc, "a"), "c": (add, "a", "b")}
    p = plan(graph, ["c", "c"])
    assert p.refcount == {"a": 2, "b": 1, "c": 2}


def test_cycle_of_three_names_the_whole_cycle_in_order() -> None:
    graph = {"a": (inc, "b"), "b": (inc, "c"), "c": (inc, "a"), "out": (inc, "a")}
    with pytest.raises(CycleError) as info:
        plan(graph, ["out"])
    keys = info.value.keys
    assert sorted(keys) == ["a", "b", "c"]
    start = keys.index("a")
    assert keys[start:] + keys[:start] == ["a", "b", "c"]  # a needs b needs c needs a
    assert "'a' -> 'b' -> 'c' -> 'a'" in str(info.value)
    assert isinstance(info.value, GraphError)


def test_self_loop_is_a_cycle_of_one() -> None:
    with pytest.raises(CycleError) as info:
        plan({"a": Task(inc, Ref("a"))}, ["a"])
    assert info.value.keys == ["a"]
    assert "'a' -> 'a'" in str(info.value)


def test_cycle_below_the_requested_key_names_only_the_cycle() -> None:
    graph = {"top": (inc, "x"), "x": (inc, ("y", 1)), ("y", 1): (inc, "x"), "other": (inc, 1)}
    with pytest.raises(CycleError) as info:
        plan(graph, ["other", "top"])
    assert sorted(map(repr, info.value.keys)) == sorted(["'x'", "('y', 1)"])


def test_missing_dependency_names_both_keys() -> None:
    with pytest.raises(MissingDependencyError) as info:
        plan({"a": Task(inc, Ref("ghost"))}, ["a"])
    assert info.value.key == "ghost" and info.value.dependent == "a"
    assert str(info.value) == "task 'a' depends on 'ghost', which is not in the graph"
    assert isinstance(info.value, KeyError)


def test_missing_requested_keys_are_all_named() -> None:
    with pytest.raises(KeysNotFoundError) as info:
        plan({"a": 1}, ["a", "b", ("c", 0)])
    assert info.value.keys == ["b", ("c", 0)]
    assert str(info.value) == "requested keys not in the graph: 'b', ('c', 0)"


def test_unhashable_requested_key_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="hashable"):
        plan({"a": 1}, [["a"]])  # type: ignore[list-item]


def test_plan_of_a_long_chain_does_not_recurse() -> None:
    graph: dict[Any, Any] = {("c", 0): 0}
    for i in range(1, 50_000):
        graph["c", i] = (operator.add, ("c", i - 1), 1)
    p = plan(graph, [("c", 49_999)])
    assert len(p.order) == 49_999 and p.order[0] == ("c", 1)


def test_plan_compiles_a_list_of_keys_argument_to_the_equivalent_task() -> None:
    graph = {("x", i): (inc, i) for i in range(3)}
    graph["total"] = (collect, [("x", 0), ("x", 1), ("x", 2)], "tail")
    p = plan(graph, ["total"])
    task = p.tasks["total"]
    expected = Task(collect, [Ref(("x", 0)), Ref(("x", 1)), Ref(("x", 2))], "tail")
    assert task == expected and repr(task) == repr(expected)
    assert task.dependencies == (("x", 0), ("x", 1), ("x", 2))
    assert task({("x", 0): 1, ("x", 1): 2, ("x", 2): 3}) == (([1, 2, 3], "tail"), {})
    assert pickle.loads(pickle.dumps(task)) == expected


def test_lists_mixing_keys_and_literals_or_tasks_keep_the_classic_meaning() -> None:
    graph: dict[Any, Any] = {"a": 1, "b": 2}
    graph["mixed"] = (collect, ["a", 5, "nokey"])
    graph["nested"] = (collect, ["a", (inc, "b"), ["b"]])
    p = plan(graph, ["mixed", "nested"])
    assert p.tasks["mixed"]({"a": 1}) == ((([1, 5, "nokey"]),), {})
    assert p.tasks["nested"]({"a": 1, "b": 2}) == ((([1, 3, [2]]),), {})


def test_compiled_tasks_travel_as_their_general_form() -> None:
    from taskloom.graph import from_wire, to_wire

    graph = {"a": (inc, 1), "b": (inc, 2), "s": (collect, ["a", "b"], "a")}
    task = plan(graph, ["s"]).tasks["s"]
    rebuilt = from_wire(task.func, *to_wire(task))
    assert rebuilt({"a": 2, "b": 3}) == (([2, 3], 2), {})


def test_a_compiled_classic_task_pickles_compactly_and_comes_back_whole() -> None:
    graph = {("x", 0): (inc, 1), "b": (operator.add, ("x", 0), 10), "s": (collect, ["b"], ("x", 0))}
    p = plan(graph, ["s"])
    task = p.tasks["b"]
    back = pickle.loads(pickle.dumps(task))
    assert back == task and back.dependencies == (("x", 0),)
    assert back({("x", 0): 2}) == 12
    assert b"Ref" not in pickle.dumps(task)  # keys travel as they are, no Ref per key
    gather = pickle.loads(pickle.dumps(p.tasks["s"]))
    assert gather({"b": 5, ("x", 0): 2}) == (([5], 2), {})


def test_a_task_with_another_function_or_renamed_keys_keeps_its_kind_and_meaning() -> None:
    graph: dict[Any, Any] = {"a": (inc, 1), "b": (collect, "a", "lit"), "s": (collect, ["a", "b"], "a")}
    graph["t"] = Task(collect, Ref("a"), [Ref("b")], k=Ref("a"))
    p = plan(graph, ["s", "t"])
    names = {"a": ("p", "a"), "b": ("p", "b")}
    data = {("p", "a"): 2, ("p", "b"): 3}
    for key in ("b", "s", "t"):
        task = p.tasks[key]
        assert task.with_func(tuple).dependencies == task.dependencies
        renamed = task.renamed(names)
        assert set(renamed.dependencies) == {names[d] for d in task.dependencies}
        assert renamed(data) == task({"a": 2, "b": 3})
    assert p.tasks["b"].with_func(operator.concat)({"a": "2"}) == "2lit"  # "lit" stays a literal
    assert p.tasks["b"].renamed(names).args == (("p", "a"), "lit")
