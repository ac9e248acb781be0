"""Placement: which running worker a ready task goes to (the one where it would start soonest).

The estimated start time on a worker is the bytes of the task's inputs that would have to move
there divided by ``BANDWIDTH``, plus ``TRANSFER_LATENCY`` per input to fetch, plus the work
already queued there per thread (at the measured mean task duration).  Only the workers a
task's restrictions allow are considered (all of them, if none does and the restriction is
loose).  Tasks without inputs submitted together in a large batch go to one worker in runs of
consecutive priority (siblings of a reduction meet where they were made).  No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .restrictions import allows

if TYPE_CHECKING:
    from .state import SchedulerState
    from .tasks import TaskState, WorkerInfo

BANDWIDTH = 500e6  # bytes/s assumed between workers, for placement
TRANSFER_LATENCY = 0.0005  # seconds a transfer from a peer costs whatever its size, for placement


def decide_worker(st: SchedulerState, ts: TaskState) -> WorkerInfo | None:
    """The running worker where ``ts`` would start soonest (input transfer + queued work),
    among those its restrictions allow (None: no running worker may take it now)."""
    if not st.running:
        return None
    candidates: Iterable[WorkerInfo] = st.running.values()
    if ts.restrictions is not None:
        allowed = [ws for ws in st.running.values() if allows(ts, ws)]
        if not allowed and not ts.loose:
            return None
        candidates = allowed or candidates
    elif st._run_length > 1 and not ts.dependencies:
        current, left = st._run
        if current is not None and left > 0 and st.running.get(current.address) is current:
            st._run = (current, left - 1)
            return current
        first = min(st.running.values(), key=lambda w: len(w.processing) / w.nthreads)
        st._run = (first, st._run_length - 1)
        return first
    if len(st.running) > 8 and ts.restrictions is None:  # (few workers: all are weighed)
        holders = {ws for dep in ts.dependencies for ws in dep.who_has if ws.status == "running"}
        if holders:
            least = min(st.running.values(), key=lambda w: len(w.processing) / w.nthreads)
            candidates = holders | {least}
    best, best_cost = None, float("inf")
    for ws in candidates:
        missing = 0
        transfers = 0
        for dep in ts.dependencies:
            if ws not in dep.who_has:
                missing += dep.nbytes
                transfers += 1
        cost = (
            missing / BANDWIDTH
            + transfers * TRANSFER_LATENCY
            + len(ws.processing) / ws.nthreads * st.mean_duration
        )
        if cost < best_cost:
            best, best_cost = ws, cost
    return best
