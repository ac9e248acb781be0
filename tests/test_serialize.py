"""The serializer registry: built-ins, third-party serializers from a hook, out-of-band buffers, errors."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import cloudpickle
import pytest
import taskloom
import taskloom.plugins
from taskloom import Ref, Task
from taskloom.serialize import (
    SerializationError,
    Serializer,
    deserialize,
    get_serializer,
    reset,
    serialize,
    serializers,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this file


class MyType:
    """A value with its own serializer; ``trail`` records each hop through that serializer."""

    def __init__(self, value: int, trail: Sequence[str] = ()) -> None:
        self.value = value
        self.trail = list(trail)


class MySubType(MyType):
    pass


def mytype_dumps(obj: MyType) -> list[bytes]:
    hop = f"dumps:{os.getpid()}"
    return [json.dumps({"value": obj.value, "trail": [*obj.trail, hop]}).encode()]


def mytype_loads(frames: Sequence[Any]) -> MyType:
    data = json.loads(bytes(frames[0]))
    return MyType(data["value"], [*data["trail"], f"loads:{os.getpid()}"])


class MySerializerPlugin:
    """A third-party plugin providing the ``mytype`` serializer through the hook."""

    @taskloom.hookimpl
    def taskloom_serializers(self) -> list[Serializer]:
        return [Serializer("mytype", mytype_dumps, mytype_loads, types=(MyType,))]


@pytest.fixture
def mytype_serializer() -> Iterator[None]:
    plugin = MySerializerPlugin()
    taskloom.plugins.register(plugin, name="mytype-serializer")
    reset()
    try:
        yield
    finally:
        taskloom.plugins.unregister(plugin)
        reset()


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object refuses to be pickled")


# -- the registry ----------------------------------------------------------------------------


def test_registry_has_pickle_and_cloudpickle() -> None:
    registered = serializers()
    assert {"pickle", "cloudpickle"} <= set(registered)
    assert all(isinstance(s, Serializer) and s.name == name for name, s in registered.items())
    assert get_serializer("pickle") is registered["pickle"]


def test_plain_data_uses_pickle_and_round_trips() -> None:
    value = {"a": [1, 2.5, None], "b": ("x", b"y"), 3: {4, 5}}
    name, frames = serialize(value)
    assert name == "pickle"
    assert deserialize(name, frames) == value


def test_unknown_serializer_name_lists_the_registered_ones() -> None:
    for call in (lambda: get_serializer("nope"), lambda: serialize(1, name="nope"),
                 lambda: deserialize("nope", [b""])):  # fmt: skip
        with pytest.raises(SerializationError) as info:
            call()
        text = str(info.value)
        assert "'nope'" in text and "pickle" in text and "cloudpickle" in text


def test_explicitly_named_serializer_is_used() -> None:
    name, frames = serialize([1, 2], name="cloudpickle")
    assert name == "cloudpickle"
    assert deserialize(name, frames) == [1, 2]


# -- a third-party serializer from a hook ----------------------------------------------------------


def test_hook_serializer_is_registered_and_chosen_for_its_type(mytype_serializer: None) -> None:
    assert "mytype" in serializers()
    name, frames = serialize(MyType(5))
    assert name == "mytype"
    back = deserialize(name, frames)
    assert type(back) is MyType and back.value == 5
    assert back.trail == [f"dumps:{os.getpid()}", f"loads:{os.getpid()}"]
    assert serialize(MySubType(1))[0] == "mytype"  # chosen for subclasses too
    assert serialize(7)[0] == "pickle"  # and only for its types


def test_hook_serializer_is_gone_after_unregistering_and_reset() -> None:
    plugin = MySerializerPlugin()
    taskloom.plugins.register(plugin)
    reset()
    try:
        assert serialize(MyType(1))[0] == "mytype"
    finally:
        taskloom.plugins.unregister(plugin)
        reset()
    assert "mytype" not in serializers()
    name, frames = serialize(MyType(1))
    assert name == "pickle" and deserialize(name, frames).trail == []


def hops(value: MyType) -> list[str]:
    return value.trail


def make_mytype(n: int) -> MyType:
    return MyType(n)


@pytest.mark.timeout(60)
def test_hook_serializer_carries_values_to_and_from_worker_processes(mytype_serializer: None) -> None:
    pytest.importorskip("taskloom_processes")
    graph = {"made": Task(make_mytype, 3), "given": MyType(4), "seen": Task(hops, Ref("given"))}
    made, seen = taskloom.get(graph, ["made", "seen"], scheduler="processes", num_workers=1)
    me = os.getpid()
    # a result made in a worker: dumped there with mytype, loaded here with mytype
    assert type(made) is MyType and made.value == 3
    assert [h.split(":")[0] for h in made.trail] == ["dumps", "loads"], made.trail
    assert made.trail[0] != f"dumps:{me}" and made.trail[1] == f"loads:{me}"
    # a literal input: dumped here with mytype, loaded in the worker with mytype
    assert [h.split(":")[0] for h in seen] == ["dumps", "loads"], seen
    assert seen[0] == f"dumps:{me}" and seen[1] != f"loads:{me}"


# -- pickle protocol 5 --------------------------------------------------------------------------------


def test_numpy_array_buffer_travels_out_of_band_uncopied() -> None:
    np = pytest.importorskip("numpy")
    arr = np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000)
    name, frames = serialize(arr)
    assert name == "pickle"
    assert len(frames) > 1
    assert len(frames[0]) < 1000  # the header holds no data
    data = memoryview(frames[1])
    assert data.nbytes == arr.nbytes
    view = np.frombuffer(data, dtype=arr.dtype)
    assert np.shares_memory(view, arr)
    assert view.__array_interface__["data"][0] == arr.__array_interface__["data"][0]
    back = deserialize(name, frames)
    np.testing.assert_array_equal(back, arr)
    assert back.shape == arr.shape and back.dtype == arr.dtype


# -- fallbacks and errors --------------------------------------------------------------------------------


def test_lambdas_and_closures_fall_back_to_cloudpickle() -> None:
    k = 10

    def closure(x: int) -> int:
        return x * k

    for func, expected in ((lambda x: x + 1, 2), (closure, 10)):
        name, frames = serialize(func)
        assert name == "cloudpickle"
        assert deserialize(name, frames)(1) == expected


def test_unpicklable_object_error_names_its_type() -> None:
    with pytest.raises(SerializationError) as info:
        serialize(threading.Lock())
    assert "_thread.lock" in str(info.value)
    with pytest.raises(SerializationError) as info:
        serialize(Unpicklable())
    assert "Unpicklable" in str(info.value) and "refuses to be pickled" in str(info.value)
    assert isinstance(info.value, TypeError)  # SerializationError is also a TypeError


def test_undecodable_frames_raise_a_serialization_error() -> None:
    with pytest.raises(SerializationError) as info:
        deserialize("pickle", [b"not a pickle"])
    assert "pickle" in str(info.value)
