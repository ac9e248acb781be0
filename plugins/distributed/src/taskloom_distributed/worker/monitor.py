"""The worker's memory policy as a state machine: process memory in, spill/pause/terminate out.

The worker measures its process memory (RSS) every ``monitor_interval`` seconds and feeds it to
:meth:`MemoryMonitor.check`, which returns *instructions* for the server:

- ``("spill", target_bytes)``: memory is above ``spill``; write least-recently-used results to
  disk until the process is below ``target`` (below ``spill`` when ``target`` is disabled).  The
  server spills with :func:`spill_until_below` and then calls :meth:`MemoryMonitor.spilled`.
- ``("pause", text)`` / ``("resume", text)``: memory crossed ``pause``; a paused worker starts
  no new task and fetches nothing until memory is back below it.
- ``("terminate", text)``: memory is above ``terminate``; the worker exits with
  :data:`~.memory.MEMORY_EXIT_CODE` so that its nanny restarts it.
- ``("warn", text)``: everything spillable is on disk and memory is still above the target
  (memory held outside task results: a leak, or memory not returned to the OS); once per episode.

Every fraction is of ``memory_limit`` and may be ``False``/``None`` to disable that step.  The
``target`` fraction also bounds the managed data (results) kept in memory by the data store
itself (:class:`~.memory.SpillBuffer`), without waiting for the monitor.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from taskloom.errors import ConfigError

Instructions = list[tuple[Any, ...]]

FRACTIONS = ("target", "spill", "pause", "terminate")
CONFIG_PREFIX = "distributed.worker.memory"


def _fraction(name: str, value: Any) -> float | None:
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in ("false", "none", "off", ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or not 0 < number <= 1:
        raise ConfigError(
            f"{CONFIG_PREFIX}.{name} = {value!r}: expected a fraction of memory_limit in (0, 1], "
            "or False to disable it"
        )
    return number


@attrs.frozen
class MemoryLimits:
    """A worker's ``memory_limit`` in bytes (0: none) and its thresholds as fractions of it."""

    limit: int = 0
    target: float | None = 0.6
    spill: float | None = 0.7
    pause: float | None = 0.8
    terminate: float | None = 0.95
    monitor_interval: float = 0.1

    @classmethod
    def from_config(
        cls, limit: int, config: Mapping[str, Any] | None = None, **overrides: Any
    ) -> MemoryLimits:
        """Thresholds from ``distributed.worker.memory.*`` (or ``config``), ``overrides`` on top."""
        if config is None:
            import taskloom

            config = taskloom.config.get(CONFIG_PREFIX, {})
        merged = {**config, **{k: v for k, v in overrides.items() if v is not None}}
        unknown = set(overrides) - {*FRACTIONS, "monitor_interval"}
        if unknown:
            known = [*FRACTIONS, "monitor_interval"]
            raise TypeError(f"unknown memory settings {sorted(unknown)}; known: {known}")
        fractions = {name: _fraction(name, merged.get(name, getattr(cls(), name))) for name in FRACTIONS}
        interval = merged.get("monitor_interval", 0.1)
        try:
            interval = float(interval)
        except (TypeError, ValueError):
            interval = -1.0
        if not interval > 0:
            raise ConfigError(
                f"{CONFIG_PREFIX}.monitor_interval = {merged.get('monitor_interval')!r}: "
                "expected a number of seconds > 0"
            )
        return cls(int(limit or 0), monitor_interval=interval, **fractions)

    def bytes(self, name: str) -> int | None:
        """The threshold ``name`` in bytes, or None if disabled (or there is no limit)."""
        fraction = getattr(self, name)
        if not self.limit or fraction is None:
            return None
        return int(self.limit * fraction)

    @property
    def spills(self) -> bool:
        """True if results are ever written to disk."""
        return bool(self.limit) and (self.target is not None or self.spill is not None)

    @property
    def monitored(self) -> bool:
        """True if process memory needs watching (spill, pause or terminate is on)."""
        return any(self.bytes(name) is not None for name in ("spill", "pause", "terminate"))


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


