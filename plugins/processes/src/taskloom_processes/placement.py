"""Where ready tasks should run, and how much work to keep queued per worker (no I/O here).

* Locality first: if a task needs more than ``LOCALITY_BYTES`` of results that live only in
  worker processes, it goes to the worker holding the most of those bytes (moving the task is
  cheaper than moving the data), even if that worker is busy.
* Otherwise the ready tasks are shared out between the workers that want more.
* Each worker keeps enough tasks queued to hide a message round trip: the queue depth grows as
  the measured time per task shrinks, from 1 (long tasks go one at a time to whichever worker
  is free, so an unevenly loaded machine still balances them) to ``MAX_DEPTH`` (tiny tasks
  travel in large batches).  Until a duration is measured the depth is 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

LOCALITY_BYTES = 1 << 20
MAX_DEPTH = 1024
ROUND_TRIP_SECONDS = 0.004  # the queue should hold at least this much work per worker


class Placement:
    """Per-compute placement state: time per task and the queue depth it implies."""

    def __init__(self) -> None:
        self.mean_duration: float | None = None
        self.depth = 1

    def observe(self, seconds: float, count: int) -> None:
        """A worker spent ``seconds`` running ``count`` tasks (and reporting them)."""
        if count <= 0:
            return
        d = seconds / count
        m = self.mean_duration
        m = d if m is None else 0.5 * m + 0.5 * d
        self.mean_duration = m
        self.depth = min(MAX_DEPTH, 1 + int(ROUND_TRIP_SECONDS / max(m, 1e-7)))

    def wants(self, load: int) -> bool:
        """Whether a worker with ``load`` tasks queued or running should get more now.

        Up to ``depth``; once the queue is deep, only when it has run down to half (large
        batches rather than a message per report).
        """
        depth = self.depth
        return load < depth and (depth < 8 or load <= depth // 2)


def locality(deps: Iterable[Any], where: Mapping[Any, int], held_bytes: Mapping[Any, int]) -> int | None:
    """The worker that should run a task needing ``deps`` because it holds its large inputs.

    ``held_bytes[key]``: the size of a result that lives only in worker processes;
    ``where[key]``: a bit mask of the workers that hold it.  ``None`` when less than
    ``LOCALITY_BYTES`` would move.
    """
    scores: dict[int, int] | None = None
    for dep in deps:
        n = held_bytes.get(dep)
        if n:
            if scores is None:
                scores = {}
            bits = where.get(dep, 0)
            w = 0
            while bits:
                if bits & 1:
                    scores[w] = scores.get(w, 0) + n
                bits >>= 1
                w += 1
    if not scores:
        return None
    best = max(scores, key=scores.__getitem__)
    return best if scores[best] >= LOCALITY_BYTES else None
