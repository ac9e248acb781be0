"""Tasks to frames on the client, exceptions back from frames: with errors that say what failed."""

from __future__ import annotations

import functools
import pickle
import sys
import types
import weakref
from types import TracebackType
from typing import Any

from taskloom.errors import TaskloomError
from taskloom.graph import Key, Task
from taskloom.serialize import SerializationError, cloudpickle_dumps, describe, find_unpicklable, pickle_dumps

from ..comm import Serialized


def _registered_by_value() -> frozenset[str]:
    """Modules registered with ``cloudpickle.register_pickle_by_value``: they travel by value too
    (the way to use a module that the workers cannot import)."""
    cloudpickle = sys.modules.get("cloudpickle")
    return frozenset(cloudpickle.list_registry_pickle_by_value()) if cloudpickle is not None else frozenset()


def _in_registered(module: str, registered: frozenset[str]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in registered)


def _by_value(func: Any) -> bool:
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", "")
    if module in (None, "__main__", "__mp_main__") or "<" in qualname:
        return True
    registered = _registered_by_value()
    return bool(registered) and _in_registered(module, registered)


class _PickledFunction:
    """A function already pickled by value; unpickles (on the worker) as the function itself.

    Its bytes are inside the task's pickle (one plain ``bytes`` specification, the cheapest
    kind to relay and load); :meth:`TaskPickler.dumps` looks past them when it checks the rest
    of the task for references to ``__main__``.
    """

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # never called: replaced when unpickled
        raise TypeError("a pickled function placeholder was called")

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (loads_function, (self.blob,))


@functools.lru_cache(maxsize=256)
def loads_function(blob: bytes) -> Any:
    """The function pickled in ``blob``; a worker unpickles each distinct function once."""
    return pickle.loads(blob)


_MAIN = (b"__main__", b"__mp_main__")


def _names_registered(header: bytes) -> bool:
    """Does a plain pickle refer to a module registered to travel by value?"""
    registered = _registered_by_value()
    return bool(registered) and any(m.encode() in header for m in registered)


class TaskPickler:
    """Turns tasks into frames for the scheduler, as cheaply as is safe.

    Plain pickle is used when the result refers to nothing in ``__main__`` (which a worker
    cannot import); otherwise cloudpickle, which sends such things by value.  A function that
    must travel by value (defined in ``__main__``) is cloudpickled once per client and attached
    as bytes, so each task costs only the pickling of its arguments; as in Dask, a later change
    to a global that such a function reads is not seen by later submissions.  Closures are
    pickled afresh every time.  Anything that cannot be pickled at all is reported
    at submit time with the path to it and the task's key.
    """

    def __init__(self) -> None:
        self._blobs: weakref.WeakKeyDictionary[Any, _PickledFunction] = weakref.WeakKeyDictionary()

    def _placeholder(self, func: Any) -> Any:
        if type(func) is not types.FunctionType or func.__closure__ is not None:
            return None
        placeholder = self._blobs.get(func)
        if placeholder is None:
            import cloudpickle

            placeholder = self._blobs[func] = _PickledFunction(cloudpickle.dumps(func, protocol=5))
        return placeholder

    def dumps(self, key: Key, task: Task) -> Serialized | bytes:
        """``task`` as frames; raises :class:`SerializationError` naming ``key`` and the path to
        whatever cannot be pickled."""
        try:
            plain: Task | None = task
            placeholder = None
            if _by_value(task.func):
                placeholder = self._placeholder(task.func)
                plain = None if placeholder is None else task.with_func(placeholder)
            if plain is not None:
                frames = pickle_dumps(plain)
                rest = frames[0]  # what refers to modules, the function's own pickle aside
                if placeholder is not None:
                    rest = rest.replace(placeholder.blob, b"", 1)
                if _MAIN[0] not in rest and _MAIN[1] not in rest and not _names_registered(rest):
                    return _spec("pickle", frames)
        except Exception:
            pass
        return dumps_task(key, task)


def _spec(name: str, frames: list[Any]) -> Serialized | bytes:
    """A task specification as it travels: a pickle without out-of-band buffers (nearly every
    task) as plain bytes -- the scheduler relays them as a msgpack ``bin``, no Python object per
    task on the way, and the worker loads them with ``pickle.loads`` -- else ``Serialized``."""
    if len(frames) == 1 and type(frames[0]) is bytes:
        return frames[0]  # cloudpickle's output loads with pickle.loads too
    return Serialized(name, frames)


def dumps_task(key: Key, task: Task) -> Serialized | bytes:
    """``task`` as frames with cloudpickle (or plain pickle when the function allows); an object
    that cannot be pickled at all is reported at submit time with the path to it and the key."""
    if not _by_value(task.func):
        try:
            return _spec("pickle", pickle_dumps(task))
        except Exception:
            pass
    try:
        return _spec("cloudpickle", cloudpickle_dumps(task))
    except Exception as exc:
        path, bad = find_unpicklable(task) or ("the task", task)
        raise SerializationError(
            f"task {key!r} cannot be sent to the cluster: {path} is {describe(bad)}, which cannot be "
            f"pickled ({type(exc).__name__}: {exc})"
        ) from None


def remote_traceback(text: str) -> TracebackType | None:
    """A traceback object with the frames of the last traceback in ``text`` (a formatted one)."""
    from tblib import Traceback

    marker = "Traceback (most recent call last):"
    start = text.rfind(marker)
    if start < 0:
        return None
    try:
        return Traceback.from_string(text[start:]).as_traceback()
    except Exception:
        return None


class RemoteTraceback(Exception):
    """A worker's traceback, as text: the cause of an exception re-raised on the client."""

    def __str__(self) -> str:
        return "\n\n" + str(self.args[0])


def unpack_exception(blob: Any, traceback: Any, key: Key) -> BaseException:
    """The task's exception (its own type when it unpickles), with the remote traceback as cause."""
    exc: BaseException | None = None
    if isinstance(blob, Serialized):
        try:
            exc = blob.load()
        except Exception:
            exc = None
    elif isinstance(blob, BaseException):
        exc = blob
    if exc is None:
        exc = TaskloomError(f"task {key!r} failed: {blob}")
    if traceback:
        exc.__cause__ = RemoteTraceback(str(traceback))
    note = f"taskloom: raised by task {key!r} (scheduler 'distributed')"
    if note not in getattr(exc, "__notes__", []):
        exc.add_note(note)
    return exc
