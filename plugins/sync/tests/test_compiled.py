"""The compiled fast path of the sync scheduler: built, used, and indistinguishable from the Python path."""

from __future__ import annotations

import gc
import importlib.machinery
import random
import shutil
import sysconfig
import traceback
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import taskloom
from taskloom import CycleError, KeysNotFoundError, MissingDependencyError, Ref, Task
from taskloom.bench import workloads
from taskloom.diagnostics import Callback
from taskloom.local import annotate, execute_inline
from taskloom.order import plan
from taskloom.testing import SchedulerConformance
from taskloom_sync import scheduler

pytestmark = pytest.mark.timeout(120)


def has_c_compiler() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    return bool(cc) and shutil.which(cc[0]) is not None


needs_compiled = pytest.mark.skipif(not scheduler.COMPILED, reason="the compiled extension is not installed")


@pytest.fixture(params=[True, False], ids=["compiled", "python"])
def compiled(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Each test twice: with ``sync.compiled`` on (the default) and off."""
    with taskloom.config.set({"sync.compiled": request.param}):
        yield request.param


def sync_get(graph: Any, keys: Any) -> Any:
    return taskloom.get(graph, keys, scheduler="sync")


def on_python_path(graph: Any, keys: Any) -> Any:
    with taskloom.config.set({"sync.compiled": False}):
        return sync_get(graph, keys)


def takes_compiled_path(graph: Any, keys: list[Any]) -> bool:
    """Whether the compiled planner accepts ``graph`` (it runs it if it does)."""
    assert scheduler._fast is not None
    return scheduler._fast.run(graph, keys) is not None


# -- task functions: module level, each call recorded --------------------------------------------

calls: list[tuple[Any, ...]] = []


def op(*args: Any) -> tuple[Any, ...]:
    calls.append(args)
    return ("op", *args)


def op_kw(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
    calls.append((*args, kwargs))
    return ("op_kw", args, kwargs)


def mutate(xs: list[Any]) -> int:
    xs.append("changed")  # a task may change the list it was given: it must be its own
    return len(xs)


@pytest.fixture(autouse=True)
def fresh_calls() -> None:
    calls.clear()


def run_both(graph: Any, keys: Any) -> tuple[Any, list[Any], Any, list[Any]]:
    """Results and calls of the compiled-enabled path, then of the Python path."""
    calls.clear()
    got = sync_get(graph, keys)
    got_calls = list(calls)
    calls.clear()
    ref = on_python_path(graph, keys)
    ref_calls = list(calls)
    calls.clear()
    return got, got_calls, ref, ref_calls


# -- built and used ------------------------------------------------------------------------------


@pytest.mark.skipif(not has_c_compiler(), reason="no C compiler: the pure-Python path is used")
def test_compiled_extension_is_built_and_loaded() -> None:
    assert scheduler.COMPILED
    assert scheduler._fast is not None
    assert scheduler._fast.__file__ is not None
    assert scheduler._fast.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_compiled_is_a_documented_setting_on_by_default() -> None:
    assert taskloom.config.get("sync.compiled") is True
    assert taskloom.config.sources()["sync.compiled"] == "default (taskloom-sync)"
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "`sync.compiled`" in readme and "TASKLOOM_SYNC__COMPILED=False" in readme


@needs_compiled
def test_env_var_turns_the_compiled_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = {"x": 0, "y": (failing, "x")}

    def frames() -> list[str]:
        with pytest.raises(ZeroDivisionError) as info:
            sync_get(graph, "y")
        return [f.filename for f in traceback.extract_tb(info.value.__traceback__)]

    assert any("_fast" in name for name in frames())  # the compiled executor called the task
    monkeypatch.setenv("TASKLOOM_SYNC__COMPILED", "False")
    taskloom.config.refresh()
    try:
        assert taskloom.config.get("sync.compiled") is False
        assert not any("_fast" in name for name in frames())
    finally:
        monkeypatch.delenv("TASKLOOM_SYNC__COMPILED")
        taskloom.config.refresh()


# -- same results as the Python path -------------------------------------------------------------

STANDARD = [w.name for w in workloads.STANDARD]


@pytest.mark.parametrize("name", STANDARD)
def test_standard_workloads_give_the_python_paths_results(name: str, compiled: bool) -> None:
    workload = next(w for w in workloads.STANDARD if w.name == name)
    graph, out = workload.build(workload.quick)
    expected = execute_inline(plan(graph, [out]))[out]
    assert sync_get(graph, out) == expected
    assert sync_get(graph, [out, [out]]) == [expected, [expected]]
    if scheduler.COMPILED:
        assert takes_compiled_path(graph, [out])


class Opaque:
    """A literal argument of a type the planner does not look into."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque)

    __hash__ = object.__hash__


ODD_GRAPHS: dict[str, tuple[dict[Any, Any], Any, bool]] = {
    # name: (graph, keys, takes the compiled path)
    "literals": (
        {"a": 1, "b": [1, 2], "d": {"x": 1}, "c": (op, "a", "b", 5, "zzz", None, 2.5), "e": (op, "c", "d")},
        "e",
        True,
    ),
    "literal arguments of other types": (
        {"a": (op, {1, 2}, frozenset({3}), Opaque(), b"not a key", 1j, ("not", "a", "key"), ())},
        "a",
        True,
    ),
    "unhashable literal in a tuple argument": ({"a": (op, 1), "b": (op, ("x", [1]), "a")}, "b", True),
    "tuple keys": ({("x", 0): (op, 1), ("x", 1): (op, ("x", 0)), "s": (op, [("x", 0), ("x", 1)])}, "s", True),
    "bytes and float keys": ({b"k": (op, 1), 1.5: (op, b"k"), "z": (op, 1.5, b"k", [b"k", 1.5])}, "z", True),
    "int keys and literals equal to keys": ({0: (op, 5), 1: (op, 0), 2: (op, 1, 7, 0)}, 2, True),
    "bool equal to an int key is a reference": ({1: (op, 2), "t": (op, True, False)}, "t", True),
    "float equal to an int key is a reference": ({1: (op, 2), "t": (op, 1.0, [1.0, 1])}, "t", True),
    "lists of keys with repeats": (
        {"a": (op, 1), "b": (op, 2), "c": (op, ["a", "b", "a"], ["b"], [])},
        "c",
        True,
    ),
    "duplicate arguments": ({"a": (op, 1), "b": (op, "a", "a", ["a"])}, "b", True),
    "diamond": ({"a": (op, 1), "b": (op, "a"), "c": (op, "a"), "d": (op, "c", "b")}, "d", True),
    "culling": ({"a": (op, 1), "b": (op, "a"), "unused": (op, "a"), "also unused": (op, 9)}, "b", True),
    "many arguments": (
        {("k", i): (op, -i) for i in range(300)}
        | {"all": (op, *[("k", i) for i in range(300)], [("k", i) for i in range(300)])},
        "all",
        True,
    ),
    "literal output": ({"a": 1, "b": (op, "a")}, ["a", "b"], True),
    "outputs requested twice and nested": (
        {"a": (op, 1), "b": (op, "a")},
        [["b", "a"], "b", ["b", ["a"]]],
        True,
    ),
    "builtin functions and classes": (
        {"x": 1, "y": 2, "a": (sum, ["x", "y"]), "b": (max, "a", "x"), "c": (str, "b")},
        "c",
        True,
    ),
    "a task may change its list argument": (
        {"a": (op, 1), "n": (mutate, ["a", "a"]), "m": (op, "n")},
        "m",
        True,
    ),
    "non-task values": ({"f": len, "e": (), "t": ("x", 1), "c": (op, "f", "e", "t")}, "c", True),
    # the Python path's shapes
    "alias to another key": ({"a": (op, 1), "b": "a", "c": (op, "b")}, "c", False),
    "tuple alias": ({("x", 1): (op, 1), "b": ("x", 1), "c": (op, "b")}, "c", False),
    "Ref alias": ({"a": (op, 1), "b": Ref("a"), "c": (op, "b")}, "c", False),
    "nested task": ({"a": (op, 1), "b": (op, (op, "a"), 2)}, "b", False),
    "list that is not all keys": ({"a": (op, 1), "b": (op, ["a", 3])}, "b", False),
    "list holding a nested task": ({"a": (op, 1), "b": (op, [(op, "a")])}, "b", False),
    "dict argument": ({"a": (op, 1), "b": (op, {"k": "a"})}, "b", False),
    "Ref argument": ({"a": (op, 1), "b": (op, Ref("a"))}, "b", False),
    "kwargs via Task": ({"a": (op, 1), "b": Task(op_kw, Ref("a"), k=2), "c": (op, "b")}, "c", False),
    "list value holding keys": ({"a": (op, 1), "b": ["a", 2], "c": (op, "b")}, "c", False),
}


@pytest.mark.parametrize("name", list(ODD_GRAPHS))
def test_odd_graphs_give_the_python_paths_results_and_calls(name: str, compiled: bool) -> None:
    graph, keys, _ = ODD_GRAPHS[name]
    got, got_calls, ref, ref_calls = run_both(graph, keys)
    assert got == ref
    assert got_calls == ref_calls  # the same tasks, in the same order


@needs_compiled
@pytest.mark.parametrize("name", list(ODD_GRAPHS))
def test_which_graphs_take_the_compiled_path(name: str) -> None:
    graph, keys, expected = ODD_GRAPHS[name]
    flat = taskloom.graph.flatten_keys(keys)
    assert takes_compiled_path(graph, flat) is expected


def test_call_order_is_the_planners_post_order(compiled: bool) -> None:
    graph = {
        "a": (op, "A"),
        "b": (op, "B"),
        "c": (op, "C", "b", "a"),
        "d": (op, "D", ["a", "e"]),
        "e": (op, "E"),
        "f": (op, "F", "d", "c"),
    }
    sync_get(graph, ["f", "e"])
    order = [c[0].lower() for c in calls]
    assert order == plan(graph, ["f", "e"]).order == ["a", "e", "d", "b", "c", "f"]


def test_non_dict_graph_runs(compiled: bool) -> None:
    from types import MappingProxyType

    graph = MappingProxyType({"a": (op, 1), "b": (op, "a")})
    assert sync_get(graph, "b") == ("op", ("op", 1))


def fuzz_op(*args: Any) -> tuple[str, int]:
    calls.append(args)
    if args and args[0] == "fail":
        raise ValueError("a failing task")
    return ("op", len(args))  # small: results do not nest


def random_argument(rng: random.Random, keys: list[Any]) -> Any:
    """Mostly what the compiled planner takes, sometimes what it hands to the Python path."""
    r = rng.random()
    if keys and r < 0.35:
        return rng.choice(keys)
    if keys and r < 0.45:
        return [rng.choice(keys) for _ in range(rng.randint(0, 4))]
    if r < 0.5:
        return rng.randint(0, 30)  # sometimes equal to an int key
    if r < 0.55:
        return float(rng.randint(0, 30))
    if r < 0.57:
        return True
    if r < 0.6:
        return ("k", rng.randint(0, 40))
    if keys and r < 0.62:
        return (fuzz_op, rng.choice(keys))
    if keys and r < 0.63:
        return [rng.choice(keys), "not a key"]
    if keys and r < 0.64:
        return {"d": rng.choice(keys)}
    if keys and r < 0.65:
        return Ref(rng.choice(keys))
    if r < 0.67:
        return "fail"
    return "literal"


def random_graph(rng: random.Random, n: int) -> tuple[dict[Any, Any], list[Any]]:
    graph: dict[Any, Any] = {}
    keys: list[Any] = []
    for i in range(n):
        key = rng.choice([("k", i), i, f"s{i}", i + 0.5, b"b%d" % i])
        refs = keys if rng.random() < 0.97 else [*keys, key]  # now and then a self-reference
        r = rng.random()
        if r < 0.05:
            graph[key] = rng.randint(0, 50)
        elif keys and r < 0.07:
            graph[key] = rng.choice(keys)  # an alias
        elif keys and r < 0.08:
            graph[key] = Task(fuzz_op, Ref(rng.choice(keys)))
        else:
            graph[key] = (fuzz_op, *[random_argument(rng, refs) for _ in range(rng.randint(0, 4))])
        keys.append(key)
    if len(keys) > 3 and rng.random() < 0.1:
        graph[keys[1]] = (fuzz_op, keys[-1])  # a cycle, if the last key leads back to it
    return graph, keys


def outcome(graph: dict[Any, Any], keys: list[Any]) -> tuple[Any, list[Any]]:
    calls.clear()
    try:
        result: Any = ("ok", sync_get(graph, keys))
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)
        result = ("error", type(exc), str(exc), getattr(exc, "__notes__", None), tb[-1].name)
    return result, list(calls)


