"""``delayed`` and ``Delayed``: keys, iteration, operators and building large graphs."""

from __future__ import annotations

from typing import Any

import pytest
import taskloom
from taskloom import Delayed, delayed


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def pair(x: Any, y: Any) -> tuple[Any, Any]:
    return x, y


# -- keys ----------------------------------------------------------------------------------


def test_pure_calls_with_equal_arguments_have_equal_keys() -> None:
    f = delayed(pair, pure=True)
    assert f(1, [2, {"a": 3}]).key == f(1, [2, {"a": 3}]).key
    assert f(1, y=2).key == f(1, y=2).key
    x = delayed(inc, pure=True)(1)
    assert f(x, 1).key == f(x, 1).key


def test_pure_keys_differ_for_different_calls() -> None:
    f = delayed(pair, pure=True)
    keys = {f(1, 2).key, f(2, 1).key, f(1, y=2).key, delayed(add, pure=True)(1, 2).key, f(1, 2.0).key}
    assert len(keys) == 5


def test_impure_calls_have_distinct_keys() -> None:
    f = delayed(pair)
    assert f(1, 2).key != f(1, 2).key
    assert delayed(5).key != delayed(5).key


def test_pure_can_be_chosen_per_call() -> None:
    f = delayed(pair)
    assert f(1, 2, pure=True).key == f(1, 2, pure=True).key
    assert delayed(pair, pure=True)(1, 2, pure=False).key != delayed(pair, pure=True)(1, 2, pure=False).key


def test_keys_start_with_the_function_name_or_the_given_name() -> None:
    assert str(delayed(inc)(1).key).startswith("inc-")
    assert str(delayed(inc, name="step")(1).key).startswith("step-")
    assert str(delayed([1, 2]).key).startswith("list-")


def test_key_name_fixes_the_key() -> None:
    assert delayed(inc)(1, taskloom_key_name="one").key == "one"
    assert delayed(inc)(1, taskloom_key_name=("part", 3)).key == ("part", 3)
    assert delayed(42, name="answer").key == "answer"
    assert delayed(inc)(1, taskloom_key_name="k").compute() == 2


def test_decorator_forms() -> None:
    @delayed
    def double(x: int) -> int:
        return 2 * x

    @delayed(pure=True, name="triple")
    def triple(x: int) -> int:
        return 3 * x

    assert double.__name__ == "double"
    assert triple(1).key == triple(1).key and str(triple(1).key).startswith("triple-")
    assert taskloom.compute(double(2), triple(2)) == (4, 6)


def test_delayed_none_with_options_wraps_the_value() -> None:
    # delayed(None, ...) is a value like any other, not the decorator-with-options form
    assert isinstance(delayed(None, name="nothing"), Delayed)
    assert delayed(None, name="nothing").key == "nothing"
    assert delayed(None, pure=True).compute() is None


def test_delayed_of_delayed_is_itself() -> None:
    x = delayed(inc)(1)
    assert delayed(x) is x
    f = delayed(inc)
    assert delayed(f) is f


# -- nout and iteration ----------------------------------------------------------------------


def test_nout_makes_the_result_iterable() -> None:
    q, r = delayed(divmod, nout=2)(17, 5)
    assert isinstance(q, Delayed) and isinstance(r, Delayed)
    assert taskloom.compute(q, r) == (3, 2)
    assert len(delayed(divmod, nout=2)(1, 1)) == 2
    assert list(delayed(tuple, nout=0)([])) == []


def test_iterating_without_nout_is_a_type_error_that_says_so() -> None:
    result = delayed(divmod)(17, 5)
    with pytest.raises(TypeError, match="nout"):
        _q, _r = result
    with pytest.raises(TypeError, match="nout"):
        len(result)


def test_truth_value_is_a_type_error() -> None:
    x = delayed(inc)(1)
    with pytest.raises(TypeError, match="truth value"):
        bool(x)
    with pytest.raises(TypeError):
        if x:
            pass


def test_delayed_objects_are_immutable() -> None:
    x = delayed(inc)(1)
    with pytest.raises(TypeError, match="immutable"):
        x.anything = 1


# -- attribute access, indexing, operators ---------------------------------------------------


class Box:
    def __init__(self, items: list[int]) -> None:
        self.items = items

    def total(self, start: int = 0) -> int:
        return start + sum(self.items)


def test_attribute_access_and_method_calls() -> None:
    box = delayed(Box)([1, 2, 3])
    assert taskloom.compute(box.items, box.total(), box.total(start=10), box.items[1]) == (
        [1, 2, 3],
        6,
        16,
        2,
    )


def test_private_attributes_are_not_tasks() -> None:
    with pytest.raises(AttributeError):
        delayed(Box)([1])._hidden  # noqa: B018


def test_operators_record_tasks() -> None:
    a, b = delayed(6), delayed(4)
    exprs = [a + b, a - 1, 1 - a, a * b, a / b, a // b, a % b, a**2, 2**b, -a, abs(-a), a < b, a >= b, a & b]
    assert list(taskloom.compute(*exprs)) == [10, 5, -5, 24, 1.5, 1, 2, 36, 16, -6, 6, False, True, 4]


def test_operators_are_pure() -> None:
    a = delayed(6, name="a")
    assert (a + 1).key == (a + 1).key
    assert (a + 1).key != (a + 2).key


def test_getitem() -> None:
    d = delayed({"k": [10, 20]})
    assert d["k"][1].compute() == 20


# -- containers of Delayed ---------------------------------------------------------------------


def test_delayed_of_containers_holding_delayed() -> None:
    x, y = delayed(inc)(1), delayed(inc)(2)
    box = delayed({"list": [x, y], "tuple": (x, 5), "set": {x, y}, "nested": [[{"y": y}]]})
    assert set(box.dependencies()) == {x, y}
    assert box.compute() == {"list": [2, 3], "tuple": (2, 5), "set": {2, 3}, "nested": [[{"y": 3}]]}


def test_calls_with_delayed_inside_arguments() -> None:
    x = delayed(inc)(1)
    call = delayed(pair)([x, (x,)], y={"k": x})
    assert call.dependencies() == (x,)
    assert call.compute() == ([2, (2,)], {"k": 2})


def test_compute_traverses_containers() -> None:
    x = delayed(inc)(1)
    assert taskloom.compute([x, {"k": x}], (x, 3), 7) == ([2, {"k": 2}], (2, 3), 7)
    assert taskloom.compute([x], traverse=False)[0] == [x]


def test_delayed_is_a_collection() -> None:
    x = delayed(inc)(1)
    assert taskloom.is_collection(x) and not taskloom.is_collection(1)
    graph = x.__taskloom_graph__()
    assert list(graph) == [x.key]
    assert taskloom.get(graph, x.key) == 2


# -- large graphs --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_ten_thousand_call_chain_builds_and_computes() -> None:
    x = delayed(0, name="start")
    for _ in range(10_000):
        x = x + 1
    step = delayed(inc)
    y = delayed(0)
    for _ in range(10_000):
        y = step(y)
    assert taskloom.compute(x, y) == (10_000, 10_000)
    assert len(y.__taskloom_graph__()) == 10_001
