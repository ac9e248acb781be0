"""The worker's data store: results in memory, the least recently used spilled to disk.

:class:`SpillBuffer` is a mapping ``task key -> result`` built on ``zict.Buffer`` (the library
Dask's workers use): a *fast* dict in memory, kept in least-recently-used order with the size of
each value (:func:`sizeof`), over a *slow* store on disk (:class:`SpillFiles`).  When the values in
memory weigh more than the target, the least recently used go to disk; reading a spilled key
(a task needs it as input) brings it back transparently; deleting a key (the scheduler released
it) deletes its file.  The memory monitor (:mod:`.monitor`) can also spill on demand, one value at
a time, with :meth:`SpillBuffer.evict`.  Results under :data:`KEEP_BELOW` bytes (most task results)
never go to disk: they are kept in a plain dict beside the LRU.

Values go to disk through the core serializer registry (:func:`taskloom.serialize.serialize`:
pickle protocol 5, buffers out of band), one file per key: a small header (serializer name and
frame sizes), then the frames, written as they are, without joining them.  A peer or client that
asks for a spilled key is sent those frames straight from disk, never unpickled here.  A value
that cannot be pickled, or cannot be written (disk full), stays in memory; this is logged once,
with the key.

Spill files live in a directory of their own per worker (under ``distributed.worker.
local_directory``, default the system temporary directory), removed when the worker closes; the
directories of workers that died without cleaning up are removed by the next worker started there.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import msgpack
import zict
from taskloom.serialize import SerializationError, deserialize, serialize
from taskloom.sizeof import sizeof

from ..comm import Serialized

logger = logging.getLogger("taskloom.distributed.worker")

MEMORY_EXIT_CODE = 75
"""Exit status of a worker process that stopped itself because its memory passed ``terminate``
(``EX_TEMPFAIL``: try again).  Its nanny restarts it and reports the exit as due to memory."""

DIRECTORY_PREFIX = "taskloom-worker-"
_HEADER = struct.Struct("<I")
_UNSAFE = re.compile(r"[^\w.,-]+")


KEEP_BELOW = 1024
"""Results smaller than this (bytes, :func:`sizeof`) are kept in memory in a plain dict beside the
spillable LRU: spilling one would save less than its file costs, and a dict costs a task a
fraction of a microsecond where the LRU's bookkeeping costs over ten."""


def _weight(key: Any, value: Any) -> float:
    return sizeof(value)


