"""Growing and shrinking a :class:`~.local.LocalCluster`, on its loop: ``scale(n)`` and what adapt does.

Workers are started without waiting for them to register.  Workers are stopped gracefully: the
scheduler retires them first (:mod:`..scheduler.retirement`: no new tasks, what they run
finishes, results only they hold are copied to the others) and they close; then their nannies
are closed.  A worker that could not be retired (its results have nowhere to go) is closed
anyway when the cluster must shrink -- its results are recomputed if needed, as after a death --
with a warning.  Which workers go, when the caller does not say: those not registered yet
(still starting), then those processing nothing and holding least
(:func:`..scheduler.retire.workers_to_close`).  Every change holds the cluster's scaling lock,
so ``scale`` and ``adapt`` never interleave.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..nanny import Nanny
from ..scheduler.retire import workers_to_close

if TYPE_CHECKING:
    from .local import LocalCluster

logger = logging.getLogger("taskloom.distributed.cluster")

RETIRE_TIMEOUT = 60.0  # seconds a retiring worker has to hand its results over


def address_of(handle: Any) -> str:
    """The address of the worker a handle (Nanny or in-process Worker) runs ("" while starting)."""
    return str(handle.worker_address if isinstance(handle, Nanny) else handle.address)


def is_gone(handle: Any) -> bool:
    """The handle's worker has stopped for good (closed, or its nanny gave up)."""
    if isinstance(handle, Nanny):
        return handle.status in ("closing", "closed", "failed")
    return bool(handle.closed.is_set())


async def prune(cluster: LocalCluster) -> list[str]:
    """Forget the workers that have stopped for good (retired, or that never started); their names.

    A worker the scheduler has retired (``client.retire_workers``) may still be closing: it is
    waited for, so that it is not counted as one of the workers the cluster has.
    """
    retired = cluster.scheduler.retirer.retired
    closing = [h for h in cluster.workers.values() if not is_gone(h) and _retired(h, retired)]
    await asyncio.gather(*(_close(h) for h in closing), return_exceptions=True)
    gone = [name for name, h in cluster.workers.items() if is_gone(h) or _retired(h, retired)]
    for name in gone:
        handle = cluster.workers.pop(name)
        if isinstance(handle, Nanny) and handle.status == "failed":
            logger.warning("%s could not start; log: %s", name, handle.log)
        retired.pop(address_of(handle), None)
    return gone


def _retired(handle: Any, retired: dict[str, int]) -> bool:
    """The scheduler retired this handle's worker (the same process, for a nanny's)."""
    address = address_of(handle)
    if address not in retired:
        return False
    return not isinstance(handle, Nanny) or handle.pid in (None, retired[address])


def choose(cluster: LocalCluster, k: int) -> list[str]:
    """The names of the ``k`` workers whose departure costs least."""
    st = cluster.scheduler.state
    address = {name: address_of(h) for name, h in cluster.workers.items()}
    starting = [name for name, a in address.items() if a not in st.workers]
    chosen = sorted(starting, key=_number, reverse=True)[:k]
    if len(chosen) < k:
        name_of = {a: name for name, a in address.items() if name not in chosen}
        chosen += [name_of[a] for a in workers_to_close(st, k - len(chosen), list(name_of))]
    return chosen


def _number(name: str) -> int:
    digits = name.rsplit("-", 1)[-1]
    return int(digits) if digits.isdigit() else 0


async def start_workers(cluster: LocalCluster, k: int) -> list[str]:
    """Start ``k`` more workers; their names."""
    names = []
    for _ in range(k):
        name, handle = await cluster._start_worker()
        cluster.workers[name] = handle
        names.append(name)
    return names


async def stop_workers(cluster: LocalCluster, names: list[str], graceful: bool = True) -> dict[str, Any]:
    """Stop the workers ``names``, retiring them first if ``graceful``; the retirement's report."""
    handles = {name: cluster.workers[name] for name in names if name in cluster.workers}
    st = cluster.scheduler.state
    registered = [a for a in (address_of(h) for h in handles.values()) if a in st.workers]
    report: dict[str, Any] = {"retired": {}, "kept": {}}
    if graceful and registered:
        report = await cluster.scheduler.retirer.retire(registered, RETIRE_TIMEOUT)
        for address, why in report["kept"].items():
            logger.warning("closing worker %s anyway: %s; its results are recomputed if needed", address, why)
    await asyncio.gather(*(_close(h) for h in handles.values()), return_exceptions=True)
    for name in handles:
        cluster.workers.pop(name, None)
    return report


async def _close(handle: Any) -> None:
    if isinstance(handle, Nanny):
        await handle.close()
    else:
        await handle.close("scaled down")
        await asyncio.wait_for(handle.finished.wait(), 30)


async def scale(cluster: LocalCluster, n: int) -> None:
    """Have ``n`` workers: start the missing ones, or retire and stop the extra ones."""
    async with cluster._scale_lock:
        await prune(cluster)
        if n > len(cluster.workers):
            await start_workers(cluster, n - len(cluster.workers))
        elif n < len(cluster.workers):
            # with none left there is nowhere to move results to: just stop them
            await stop_workers(cluster, choose(cluster, len(cluster.workers) - n), graceful=n > 0)