class MemoryMonitor:
    """Decides what the worker does about its process memory; no I/O, no clock."""

    def __init__(self, limits: MemoryLimits) -> None:
        self.limits = limits
        self.status = "running"  # running | paused | terminating
        self._warned = False  # the "nothing left to spill" warning of this episode was logged
        self.spill_target = limits.bytes("target") or limits.bytes("spill") or 0

    def _usage(self, rss: int) -> str:
        return f"process memory {_mb(rss)}, memory_limit {_mb(self.limits.limit)}"

    def check(self, rss: int) -> Instructions:
        """The process uses ``rss`` bytes: what to do now."""
        if self.status == "terminating":
            return []
        lim = self.limits
        terminate = lim.bytes("terminate")
        if terminate is not None and rss > terminate:
            self.status = "terminating"
            return [
                (
                    "terminate",
                    f"worker memory above the terminate threshold ({lim.terminate:.0%}): "
                    f"{self._usage(rss)}; restarting",
                )
            ]
        spill = lim.bytes("spill")
        if spill is not None and rss > spill:
            return [("spill", self.spill_target)]
        if spill is None or rss <= self.spill_target:
            self._warned = False
        return self._pause_or_resume(rss)

    def spilled(self, rss: int, exhausted: bool) -> Instructions:
        """A spill round ended at ``rss`` bytes; ``exhausted``: nothing was left to spill."""
        out: Instructions = []
        if exhausted and rss > self.spill_target and not self._warned:
            self._warned = True
            out.append(
                (
                    "warn",
                    f"worker memory stays above the spill target after spilling every result to "
                    f"disk ({self._usage(rss)}): memory held outside task results (a leak, or "
                    "memory the allocator has not returned to the operating system)",
                )
            )
        return out + self._pause_or_resume(rss)

    def _pause_or_resume(self, rss: int) -> Instructions:
        pause = self.limits.bytes("pause")
        if pause is None:
            return []
        if self.status == "running" and rss > pause:
            self.status = "paused"
            return [("pause", f"worker paused, memory above {self.limits.pause:.0%}: {self._usage(rss)}")]
        if self.status == "paused" and rss <= pause:
            self.status = "running"
            return [("resume", f"worker resumed, memory back below pause: {self._usage(rss)}")]
        return []


@attrs.define
class SpillRound:
    """What one call of :func:`spill_until_below` did."""

    count: int = 0  # values written to disk
    nbytes: int = 0  # their in-memory size
    rss: int = 0  # process memory at the end
    exhausted: bool = False  # nothing left to spill
    done: bool = False  # below the target


def spill_until_below(
    target: int,
    evict: Callable[[], int],
    measure: Callable[[], int],
    budget: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    collect: Callable[[], Any] = gc.collect,
) -> SpillRound:
    """Evict least-recently-used values until ``measure()`` is at most ``target``.

    ``evict()`` spills one value and returns its size (0 if it had to stay in memory, -1 when
    nothing is left to spill).  Stops after ``budget`` seconds so the caller can let other work
    run between rounds; ``done`` and ``exhausted`` say whether another round is needed.  Once
    the evicted bytes cover the excess but memory has not gone down, runs the garbage collector
    once (objects freed by reference cycles only).
    """
    out = SpillRound(rss=measure())
    need = out.rss - target
    collected = False
    start = clock()
    while out.rss > target:
        freed = evict()
        if freed < 0:
            out.exhausted = True
            return out
        if freed:
            out.count += 1
            out.nbytes += freed
        out.rss = measure()
        if out.nbytes >= need and out.rss > target and not collected:
            collected = True
            collect()
            out.rss = measure()
        if clock() - start > budget:
            break
    out.done = out.rss <= target
    return out
