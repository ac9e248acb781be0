"""Adaptive scaling: ``cluster.adapt(minimum, maximum)`` adds workers when work queues, retires idle ones.

:class:`AdaptivePolicy` is the decision, without I/O: each :class:`Observation` (the registered
workers and their queues, the tasks no worker can take, the measured mean task duration, the
workers the cluster has asked for) goes in, a :class:`Decision` comes out:

* **target**, as Dask computes it: the queued work -- tasks processing on the workers plus ready
  tasks without a worker, times the mean task duration -- divided by ``target_duration`` (the
  time that work should take), in workers of the observed size, but never more workers than
  there are tasks to run; at least one when tasks wait and there is no worker; twice the current
  number when the workers' results take more than 60% of their memory limits; always between
  ``minimum`` and ``maximum``.
* **up** to the target at once, when it is above the number of workers asked for.
* **down**, when it is below: workers asked for that have not registered yet go first, then
  those processing nothing (holding least first), as long as the others keep memory for twice
  the results.  A worker is retired only after it has been chosen ``wait_count`` decisions in
  a row -- one busy decision in between starts its count again -- so the size does not flap.

:class:`Adaptive` is the driver: a task on the cluster's loop that observes, decides and acts
every ``interval`` seconds (starting workers; retiring them gracefully through the scheduler,
results copied off first, then closing them); ``log`` keeps its recent decisions and ``stop()``
ends it.  Queued tasks reach new workers through work stealing
(:mod:`..scheduler.stealing`).  Defaults come from ``distributed.adaptive.*``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
from taskloom import config

from . import scaling

if TYPE_CHECKING:
    from ..scheduler.state import SchedulerState
    from .local import LocalCluster

logger = logging.getLogger("taskloom.distributed.cluster")

MEMORY_FRACTION = 0.6  # results above this fraction of the workers' memory limits: double them


@attrs.frozen
class WorkerLoad:
    """One registered worker, as the policy sees it."""

    name: str
    nthreads: int = 1
    processing: int = 0  # tasks sent to it and not finished
    nbytes: int = 0  # bytes of results it holds
    memory_limit: int = 0


@attrs.frozen
class Observation:
    workers: tuple[WorkerLoad, ...]  # the registered workers
    requested: frozenset[str]  # names of the workers the cluster runs or is starting
    unrunnable: int = 0  # ready tasks that no worker can take
    mean_duration: float = 0.0  # seconds per task, as measured


@attrs.frozen
class Decision:
    action: str  # "same", "up" or "down"
    target: int
    workers: tuple[str, ...] = ()  # "down": the names of the workers to retire


def observe(st: SchedulerState, requested: frozenset[str]) -> Observation:
    """What the policy needs from the scheduler's state."""
    workers = tuple(
        WorkerLoad(ws.name, ws.nthreads, len(ws.processing), ws.nbytes, ws.memory_limit)
        for ws in st.workers.values()
        if ws.status in ("running", "paused")
    )
    return Observation(workers, requested, len(st.unrunnable), st.mean_duration)


@attrs.define
class AdaptivePolicy:
    """See the module docstring."""

    minimum: int = 0
    maximum: float = math.inf
    wait_count: int = 3
    target_duration: float = 5.0
    close_counts: dict[str, int] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        if self.minimum < 0 or self.maximum < self.minimum:
            raise ValueError(
                f"adapt: need 0 <= minimum <= maximum, got minimum={self.minimum} maximum={self.maximum}"
            )
        if self.wait_count < 1:
            raise ValueError(f"adapt: wait_count must be at least 1, got {self.wait_count}")
        if self.target_duration <= 0:
            raise ValueError(f"adapt: target_duration must be positive, got {self.target_duration}")

    def target(self, obs: Observation) -> int:
        """The number of workers the observed load wants, within ``minimum`` and ``maximum``."""
        tasks = sum(w.processing for w in obs.workers) + obs.unrunnable
        threads = max(1, round(sum(w.nthreads for w in obs.workers) / len(obs.workers))) if obs.workers else 1
        cpu = math.ceil(tasks * obs.mean_duration / self.target_duration / threads)
        cpu = min(cpu, math.ceil(tasks / threads))  # a few long tasks do not ask for many workers
        if obs.unrunnable and not obs.workers:
            cpu = max(cpu, 1)
        limit = sum(w.memory_limit for w in obs.workers)
        held = sum(w.nbytes for w in obs.workers)
        memory = 2 * len(obs.workers) if limit and held > MEMORY_FRACTION * limit else 0
        return int(min(max(cpu, memory, self.minimum), self.maximum))

    def decide(self, obs: Observation) -> Decision:
        target = self.target(obs)
        planned = len(obs.requested)
        if target >= planned:
            self.close_counts.clear()
            return Decision("up" if target > planned else "same", target)
        observed = {w.name for w in obs.workers}
        not_arrived = sorted(obs.requested - observed)
        to_close = set(not_arrived[: planned - target])
        if planned - len(to_close) > target:
            to_close.update(self.idle_to_close(obs, planned - len(to_close) - target))
        firm = []
        for name in to_close:
            self.close_counts[name] = self.close_counts.get(name, 0) + 1
            if self.close_counts[name] >= self.wait_count:
                firm.append(name)
        for name in list(self.close_counts):
            if name not in to_close:
                del self.close_counts[name]
        if firm:
            for name in firm:
                del self.close_counts[name]
            return Decision("down", target, tuple(sorted(firm)))
        return Decision("same", target)

    def idle_to_close(self, obs: Observation, n: int) -> list[str]:
        """Up to ``n`` workers processing nothing, holding least first, such that the others keep
        memory limits of twice the results held (when limits are known)."""
        idle = sorted(
            (w for w in obs.workers if w.processing == 0 and w.name in obs.requested),
            key=lambda w: (w.nbytes, w.name),
        )
        limit = sum(w.memory_limit for w in obs.workers)
        held = sum(w.nbytes for w in obs.workers)
        chosen = []
        for w in idle[:n]:
            if limit and w.memory_limit and limit - w.memory_limit < 2 * held:
                break
            limit -= w.memory_limit
            chosen.append(w.name)
        return chosen


