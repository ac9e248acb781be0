"""Profilers: when each task ran and where, CPU and memory over time, how long results were held.

Each profiler is a :class:`~taskloom.diagnostics.Callback` that collects attrs records in
``.results``; ``with Profiler() as prof: ...`` starts from empty results, ``register()`` keeps
adding until ``clear()``.  Times are ``time.time()`` seconds, so records of different profilers
line up (:func:`taskloom.diagnostics.report` draws them on one time axis).

Task times come from the diagnostics hooks, which tell *when a task finished and how long it
ran* (``duration`` is measured where the task ran -- in the worker process for the
``processes`` scheduler).  A task's interval is therefore ``[end - duration, end]`` with ``end``
the moment the hook reached this process.  A worker runs one task at a time, so when results
arrive in a batch (the ``processes`` scheduler returns a worker's finished batch in one
message) the intervals are laid back to back, ending at the arrival of the last one, instead of
overlapping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from ..graph import Key
from ._shared import Recorder, describe_error, needed_tasks

__all__ = ["CacheProfiler", "CacheRecord", "Profiler", "ResourceProfiler", "ResourceRecord", "TaskRecord"]


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class TaskRecord:
    """One task run: ``key`` ran on ``worker`` from ``start`` to ``end``; ``error`` is what it
    raised (``"ValueError: message"``) or ``None``."""

    key: Any
    start: float
    end: float
    worker: str
    error: str | None = None

    @property
    def duration(self) -> float:
        """Seconds the task ran."""
        return self.end - self.start


class Profiler(Recorder[TaskRecord]):
    """Record every task: its key, start and end time, worker and error.

    ::

        with Profiler() as prof:
            total.compute()
        slowest = max(prof.results, key=lambda r: r.duration)

    The records of a compute are added when it finishes (per task, the hook only appends a
    tuple), so read ``results`` after the compute.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[tuple[Any, str, float, float, str | None]] = []

    def task_finish(self, key: Any, worker: str, duration: float, error: BaseException | None) -> None:
        # list.append is atomic: no lock on the per-task path
        self._pending.append(
            (key, worker, time.time(), duration, None if error is None else describe_error(error))
        )

    def finish(self, keys: Sequence[Any], error: BaseException | None) -> None:
        with self._lock:
            self._flush()

    def unregister(self) -> None:
        super().unregister()
        with self._lock:
            self._flush()

    def _reset(self) -> None:
        self._pending = []

    def _flush(self) -> None:
        """Turn the pending tuples into records, laying each worker's tasks back to back."""
        pending, self._pending = self._pending, []
        records: list[TaskRecord] = []
        next_start: dict[str, float] = {}  # per worker, the start of its next task
        for key, worker, end, duration, error in reversed(pending):
            limit = next_start.get(worker)
            if limit is not None and end > limit:
                end = limit
            start = end - duration
            next_start[worker] = start
            records.append(TaskRecord(key, start, end, worker, error))
        records.reverse()
        self.results.extend(records)


# ---------------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class ResourceRecord:
    """A sample at ``time``: ``cpu`` percent (100 is one core busy) and ``memory`` resident
    bytes, summed over this process and its child processes."""

    time: float
    cpu: float
    memory: int


def _require_psutil() -> None:
    try:
        import psutil  # noqa: F401
    except ImportError:
        raise ImportError(
            "ResourceProfiler needs psutil: pip install 'taskloom[diagnostics]' (or psutil)"
        ) from None


_SCAN_SHARE = 0.05  # at most this share of the time goes to looking for child processes


