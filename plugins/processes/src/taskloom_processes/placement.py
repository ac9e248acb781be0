"""Where a ready task should run, and how much work to keep queued per worker (no I/O here).

* Locality first: if the task needs more than ``LOCALITY_BYTES`` of results that live only in
  worker processes, it goes to the worker holding the most of those bytes (moving the task is
  cheaper than moving the data), even if that worker is busy.
* Otherwise to the least-loaded worker that has room.
* Each worker keeps enough tasks queued to hide a message round trip: the queue depth grows as
  the measured mean task duration shrinks, from 2 (long tasks stay balanced) to ``MAX_DEPTH``
  (tiny tasks travel in large batches).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

LOCALITY_BYTES = 1 << 20
MAX_DEPTH = 512
ROUND_TRIP_SECONDS = 0.004  # the queue should hold at least this much work per worker


class Placement:
    """Per-compute placement state: mean task duration and the depth it implies."""

    def __init__(self, nworkers: int) -> None:
        self.nworkers = nworkers
        self.mean_duration: float | None = None

    def observe(self, duration: float) -> None:
        """Fold one measured task duration into the running mean."""
        m = self.mean_duration
        self.mean_duration = duration if m is None else 0.9 * m + 0.1 * duration

    @property
    def depth(self) -> int:
        """How many tasks each worker should have queued or running."""
        m = self.mean_duration
        if m is None:
            return 2
        return max(2, min(MAX_DEPTH, int(ROUND_TRIP_SECONDS / max(m, 1e-7))))

    def choose(
        self,
        deps: Iterable[Any],
        who_has: Mapping[Any, set[int]],
        held_bytes: Mapping[Any, int],
        loads: Sequence[int],
        last: int = -1,
    ) -> int | None:
        """The index of the worker for a task with dependencies ``deps``, or None if all are full.

        ``held_bytes[key]``: size of a result that lives only in worker processes;
        ``loads[w]``: tasks queued or running on worker ``w``; ``last``: the worker that got the
        previous task of this round -- consecutive tasks (siblings, in depth-first order) stay
        together until that worker is half a queue ahead of the least loaded one, so their
        common dependents can follow them there.
        """
        best, best_bytes = -1, 0
        scores: dict[int, int] | None = None
        for dep in deps if held_bytes else ():
            n = held_bytes.get(dep)
            if n:
                if scores is None:
                    scores = {}
                for w in who_has.get(dep, ()):
                    scores[w] = scores.get(w, 0) + n
        if scores:
            for w, b in scores.items():
                if b > best_bytes:
                    best, best_bytes = w, b
            if best_bytes >= LOCALITY_BYTES:
                return best
        depth = self.depth
        w = min(range(len(loads)), key=loads.__getitem__)
        if last >= 0 and loads[last] < depth and loads[last] - loads[w] < max(1, depth // 2):
            return last
        return w if loads[w] < depth else None