@pytest.mark.parametrize("seed", range(4))
def test_random_graphs_behave_as_on_the_python_path(seed: int) -> None:
    """Results, errors, notes, innermost frames and the calls made, in order, on 200 seeded graphs."""
    rng = random.Random(seed)
    for _ in range(200):
        graph, keys = random_graph(rng, rng.randint(1, 40))
        requested = [rng.choice(keys) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.05:
            requested.append("missing")
        got = outcome(graph, requested)
        with taskloom.config.set({"sync.compiled": False}):
            assert outcome(graph, requested) == got, (graph, requested)


# -- errors: before anything runs, the Python path's types and messages ---------------------------


def error_of(graph: Any, keys: Any) -> BaseException:
    with pytest.raises(Exception) as info:
        sync_get(graph, keys)
    return info.value


BAD_GRAPHS: dict[str, tuple[dict[Any, Any], Any, type[BaseException]]] = {
    "cycle": ({"ok": (op, 1), "a": (op, "b"), "b": (op, "a")}, ["ok", "a"], CycleError),
    "self reference": ({"ok": (op, 1), "a": (op, "ok", "a")}, ["ok", "a"], CycleError),
    "cycle through a list": (
        {"ok": (op, 1), "a": (op, ["ok", "b"]), "b": (op, "a")},
        ["ok", "a"],
        CycleError,
    ),
    "missing dependency": ({"ok": (op, 1), "a": Task(op, Ref("nope"))}, ["ok", "a"], MissingDependencyError),
    "missing requested key": ({"ok": (op, 1)}, ["ok", "nope"], KeysNotFoundError),
    "unhashable requested key": ({"ok": (op, 1)}, ["ok", ["x", ("y", [1])]], TypeError),
}


@pytest.mark.parametrize("name", list(BAD_GRAPHS))
def test_bad_graphs_fail_as_on_the_python_path_before_any_task_runs(name: str) -> None:
    graph, keys, kind = BAD_GRAPHS[name]
    got = error_of(graph, keys)
    assert calls == []
    with taskloom.config.set({"sync.compiled": False}):
        ref = error_of(graph, keys)
    assert calls == []
    assert type(got) is type(ref) and isinstance(got, kind)
    assert str(got) == str(ref)


# -- a task's exception ------------------------------------------------------------------------

ERROR = RuntimeError("boom")


def failing(x: int) -> int:
    return 1 // x


def raise_error(*args: Any) -> None:
    raise ERROR


def test_task_exception_propagates_unchanged_from_the_tasks_frame(compiled: bool) -> None:
    ERROR.__notes__ = []
    graph = {"a": (op, 1), "b": (raise_error, "a", ["a"]), "c": (op, "b"), "d": (op, "c")}
    with pytest.raises(RuntimeError) as info:
        sync_get(graph, "d")
    assert info.value is ERROR
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].name == "raise_error"  # where pdb.post_mortem lands
    expected = RuntimeError()
    annotate(expected, "b", "sync")
    assert info.value.__notes__ == expected.__notes__  # one note, the one annotate adds
    assert calls == [(1,)]  # nothing after the failing task ran