class Adaptive:
    """Adaptive scaling of a :class:`~.local.LocalCluster` (made by ``cluster.adapt(...)``)."""

    def __init__(
        self,
        cluster: LocalCluster,
        minimum: int | None = None,
        maximum: float | None = None,
        interval: float | None = None,
        wait_count: int | None = None,
        target_duration: float | None = None,
    ) -> None:
        def setting(value: Any, name: str, default: Any) -> Any:
            if value is not None:
                return value
            configured = config.get(f"distributed.adaptive.{name}", default)
            return default if configured is None else configured

        self.cluster = cluster
        self.policy = AdaptivePolicy(
            int(setting(minimum, "minimum", 0)),
            float(setting(maximum, "maximum", math.inf)),
            int(setting(wait_count, "wait_count", 3)),
            float(setting(target_duration, "target_duration", 5.0)),
        )
        self.interval = float(setting(interval, "interval", 1.0))
        if self.interval <= 0:
            raise ValueError(f"adapt: interval must be positive, got {self.interval}")
        self.log: deque[tuple[float, Decision]] = deque(maxlen=1000)  # (time.time(), decision) of changes
        self._task: asyncio.Future[None] | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def minimum(self) -> int:
        return self.policy.minimum

    @property
    def maximum(self) -> float:
        return self.policy.maximum

    @property
    def wait_count(self) -> int:
        return self.policy.wait_count

    def start(self) -> Adaptive:
        self._task = self.cluster._loop.run(self._start())
        return self

    async def _start(self) -> asyncio.Future[None]:
        self._stopping = asyncio.Event()
        return asyncio.ensure_future(self._run())

    def stop(self) -> None:
        """Stop adapting (the current decision is carried out first); the workers stay as they are."""
        if self._task is not None and not self.cluster._loop.loop.is_closed():
            self.cluster._loop.run(self._stop())
        self._task = None

    async def _stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            try:
                await self.adapt()
            except Exception:  # one failed decision must not end adaptivity
                logger.exception("adaptive scaling of %r failed", self.cluster)
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            except TimeoutError:
                pass

    async def adapt(self) -> Decision:
        """Observe, decide, act: once."""
        cluster = self.cluster
        async with cluster._scale_lock:
            await scaling.prune(cluster)
            obs = observe(cluster.scheduler.state, frozenset(cluster.workers))
            decision = self.policy.decide(obs)
            if decision.action == "up":
                logger.info("adapt: %d -> %d workers", len(obs.requested), decision.target)
                self.log.append((time.time(), decision))
                await scaling.start_workers(cluster, decision.target - len(obs.requested))
            elif decision.action == "down":
                logger.info("adapt: retiring %s", ", ".join(decision.workers))
                self.log.append((time.time(), decision))
                await scaling.stop_workers(cluster, list(decision.workers), graceful=True)
        return decision

    def __repr__(self) -> str:
        return (
            f"<Adaptive minimum={self.minimum} maximum={self.maximum} interval={self.interval:g} "
            f"wait_count={self.wait_count}{'' if self.running else ' stopped'}>"
        )