class _Sampler:
    """A thread that samples CPU and memory every ``dt`` seconds until :meth:`stop`.

    Each sample reads two small ``/proc`` files per known process.  Listing the child
    processes reads the entry of every process on the system, which is slow while tasks keep
    the GIL busy, so the list is refreshed with every sample only while that is cheap: the next
    refresh waits until listing has taken at most ``_SCAN_SHARE`` of the time (and the last
    sample always refreshes).
    """

    def __init__(self, dt: float, sink: Callable[[ResourceRecord], None]) -> None:
        self.dt = dt
        self.sink = sink
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskloom-resource-profiler", daemon=True)
        import psutil

        self._me = psutil.Process()
        self._procs: dict[int, Any] = {}
        self._next_scan = 0.0
        self._sample()  # primes cpu_percent: its first reading of a process is meaningless
        self._thread.start()

    def stop(self) -> None:
        """Take a last sample and end the thread (joined before this returns)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        last = None
        while not self._stop.wait(self.dt):
            last = self._sample()
            self.sink(last)
        # The last stretch, and at least one sample per compute -- unless a sample was just
        # taken: CPU % over a millisecond or two is noise.
        if last is None or time.time() - last.time >= self.dt / 4:
            self.sink(self._sample(rescan=True))

    def _sample(self, rescan: bool = False) -> ResourceRecord:
        import psutil

        now = time.time()
        if rescan or now >= self._next_scan:
            self._scan()
            cost = time.time() - now
            self._next_scan = now + cost / _SCAN_SHARE
        cpu = 0.0
        memory = 0
        for pid, proc in list(self._procs.items()):
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    memory += proc.memory_info().rss
            except psutil.Error:  # it has ended
                del self._procs[pid]
        return ResourceRecord(now, cpu, memory)

    def _scan(self) -> None:
        """Find the child processes (listing them reads every process's ``/proc`` entry)."""
        import psutil

        try:
            found = [self._me, *self._me.children(recursive=True)]
        except psutil.Error:
            found = [self._me]
        # the known objects keep cpu_percent's baseline; a new one reads 0.0 the first time
        self._procs = {p.pid: self._procs.get(p.pid, p) for p in found}


class ResourceProfiler(Recorder[ResourceRecord]):
    """Sample CPU % and memory every ``dt`` seconds while a computation runs.

    Sampling covers this process and its children (the ``processes`` scheduler's workers) and
    runs on a background thread from compute start to compute finish; the thread is stopped
    and joined when the compute finishes (or when the profiler is unregistered), after a last
    sample, so every compute has at least one record.  Needs ``psutil``.
    """

    def __init__(self, dt: float = 0.1) -> None:
        _require_psutil()
        if dt <= 0:
            raise ValueError(f"dt must be positive, got {dt!r}")
        super().__init__()
        self.dt = dt
        self._sampler: _Sampler | None = None
        self._computes = 0  # computes running now (they may nest or overlap)

    def start(self, graph: Mapping[Any, Any], keys: Sequence[Any], scheduler: str) -> None:
        with self._lock:
            self._computes += 1
            if self._sampler is None:
                self._sampler = _Sampler(self.dt, self._add)

    def finish(self, keys: Sequence[Any], error: BaseException | None) -> None:
        with self._lock:
            self._computes = max(0, self._computes - 1)
            if self._computes:
                return
            sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.stop()  # outside the lock: its last sample takes it

    def unregister(self) -> None:
        super().unregister()
        with self._lock:
            self._computes = 0
            sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.stop()

    def _add(self, record: ResourceRecord) -> None:
        with self._lock:
            self.results.append(record)


# ---------------------------------------------------------------------------------------------
# Cached results
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class CacheRecord:
    """The result of ``key``, ``nbytes`` bytes made on ``worker`` in ``cost`` seconds, was held
    in memory from ``stored`` until ``freed``."""

    key: Any
    worker: str
    cost: float
    stored: float
    freed: float
    nbytes: int = 0


def occupancy(records: Iterable[CacheRecord], metric: str = "count") -> list[tuple[float, int]]:
    """``(time, results held)`` at every store and free of ``records``, in time order.

    ``metric="count"`` counts the results held; ``metric="nbytes"`` sums their sizes in bytes.
    """
    if metric not in ("count", "nbytes"):
        raise ValueError(f"occupancy metric must be 'count' or 'nbytes', got {metric!r}")
    by_size = metric == "nbytes"
    events = [(r.stored, r.nbytes if by_size else 1) for r in records]
    events += [(r.freed, -(r.nbytes if by_size else 1)) for r in records]
    events.sort(key=lambda e: (e[0], -e[1]))
    out: list[tuple[float, int]] = []
    held = 0
    for t, change in events:
        held += change
        out.append((t, held))
    return out


class CacheProfiler(Recorder[CacheRecord]):
    """Record how long each task's result is held, and what it cost to make.

    A result is stored when its task finishes and freed when the engine drops it: when the last
    task of the compute that needs it finishes, or at the end of the compute for a requested
    key (or after an error).  The dependents come from the graph at compute start, culled as
    the planner culls it, so the release times follow the engine's reference counting.
    :meth:`occupancy` gives the number of results held over time -- what Dask's
    ``CacheProfiler`` shows with its default metric.

    Each record carries the result's size in bytes (``nbytes``): :func:`taskloom.sizeof.sizeof`
    of the value for in-process schedulers, the serialized size the worker reports for the
    ``processes`` and ``distributed`` schedulers.  ``occupancy("nbytes")`` gives bytes held
    over time -- what Dask's ``CacheProfiler(metric=nbytes)`` shows.
    """

    def __init__(self) -> None:
        super().__init__()
        self._computes = 0
        self._deps: dict[Key, tuple[Key, ...]] = {}
        self._needed_by: dict[Key, int] = {}  # tasks still to run that need the key
        self._held: dict[Key, tuple[str, float, float, int]] = {}  # key -> (worker, cost, stored, nbytes)

    def start(self, graph: Mapping[Any, Any], keys: Sequence[Any], scheduler: str) -> None:
        found = needed_tasks(graph, keys) or {}
        deps = {k: ds for k, ds in found.items() if ds is not None}  # the tasks
        with self._lock:
            self._computes += 1
            self._deps.update(deps)
            needed_by = self._needed_by
            for ds in deps.values():
                for d in ds:
                    if d in deps:
                        needed_by[d] = needed_by.get(d, 0) + 1
            for k in keys:  # a requested result is held until the compute ends
                if k in deps:
                    needed_by[k] = needed_by.get(k, 0) + 1

    def task_finish(
        self, key: Any, worker: str, duration: float, error: BaseException | None, nbytes: int | None = None
    ) -> None:
        if error is not None:
            return  # no result; the engine keeps its inputs until the compute ends
        now = time.time()
        with self._lock:
            self._held[key] = (worker, duration, now, nbytes or 0)
            needed_by = self._needed_by
            for d in self._deps.get(key, ()):
                n = needed_by.get(d, 0) - 1
                if n > 0:
                    needed_by[d] = n
                    continue
                needed_by.pop(d, None)
                self._free(d, now)

    def finish(self, keys: Sequence[Any], error: BaseException | None) -> None:
        now = time.time()
        with self._lock:
            self._computes = max(0, self._computes - 1)
            if self._computes:  # a nested or overlapping compute ended: release its outputs
                needed_by = self._needed_by
                for k in keys:
                    n = needed_by.get(k, 0) - 1
                    if n > 0:
                        needed_by[k] = n
                    else:
                        needed_by.pop(k, None)
                        self._free(k, now)
                return
            for k in list(self._held):
                self._free(k, now)
            self._reset()

    def occupancy(self, metric: str = "count") -> list[tuple[float, int]]:
        """``(time, results held)`` at every store and free, in time order: their number
        (``metric="count"``) or their total size in bytes (``metric="nbytes"``)."""
        return occupancy(self.results, metric)

    def _free(self, key: Key, now: float) -> None:
        entry = self._held.pop(key, None)
        if entry is not None:
            worker, cost, stored, nbytes = entry
            self.results.append(CacheRecord(key, worker, cost, stored, now, nbytes))

    def _reset(self) -> None:
        self._computes = 0
        self._deps = {}
        self._needed_by = {}
        self._held = {}