@pytest.mark.parametrize(
    ("graph", "keys"),
    [
        ({1: (failing, 0), "t": (op, 1.0)}, "t"),  # the key as the referring task spells it
        ({1: (failing, 0), "t": (op, [True])}, "t"),
        ({1: (failing, 0), "t": (op, 1.0)}, [1, "t"]),
        ({("x", 0): (failing, 0), "t": (op, [("x", 0)])}, "t"),
    ],
)
def test_exception_note_is_the_python_paths(graph: dict[Any, Any], keys: Any) -> None:
    with pytest.raises(ZeroDivisionError) as info:
        sync_get(graph, keys)
    with pytest.raises(ZeroDivisionError) as ref:
        on_python_path(graph, keys)
    assert info.value.__notes__ == ref.value.__notes__
    assert calls == []


def test_failing_task_leaves_the_scheduler_usable(compiled: bool) -> None:
    with pytest.raises(ZeroDivisionError) as info:
        sync_get({"x": 0, "y": (failing, "x")}, "y")
    assert traceback.extract_tb(info.value.__traceback__)[-1].name == "failing"
    assert "taskloom: raised by task 'y' (scheduler 'sync')" in info.value.__notes__
    assert sync_get({"x": 1, "y": (failing, "x")}, "y") == 1


# -- releasing intermediates ---------------------------------------------------------------------