class SpillFiles(MutableMapping[Any, Any]):
    """Values on disk, one file per key (the slow side of :class:`SpillBuffer`)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.files: zict.File = zict.File(directory)
        self._names: dict[Any, str] = {}
        self.nbytes: dict[Any, int] = {}  # bytes on disk per key
        self._lock = threading.Lock()
        self._count = 0
        self.written = self.read = 0  # bytes, since the start
        self.write_seconds = self.read_seconds = 0.0
        self.writes = self.reads = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        try:
            name, frames = serialize(value)
        except SerializationError as exc:
            raise CannotSpill(key, exc) from exc
        sizes = [memoryview(f).nbytes for f in frames]
        header = msgpack.packb([name, sizes])
        with self._lock:
            self._count += 1
            filename = f"{self._count}-{_UNSAFE.sub('_', repr(key))[:60]}"
        start = time.perf_counter()
        try:
            self.files[filename] = [_HEADER.pack(len(header)), header, *frames]
        except OSError as exc:
            self.files.discard(filename)
            raise CannotSpill(key, exc) from exc
        elapsed = time.perf_counter() - start
        total = _HEADER.size + len(header) + sum(sizes)
        with self._lock:
            old = self._names.get(key)
            self._names[key] = filename
            self.nbytes[key] = total
            self.written += total
            self.write_seconds += elapsed
            self.writes += 1
        if old is not None:
            self.files.discard(old)

    def frames(self, key: Any) -> tuple[str, list[memoryview]]:
        """``(serializer name, frames)`` of a spilled value, read from disk, not unpickled."""
        filename = self._names[key]
        start = time.perf_counter()
        try:
            buf = memoryview(self.files[filename])
        except KeyError:
            raise KeyError(key) from None
        (hlen,) = _HEADER.unpack_from(buf)
        name, sizes = msgpack.unpackb(buf[_HEADER.size : _HEADER.size + hlen])
        frames, offset = [], _HEADER.size + hlen
        for size in sizes:
            frames.append(buf[offset : offset + size])
            offset += size
        with self._lock:
            self.read += offset
            self.read_seconds += time.perf_counter() - start
            self.reads += 1
        return name, frames

    def __getitem__(self, key: Any) -> Any:
        return deserialize(*self.frames(key))

    def __delitem__(self, key: Any) -> None:
        with self._lock:
            filename = self._names.pop(key)
            self.nbytes.pop(key, None)
        self.files.discard(filename)

    def __contains__(self, key: object) -> bool:
        return key in self._names

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)

    @property
    def total_bytes(self) -> int:
        """Bytes on disk now."""
        return sum(self.nbytes.values())

    def remove(self) -> None:
        """Delete every file and the directory."""
        with self._lock:
            self._names.clear()
            self.nbytes.clear()
        shutil.rmtree(self.directory, ignore_errors=True)


class CannotSpill(Exception):
    """A value could not be written to disk (it cannot be pickled, or the disk is full)."""

    def __init__(self, key: Any, cause: BaseException) -> None:
        super().__init__(key, cause)
        self.key = key
        self.cause = cause


class SpillBuffer(zict.Buffer[Any, Any]):
    """Results by task key: in memory up to ``target`` bytes, the least recently used on disk.

    ``target=math.inf`` keeps everything in memory until :meth:`evict` is called (the monitor
    spills on process memory only).  Values under :data:`KEEP_BELOW` bytes, and values that cannot
    be spilled, are kept in :attr:`pinned`.
    """

    def __init__(self, directory: str, target: float = math.inf) -> None:
        self.spill_files = SpillFiles(directory)
        self._fast_dict: dict[Any, Any] = {}
        super().__init__(self._fast_dict, self.spill_files, target, weight=_weight)
        self.pinned: dict[Any, Any] = {}  # values kept in memory, outside the LRU: see _pin
        self._pinned_nbytes: dict[Any, int] = {}
        self._pinned_total = 0
        self._logged: set[Any] = set()

    @property
    def directory(self) -> str:
        return self.spill_files.directory

    # -- values that stay in memory -----------------------------------------------------------
    def fast_to_slow(self, key: Any, value: Any) -> None:
        try:
            super().fast_to_slow(key, value)
        except CannotSpill as exc:
            self._pin(key, value, int(_weight(key, value)))
            if key not in self._logged:
                self._logged.add(key)
                reason = (
                    "it cannot be pickled"
                    if isinstance(exc.cause, SerializationError)
                    else f"the spill directory {self.directory} cannot be written"
                )
                logger.error("keeping the result of %r in memory: %s (%s)", key, reason, exc.cause)

    def _pin(self, key: Any, value: Any, nbytes: int) -> None:
        """Keep ``value`` in memory, outside the LRU: a small one (spilling it would save less
        than its file costs), or one that could not be spilled."""
        self._pinned_total += nbytes - self._pinned_nbytes.get(key, 0)
        self._pinned_nbytes[key] = nbytes
        self.pinned[key] = value

    def _unpin(self, key: Any) -> bool:
        self._pinned_total -= self._pinned_nbytes.pop(key, 0)
        return self.pinned.pop(key, _MISSING) is not _MISSING

    def _cancel_evict(self, key: Any, value: Any) -> None:
        self._unpin(key)
        super()._cancel_evict(key, value)

    # -- the mapping ----------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        value = self.pinned.get(key, _MISSING)  # most results are small: a dict lookup
        if value is not _MISSING:
            return value
        for _ in range(100):
            try:
                return super().__getitem__(key)
            except KeyError:
                try:
                    return self.pinned[key]
                except KeyError:
                    pass
            # Another thread read the same key back from disk at the same moment (and deleted
            # its file), or spilled it: it is in memory or on disk again, try there.
            if key not in self:
                break
        raise KeyError(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        nbytes = sizeof(value)
        if nbytes < KEEP_BELOW:  # a plain dict, no LRU bookkeeping: most task results
            if key in self._fast_dict or key in self.spill_files._names:
                super().__delitem__(key)  # the key's earlier, larger value
            self._pin(key, value, nbytes)
            return
        self._unpin(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        unpinned = self._unpin(key)
        if self._logged:
            self._logged.discard(key)
        if unpinned and key not in self._fast_dict and key not in self.spill_files._names:
            return
        try:
            super().__delitem__(key)
        except KeyError:
            if not unpinned:
                raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        # the dicts themselves: the zict layers' own __contains__ cost a Python call each
        return key in self._fast_dict or key in self.spill_files._names or key in self.pinned

    def clear(self) -> None:
        """Forget every value (deleting the files) without reading spilled ones back."""
        for key in list(self):
            try:
                del self[key]
            except KeyError:
                pass

    def __len__(self) -> int:
        return super().__len__() + len(self.pinned)

    def __iter__(self) -> Iterator[Any]:
        yield from super().__iter__()
        yield from (k for k in list(self.pinned) if k not in self.fast and k not in self.slow)

    # -- spilling on demand ---------------------------------------------------------------------
    def evict(self) -> int:
        """Spill the least recently used value: its size, 0 if it had to stay in memory, -1 when
        no value is left in memory to spill."""
        try:
            key, _, weight = self.fast.evict()
        except KeyError:
            return -1
        if key is None or key in self.pinned:
            return 0
        return int(weight)

    def spilled_frames(self, key: Any) -> Serialized | None:
        """A spilled value as frames, straight from disk (for a peer); None if it is in memory."""
        if key in self.fast or key in self.pinned:
            return None
        try:
            return Serialized(*self.spill_files.frames(key))
        except KeyError:
            return None

    # -- figures --------------------------------------------------------------------------------
    @property
    def memory(self) -> int:
        """Bytes of results held in memory."""
        return int(self.fast.total_weight) + self._pinned_total

    @property
    def disk(self) -> int:
        """Bytes of results on disk."""
        return self.spill_files.total_bytes

    def metrics(self) -> dict[str, Any]:
        s = self.spill_files
        return {
            "managed": self.memory,
            "spilled": self.disk,
            "spilled_keys": len(s),
            "spill": {
                "written": s.written,
                "read": s.read,
                "writes": s.writes,
                "reads": s.reads,
                "write_seconds": s.write_seconds,
                "read_seconds": s.read_seconds,
            },
        }

    def close(self) -> None:
        """Forget everything and delete the spill directory."""
        super().close()
        self.spill_files.remove()


_MISSING: Any = object()


def to_serialized(data: MutableMapping[Any, Any], key: Any) -> Serialized:
    """The value of ``key`` as frames for the wire: from disk as is if it was spilled."""
    if isinstance(data, SpillBuffer):
        frames = data.spilled_frames(key)
        if frames is not None:
            return frames
    return Serialized.of(data[key])


def data_metrics(data: MutableMapping[Any, Any]) -> dict[str, Any]:
    """What the store holds: bytes in memory and on disk, and the spill counters."""
    if isinstance(data, SpillBuffer):
        return data.metrics()
    return {"spilled": 0, "spilled_keys": 0}  # a plain dict: not worth measuring every second


# -- memory_limit ---------------------------------------------------------------------------------
def total_memory() -> int:
    """This machine's memory in bytes, or the cgroup limit of this process if lower."""
    import psutil

    total = int(psutil.virtual_memory().total)
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def parse_memory_limit(value: Any, nthreads: int = 1) -> int:
    """``memory_limit`` in bytes: ``"4GB"``, a number of bytes, a fraction of the machine's
    memory (``0.5``), ``"auto"`` (the machine's share for ``nthreads`` threads), 0/None: none."""
    if value is None or value == 0 or (isinstance(value, str) and value.strip() in ("0", "", "none")):
        return 0
    total = total_memory()
    if isinstance(value, str) and value.strip().lower() == "auto":
        from taskloom.local import cpu_count

        return int(total * min(1.0, nthreads / max(cpu_count(), 1)))
    if isinstance(value, float) and 0 < value <= 1:
        return int(total * value)
    from ..cluster.local import parse_bytes

    limit = parse_bytes(value)
    if limit < 0:
        raise ValueError(f"memory_limit={value!r}: must not be negative")
    return min(limit, total)


# -- the worker's directory -----------------------------------------------------------------------
_DIR_RE = re.compile(re.escape(DIRECTORY_PREFIX) + r"(\d+)-")


def make_worker_directory(local_directory: str | None = None) -> str:
    """A new directory for this worker under ``local_directory`` (config
    ``distributed.worker.local_directory``, else the system temporary directory).  Directories
    left there by worker processes that no longer exist are removed first."""
    base = _base_directory(local_directory)
    os.makedirs(base, exist_ok=True)
    remove_stale_directories(base)
    return tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{os.getpid()}-", dir=base)


def _base_directory(local_directory: str | None) -> str:
    if local_directory is None:
        import taskloom

        local_directory = taskloom.config.get("distributed.worker.local_directory", None)
    return str(local_directory) if local_directory else tempfile.gettempdir()


def remove_stale_directories(local_directory: str | None = None) -> None:
    """Remove the worker directories (and spill files) of worker processes that no longer exist,
    under ``local_directory`` (default as for :func:`make_worker_directory`).  A nanny whose
    worker was killed may call this; a new worker does it when it starts."""
    import psutil

    base = _base_directory(local_directory)
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        m = _DIR_RE.match(name)
        if m and not psutil.pid_exists(int(m.group(1))):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
