"""Cluster-state dump files: written by ``client.dump_cluster_state``, read by :func:`load_cluster_dump`.

The format follows the file name: ``.json`` (JSON, UTF-8) or ``.msgpack``, either optionally
followed by ``.gz`` (gzip).  The content is the same either way::

    {"version": 1,
     "scheduler": {"address", "pid", "time", "workers": {address: {...}}, "task_counts",
                   "tasks_by_state": {state: [key, ...]}, "tasks": [{"key", "state", "who_has",
                   "processing_on", "waiting_on", "dependencies", ...}], "unrunnable", "clients",
                   "mean_task_duration", "tasks_finished", "last_stall", "events", "logs"},
     "workers": {address: {"address", "name", "pid", "status", "memory", "tasks",
                           "tasks_by_state", "executing", "ready", "in_flight",
                           "data": {"memory": [...], "spilled": [...]}, "events", "logs"}
                           | {"error": "no reply"}}}

Keys are task keys' ``repr``; ``logs`` are ``[time, level, logger, message]``; ``events`` are
``[name, detail]`` on the scheduler and ``[time, op, key(s)]`` on workers.
"""

from __future__ import annotations

import gzip
import json
import os
from typing import IO, Any

import msgpack

FORMATS = {".json": "json", ".msgpack": "msgpack"}


def dump_format(filename: str | os.PathLike[str]) -> tuple[str, bool]:
    """``(format, gzipped)`` for ``filename``, from its extension."""
    name = os.fspath(filename)
    gzipped = name.lower().endswith(".gz")
    base = name[:-3] if gzipped else name
    ext = os.path.splitext(base)[1].lower()
    if ext not in FORMATS:
        raise ValueError(
            f"cannot tell the dump format of {name!r} from its extension: "
            "name it *.json or *.msgpack (optionally followed by .gz)"
        )
    return FORMATS[ext], gzipped


def _open(filename: str, mode: str, gzipped: bool) -> IO[bytes]:
    return gzip.open(filename, mode) if gzipped else open(filename, mode)  # type: ignore[return-value]


def write_cluster_dump(state: dict[str, Any], filename: str | os.PathLike[str]) -> str:
    """Write ``state`` to ``filename`` in the format its extension names; the path written."""
    fmt, gzipped = dump_format(filename)
    path = os.fspath(filename)
    if fmt == "json":
        data = json.dumps(state, default=repr).encode()
    else:
        data = msgpack.packb(state, default=repr)
    with _open(path, "wb", gzipped) as f:
        f.write(data)
    return path


class ClusterDump(dict[str, Any]):
    """A loaded dump: the plain structure (a dict), with a few look-ups."""

    def tasks_in_state(self, state: str) -> list[dict[str, Any]]:
        """The scheduler's tasks in ``state`` (``"processing"``, ``"waiting"``, ``"memory"``, ...)."""
        return [t for t in self["scheduler"]["tasks"] if t["state"] == state]

    def task(self, key: Any) -> dict[str, Any] | None:
        """The scheduler's record of the task ``key`` (a key, or its repr)."""
        wanted = key if isinstance(key, str) and key[:1] in "'\"(" else repr(key)
        return next((t for t in self["scheduler"]["tasks"] if t["key"] == wanted), None)

    def worker_tasks_in_state(self, state: str) -> dict[str, list[dict[str, Any]]]:
        """``{worker address: [its tasks in state]}`` (``"executing"``, ``"ready"``, ``"flight"``, ...)."""
        out = {}
        for address, w in self["workers"].items():
            tasks = [t for t in w.get("tasks", []) if t["state"] == state]
            if tasks:
                out[address] = tasks
        return out

    def missing_workers(self) -> list[str]:
        """Workers the scheduler knows that did not answer."""
        return sorted(a for a, w in self["workers"].items() if "error" in w)


def load_cluster_dump(filename: str | os.PathLike[str]) -> ClusterDump:
    """Read a file written by ``client.dump_cluster_state`` (format from its extension)."""
    fmt, gzipped = dump_format(filename)
    with _open(os.fspath(filename), "rb", gzipped) as f:
        data = f.read()
    if fmt == "json":
        state = json.loads(data)
    else:
        state = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return ClusterDump(state)