class Big:
    pass


made: list[weakref.ref[Big]] = []
seen_alive: list[bool] = []


def make(*args: Any) -> Big:
    big = Big()
    made.append(weakref.ref(big))
    return big


def use(big: Big) -> int:
    return 1


def check(*args: Any) -> int:
    seen_alive.append(made[0]() is not None)
    return 0


def test_intermediates_are_released_when_their_last_dependent_has_run(compiled: bool) -> None:
    made.clear()
    seen_alive.clear()
    graph = {"big": (make,), "a": (use, "big"), "b": (use, "big"), "c": (check, "a", "b"), "out": (op, "c")}
    was_enabled = gc.isenabled()
    gc.disable()  # freed by reference counting alone, not by a collection
    try:
        assert sync_get(graph, "out") == ("op", 0)
    finally:
        if was_enabled:
            gc.enable()
    assert seen_alive == [False]  # freed before the graph ended
    if scheduler.COMPILED and compiled:
        made.clear()
        seen_alive.clear()
        assert takes_compiled_path(graph, ["out"])
        assert seen_alive == [False]


def test_requested_intermediates_are_kept(compiled: bool) -> None:
    made.clear()
    graph = {"big": (make,), "a": (use, "big")}
    big, a = sync_get(graph, ["big", "a"])
    assert type(big) is Big and a == 1


# -- diagnostics ---------------------------------------------------------------------------------


def test_diagnostics_hooks_see_every_task(compiled: bool) -> None:
    graph, out = workloads.tree(16)
    started: list[Any] = []
    finished: list[Any] = []
    with Callback(
        task_start=lambda key, worker: started.append(key),
        task_finish=lambda key, worker, duration, error: finished.append((key, error)),
    ):
        assert sync_get(graph, out) == execute_inline(plan(graph, [out]))[out]
    order = plan(graph, [out]).order
    assert started == order
    assert finished == [(k, None) for k in order]


# -- the conformance suite on the Python path too --------------------------------------------------


class TestSyncConformancePythonPath(SchedulerConformance):
    scheduler = "sync"

    @pytest.fixture(autouse=True)
    def _python_path(self) -> Iterator[None]:
        with taskloom.config.set({"sync.compiled": False}):
            yield
