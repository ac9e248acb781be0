"""Dask graph -> taskloom graph: every task-spec node type, the classic spec, and Dask's meaning.

Each graph is checked two ways: the converted graph computes what Dask's own synchronous
scheduler computes, and where the translation is fixed, it has the expected shape.
"""

from __future__ import annotations

import operator
from collections import OrderedDict, namedtuple
from typing import Any

import dask
import pytest
import taskloom
from dask._task_spec import Alias, DataNode, Dict, List, Set, TaskRef, Tuple
from dask._task_spec import Task as DaskTask
from dask.highlevelgraph import HighLevelGraph
from dask.local import get_sync
from taskloom import Ref, Task
from taskloom_dask.convert import convert, quote

Point = namedtuple("Point", ["x", "y"])


def inc(x: int) -> int:
    return x + 1


def collect(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
    return (args, kwargs)


def same_as_dask(dsk: Any, keys: Any) -> Any:
    """Compute ``keys`` with taskloom (sync) and with Dask; assert equal, return the value."""
    ours = taskloom_get(dsk, keys)
    theirs = get_sync(dsk, keys)
    assert ours == theirs
    return ours


def taskloom_get(dsk: Any, keys: Any) -> Any:
    import taskloom_dask

    return taskloom_dask.get(dsk, keys, scheduler="sync")


# -- the current task spec ------------------------------------------------------------------------


def test_task_with_task_refs_becomes_task_with_refs() -> None:
    dsk = {"a": DataNode("a", 1), "b": DaskTask("b", operator.add, TaskRef("a"), 10)}
    graph = convert(dsk)
    assert graph == {"a": 1, "b": Task(operator.add, Ref("a"), 10)}
    assert same_as_dask(dsk, "b") == 11


def test_task_kwargs_and_nested_tasks() -> None:
    dsk = {
        "a": DataNode("a", 2),
        "out": DaskTask(
            "out", collect, DaskTask(None, inc, TaskRef("a")), key=TaskRef("a"), inner=DaskTask(None, inc, 5)
        ),
    }
    graph = convert(dsk)
    assert graph["out"] == Task(collect, Task(inc, Ref("a")), key=Ref("a"), inner=Task(inc, 5))
    assert same_as_dask(dsk, "out") == ((3,), {"key": 2, "inner": 6})


def test_alias_becomes_ref_and_self_alias_is_dropped() -> None:
    dsk = {("x", 0): DataNode(("x", 0), 5), "y": Alias("y", ("x", 0)), "z": Alias("z")}
    graph = convert(dsk)
    assert graph == {("x", 0): 5, "y": Ref(("x", 0))}
    assert same_as_dask({k: v for k, v in dsk.items() if k != "z"}, ["y", ("x", 0)]) == (5, 5)


def test_alias_inside_arguments_is_its_target() -> None:
    dsk = {"a": DataNode("a", 1), "b": DaskTask("b", inc, Alias("a"))}
    assert convert(dsk)["b"] == Task(inc, Ref("a"))
    assert same_as_dask(dsk, "b") == 2


def test_data_node_stays_data_even_when_it_looks_like_a_task_or_key() -> None:
    dsk = {
        "a": DataNode("a", 1),
        "looks-like-key": DataNode("looks-like-key", "a"),
        "looks-like-task": DataNode("looks-like-task", (inc, 1)),
        "list-of-keys": DataNode("list-of-keys", ["a", "a"]),
        "dict": DataNode("dict", {"k": "a"}),
        "arg": DaskTask("arg", collect, DataNode(None, (inc, "a"))),
    }
    graph = convert(dsk)
    assert graph["looks-like-key"] == Task(quote, "a")
    assert graph["a"] == 1
    keys = ["looks-like-key", "looks-like-task", "list-of-keys", "dict", "arg"]
    assert same_as_dask(dsk, keys) == ("a", (inc, 1), ["a", "a"], {"k": "a"}, (((inc, "a"),), {}))


def test_list_tuple_dict_set_containers() -> None:
    dsk = {
        "a": DataNode("a", 1),
        "b": DaskTask("b", inc, TaskRef("a")),
        "list": List(TaskRef("a"), DaskTask(None, inc, TaskRef("b")), "lit"),
        "tuple": DaskTask("tuple", collect, Tuple(TaskRef("a"), 5)),
        "dict": DaskTask("dict", collect, Dict(k=TaskRef("b"), lit="a")),
        "set": DaskTask("set", sorted, Set(TaskRef("a"), TaskRef("b"), 7)),
        "nested": DaskTask("nested", collect, List(List(TaskRef("a")), Dict({"d": List(TaskRef("b"))}))),
    }
    graph = convert(dsk)
    assert graph["tuple"] == Task(collect, (Ref("a"), 5))
    assert graph["dict"] == Task(collect, {"k": Ref("b"), "lit": "a"})
    assert type(graph["list"]) is Task  # a container at the top is a task that builds it
    assert same_as_dask(dsk, ["list", "tuple", "dict", "set", "nested"]) == (
        [1, 3, "lit"],
        (((1, 5),), {}),
        (({"k": 2, "lit": "a"},), {}),
        [1, 2, 7],
        (([[1], {"d": [2]}],), {}),
    )


def test_dict_with_computed_keys() -> None:
    dsk = {"a": DataNode("a", "key"), "out": DaskTask("out", collect, Dict([(TaskRef("a"), 1)]))}
    assert same_as_dask(dsk, "out") == (({"key": 1},), {})


def test_plain_containers_in_task_arguments_are_data() -> None:
    """Dask evaluates only task-spec nodes among arguments: a TaskRef inside a plain list is data."""
    ref = TaskRef("a")
    dsk = {"a": DataNode("a", 1), "out": DaskTask("out", collect, [ref, "a"], {"k": ref})}
    assert same_as_dask(dsk, "out") == (([ref, "a"], {"k": ref}), {})


def test_unknown_graph_node_runs_through_its_own_call() -> None:
    class Twice(DaskTask):  # a node type with its own way of running
        def __call__(self, values: Any = ()) -> Any:
            return 2 * super().__call__(values)

    dsk = {"a": DataNode("a", 3), "b": Twice("b", inc, TaskRef("a"))}
    graph = convert(dsk)
    assert set(graph["b"].dependencies) == {"a"}
    assert taskloom_get(dsk, "b") == 8


def test_fused_subgraph_task() -> None:
    a = DataNode("a", 1)
    b = DaskTask("b", inc, TaskRef("a"))
    c = DaskTask("c", inc, TaskRef("b"))
    dsk = {"a": a, "c": DaskTask.fuse(b, c)}
    assert same_as_dask(dsk, "c") == 3


# -- the classic tuple spec ------------------------------------------------------------------------


def test_classic_task_and_key_arguments() -> None:
    dsk = {"x": 1, "y": (inc, "x"), ("z", 0): (operator.add, "x", "y")}
    graph = convert(dsk)
    assert graph == {"x": 1, "y": Task(inc, Ref("x")), ("z", 0): Task(operator.add, Ref("x"), Ref("y"))}
    assert same_as_dask(dsk, [("z", 0), ["y"]]) == (3, (2,))


def test_classic_nested_tasks_lists_and_aliases() -> None:
    dsk = {
        "a": [1, 2, 3],
        "b": "a",
        "c": [1, (inc, 1)],
        "d": [(sum, "a")],
        "e": ["a", "b"],
        "f": [[[(sum, "a"), "c"], (sum, "b")], 2],
        "g": (collect, (inc, 1), ["a", 3]),
    }
    graph = convert(dsk)
    assert graph["b"] == Ref("a")
    assert same_as_dask(dsk, list(dsk)) == (
        [1, 2, 3],
        [1, 2, 3],
        [1, 2],
        [6],
        [[1, 2, 3], [1, 2, 3]],
        [[[6, [1, 2]], 6], 2],
        ((2, [[1, 2, 3], 3]), {}),
    )


def test_classic_tuples_sets_and_named_tuples_are_evaluated_itemwise() -> None:
    dsk = {
        "a": 1,
        "tuple": (collect, ("a", 2)),
        "set": (sorted, {"a", 5}),
        "frozen": (sorted, frozenset({"a", 6})),
        "point": (collect, Point("a", 3)),
        "literal-point": (collect, Point(7, 8)),
    }
    keys = ["tuple", "set", "frozen", "point", "literal-point"]
    result = same_as_dask(dsk, keys)
    assert result == ((((1, 2),), {}), [1, 5], [1, 6], ((Point(1, 3),), {}), ((Point(7, 8),), {}))
    assert type(result[3][0][0]) is Point


def test_classic_dict_argument_evaluates_only_task_spec_values() -> None:
    dsk = {"a": 1, "out": (collect, {"k": "a", "ref": TaskRef("a"), "t": DaskTask(None, inc, 1)})}
    assert same_as_dask(dsk, "out") == (({"k": "a", "ref": 1, "t": 2},), {})
    od = {"x": 1, "out": (collect, OrderedDict(k=1))}
    assert same_as_dask(od, "out") == (({"k": 1},), {})


def test_classic_unhashable_and_unknown_arguments_are_data() -> None:
    f = lambda x, y: x + len(y)  # noqa: E731
    dsk = {"x": 1, "y": (f, "x", {1}), "z": (collect, ("t", [1]), b"x", 2.5, None)}
    assert same_as_dask(dsk, ["y", "z"]) == (2, ((("t", [1]), b"x", 2.5, None), {}))


def test_classic_numbers_can_be_keys() -> None:
    dsk = {1: 10, 2.5: (inc, 1), "out": (collect, 1, 2.5, 3)}
    assert same_as_dask(dsk, "out") == ((10, 11, 3), {})


def test_classic_self_alias_is_dropped() -> None:
    assert convert({"a": "a", "b": 1}) == {"b": 1}


def test_classic_and_task_spec_mix() -> None:
    dsk = {
        "a": 1,
        "b": DaskTask("b", inc, TaskRef("a")),
        "c": (operator.add, "a", "b"),
        "d": DaskTask("d", operator.mul, TaskRef("c"), TaskRef("b")),
    }
    assert same_as_dask(dsk, "d") == 6


def test_high_level_graph_and_cache() -> None:
    layers: dict[str, Any] = {"a": {"x": 1, "y": (inc, "x")}, "b": {"z": (operator.add, (inc, "x"), "y")}}
    graph = HighLevelGraph(layers, {"a": set(), "b": {"a"}})
    assert same_as_dask(graph, "z") == 4
    assert convert(graph, cache={"y": 100})["y"] == 100
    import taskloom_dask

    assert taskloom_dask.get(graph, "z", scheduler="sync", cache={"y": 100}) == 102


def test_converted_graph_runs_on_taskloom_directly() -> None:
    x = dask.delayed(inc)(1)
    y = dask.delayed(operator.add)(x, 10)
    graph = convert(dict(y.__dask_graph__()))
    assert taskloom.get(graph, y.key, scheduler="sync") == 12


def test_conversion_is_linear_in_graph_size() -> None:
    """Converting 8x the tasks costs about 8x (well under the 64x a quadratic pass would)."""
    import time

    def chain(n: int) -> dict[Any, Any]:
        dsk: dict[Any, Any] = {("x", 0): DataNode(("x", 0), 0)}
        for i in range(1, n):
            dsk["x", i] = DaskTask(("x", i), operator.add, TaskRef(("x", i - 1)), TaskRef(("x", i // 2)))
        return dsk

    def best(dsk: dict[Any, Any]) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            convert(dsk)
            times.append(time.perf_counter() - t0)
        return min(times)

    small, large = chain(5_000), chain(40_000)
    ratio = best(large) / best(small)
    assert ratio < 24, f"8x the tasks took {ratio:.1f}x the time"


def test_missing_dependency_fails_before_running() -> None:
    """A TaskRef to a key not in the graph (in the classic spec a string that is no key is data)."""
    with pytest.raises(taskloom.MissingDependencyError, match="'missing'"):
        taskloom_get({"b": DaskTask("b", inc, TaskRef("missing"))}, "b")
    assert taskloom_get({"b": (collect, "missing")}, "b") == (("missing",), {})
