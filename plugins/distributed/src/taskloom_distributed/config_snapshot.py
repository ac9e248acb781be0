"""The client's ``config.set`` values, shipped to the workers so that its tasks see them.

A client sends its values once per change (``client-config``: an id and the pickled values),
before the first graph that needs them, and tags each task of a graph with that id.  A worker
runs the task under those values on the task's thread only (``taskloom.config.overlay``), so
tasks of clients with different settings can share a worker.  Checking for a change costs one
integer comparison (``taskloom.config.set_layer``).

Not shipped: ``scheduler`` and ``pool`` (how the client itself runs things -- a Client object is
there while it is the default) and ``distributed.*`` (the cluster's own settings, which each
machine takes from its own configuration).  A value that cannot be pickled stays on the client,
with a warning naming its key.  Configuration files and environment variables describe the
machine they are on and are not shipped either.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections.abc import Callable
from typing import Any

from taskloom import config
from taskloom.serialize import cloudpickle_dumps

from .comm import Serialized

NOT_SHIPPED = ("scheduler", "pool", "distributed")


class ConfigShippingWarning(UserWarning):
    """A ``config.set`` value could not be sent to the workers."""


def _shipped(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k.split(".", 1)[0] not in NOT_SHIPPED}


def _pickled(values: dict[str, Any]) -> Serialized:
    """``values`` as frames; keys whose value will not pickle are dropped, with a warning."""
    try:
        return Serialized("cloudpickle", cloudpickle_dumps(values))
    except Exception:
        pass
    kept = {}
    for key, value in values.items():
        try:
            cloudpickle_dumps(value)
        except Exception as exc:
            warnings.warn(
                f"config key {key!r} is not sent to the workers: its value, of type "
                f"{type(value).__qualname__}, cannot be pickled ({type(exc).__name__}: {exc})",
                ConfigShippingWarning,
                stacklevel=5,
            )
            continue
        kept[key] = value
    return Serialized("cloudpickle", cloudpickle_dumps(kept))


class ConfigShipper:
    """Tracks what this client has sent; :meth:`current` gives the id its new tasks carry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._id: str | None = None
        self._sent: set[str] = set()

    def current(self, post: Callable[[dict[str, Any]], None]) -> str | None:
        """The id of the client's values now (None: nothing to ship).

        If they changed, the ``client-config`` message goes to ``post`` first (under a lock, so
        that no graph tagged with the id can overtake it).
        """
        generation, values = config.set_layer(self._generation)
        if values is None:
            return self._id
        with self._lock:
            self._generation = generation
            shipped = _shipped(values)
            if not shipped:
                self._id = None
                return None
            frames = _pickled(shipped)
            digest = hashlib.sha256()
            for frame in frames.frames:
                digest.update(frame)
            cid = digest.hexdigest()[:24]
            if cid not in self._sent:
                post({"op": "client-config", "id": cid, "config": frames})
                self._sent.add(cid)
            self._id = cid
            return cid


def tag_tasks(tasks: dict[Any, tuple[Any, Any]], cid: str) -> dict[Any, tuple[Any, Any]]:
    """Each task's specification paired with the config id it runs under (see the worker)."""
    return {key: ((spec, cid), deps) for key, (spec, deps) in tasks.items()}
