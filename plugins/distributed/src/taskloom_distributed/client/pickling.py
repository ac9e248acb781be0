"""Tasks to frames on the client, exceptions back from frames: with errors that say what failed."""

from __future__ import annotations

from typing import Any

from taskloom.errors import TaskloomError
from taskloom.graph import Key, Task
from taskloom.serialize import SerializationError, cloudpickle_dumps, describe, find_unpicklable, pickle_dumps

from ..comm import Serialized


def _by_value(func: Any) -> bool:
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", "")
    return module in (None, "__main__", "__mp_main__") or "<" in qualname


def dumps_task(key: Key, task: Task) -> Serialized:
    """``task`` as frames: plain pickle when it can, cloudpickle for functions defined in
    ``__main__``, lambdas and closures; an object that cannot be pickled at all is reported at
    submit time with the path to it."""
    if not _by_value(task.func):
        try:
            return Serialized("pickle", pickle_dumps(task))
        except Exception:
            pass
    try:
        return Serialized("cloudpickle", cloudpickle_dumps(task))
    except Exception as exc:
        path, bad = find_unpicklable(task) or ("the task", task)
        raise SerializationError(
            f"task {key!r} cannot be sent to the cluster: {path} is {describe(bad)}, which cannot be "
            f"pickled ({type(exc).__name__}: {exc})"
        ) from None


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
