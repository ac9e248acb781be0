"""The serializer registry: turning values into frames and back, chosen by name or by type.

A :class:`Serializer` turns an object into a list of *frames* -- a header followed by zero or
more out-of-band buffers -- and back.  Frames let large buffers (NumPy arrays, bytes, anything
that supports pickle protocol 5's ``PickleBuffer``) travel without being copied into one big
pickle: a transport writes each frame as it is.

Serializers come from plugins through the ``taskloom_serializers`` hook; the core registers
``pickle`` (protocol 5 with out-of-band buffers; the default for data) and ``cloudpickle`` (for
functions, lambdas, closures and anything defined in ``__main__``).  For a value,
:func:`serialize` uses, in order: an explicitly named serializer; the first registered
serializer whose ``types`` include the value's type (or a base class); the configured
``serialization.default`` (``pickle``), falling back to ``cloudpickle`` when plain pickle cannot
handle the value.  Failures raise :class:`SerializationError` naming the offending type.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from . import config
from .errors import TaskloomError

Frames = list[Any]  # bytes-like: bytes, bytearray, memoryview, PickleBuffer


class SerializationError(TaskloomError, TypeError):
    """A value could not be serialized or deserialized; names the value's type."""


def _types(values: Sequence[type]) -> tuple[type, ...]:
    return tuple(values)


@attrs.frozen
class Serializer:
    """A way to turn values into frames and back.

    ``dumps(obj) -> frames`` (first frame a header, the rest out-of-band buffers);
    ``loads(frames) -> obj``.  ``types``: the value types it should be chosen for.
    """

    name: str
    dumps: Callable[[Any], Frames]
    loads: Callable[[Sequence[Any]], Any]
    types: tuple[type, ...] = attrs.field(default=(), converter=_types)


def pickle_dumps(obj: Any) -> Frames:
    """Pickle protocol 5; buffers that support it travel as separate frames, uncopied."""
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [header, *[b.raw() for b in buffers]]


def pickle_loads(frames: Sequence[Any]) -> Any:
    return pickle.loads(frames[0], buffers=frames[1:])


def cloudpickle_dumps(obj: Any) -> Frames:
    """cloudpickle with protocol 5 out-of-band buffers: functions and closures by value."""
    import cloudpickle

    buffers: list[pickle.PickleBuffer] = []
    header = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [header, *[b.raw() for b in buffers]]


PICKLE = Serializer("pickle", pickle_dumps, pickle_loads)
CLOUDPICKLE = Serializer("cloudpickle", cloudpickle_dumps, pickle_loads)

_lock = threading.Lock()
_registry: dict[str, Serializer] | None = None
_by_type: dict[type, Serializer | None] = {}
_version = 0


def serializers() -> dict[str, Serializer]:
    """Every registered serializer by name, in registration order."""
    global _registry
    registry = _registry
    if registry is None:
        from .plugins import call_each, get_plugin_manager

        with _lock:
            registry = {}
            hook = get_plugin_manager().hook.taskloom_serializers
            for _plugin, provided in call_each(hook, "serializers"):
                for s in provided or ():
                    registry.setdefault(s.name, s)
            registry.setdefault(PICKLE.name, PICKLE)
            registry.setdefault(CLOUDPICKLE.name, CLOUDPICKLE)
            _registry = registry
            _by_type.clear()
    return dict(registry)


def reset() -> None:
    """Forget the registry; it is rebuilt from the plugins on next use."""
    global _registry, _version
    with _lock:
        _registry = None
        _by_type.clear()
        _version += 1


def registry_version() -> int:
    """A number that changes whenever the registry is reset (for backends that copy it)."""
    return _version


def custom_serializers() -> list[Serializer]:
    """The registered serializers other than the built-in pickle and cloudpickle."""
    return [s for s in serializers().values() if s not in (PICKLE, CLOUDPICKLE)]


def custom_for(value: Any) -> Serializer | None:
    """The plugin serializer registered for ``value``'s type, if any."""
    return _for_type(type(value))


def get_serializer(name: str) -> Serializer:
    """The serializer registered as ``name``; the error lists the registered names."""
    registry = serializers()
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(registry)
        raise SerializationError(f"unknown serializer {name!r}; registered: {known}") from None


def _for_type(t: type) -> Serializer | None:
    try:
        return _by_type[t]
    except KeyError:
        pass
    found = None
    for s in serializers().values():
        if s.types and issubclass(t, s.types):
            found = s
            break
    _by_type[t] = found
    return found


def serialize(obj: Any, name: str | None = None) -> tuple[str, Frames]:
    """``(serializer name, frames)`` for ``obj`` (see the module docstring for the choice)."""
    if name is None:
        chosen = _for_type(type(obj))
        if chosen is None:
            chosen = get_serializer(config.get_cached("serialization.default", "pickle"))
    else:
        chosen = get_serializer(name)
    try:
        return chosen.name, chosen.dumps(obj)
    except Exception:
        if chosen.name == "pickle" and name is None:
            try:
                return CLOUDPICKLE.name, CLOUDPICKLE.dumps(obj)
            except Exception as exc2:
                exc = exc2
        raise SerializationError(
            f"cannot serialize {describe(obj)} with {chosen.name}: {type(exc).__name__}: {exc}"
        ) from exc


def deserialize(name: str, frames: Sequence[Any]) -> Any:
    """The object that ``serialize`` turned into ``(name, frames)``."""
    try:
        return get_serializer(name).loads(frames)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"cannot deserialize a value with {name}: {type(exc).__name__}: {exc}"
        ) from exc


def describe(obj: Any) -> str:
    """A short description of ``obj`` for error messages: its type and a clipped repr."""
    t = type(obj)
    try:
        text = repr(obj)
    except Exception:
        text = "<unrepresentable>"
    if len(text) > 60:
        text = text[:57] + "..."
    return f"an object of type {t.__module__}.{t.__qualname__} ({text})"


def frames_nbytes(frames: Sequence[Any]) -> int:
    """Total size of ``frames`` in bytes."""
    return sum(memoryview(f).nbytes for f in frames)


def find_unpicklable(task: Any) -> tuple[str, Any] | None:
    """The path (``args[1].conn``) and value of the first part of ``task`` that cloudpickle
    cannot pickle -- its function, an argument, or something inside one -- or None."""
    import cloudpickle

    def ok(obj: Any) -> bool:
        try:
            cloudpickle.dumps(obj)
            return True
        except Exception:
            return False

    def walk(obj: Any, path: str, depth: int) -> tuple[str, Any]:
        children: list[tuple[str, Any]] = []
        if depth < 20:
            if isinstance(obj, (list, tuple)):
                children = [(f"{path}[{i}]", x) for i, x in enumerate(obj)]
            elif isinstance(obj, dict):
                children = [(f"{path}[{k!r}]", v) for k, v in obj.items()]
            elif hasattr(obj, "__dict__") and not isinstance(obj, type):
                children = [(f"{path}.{k}", v) for k, v in vars(obj).items()]
        for child_path, child in children:
            if not ok(child):
                return walk(child, child_path, depth + 1)
        return path, obj

    parts = [("the function", task.func)] + [(f"args[{i}]", a) for i, a in enumerate(task.args)]
    parts += [(f"kwargs[{k!r}]", v) for k, v in task.kwargs.items()]
    for path, obj in parts:
        if not ok(obj):
            return walk(obj, path, 0)
    return None
