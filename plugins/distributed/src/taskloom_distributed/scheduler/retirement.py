"""Retiring workers gracefully, on the scheduler's loop: copy their unique results off, then close them.

:class:`Retirer` drives a :class:`~.retire.Retirement` (the rules, no I/O): it sends the
``acquire-replicas`` requests, polls until each leaving worker is drained -- nothing unique on
it, nothing running there -- and then removes that worker from the state (an expected departure:
no task is blamed, nothing is recomputed) and tells it to close; a worker started by a nanny
closes on purpose, so its nanny closes too.  A worker that cannot be drained (nowhere to copy
its results, or not within ``timeout``) stays, taking tasks again, and is reported with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..comm import CommClosedError
from .retire import Retirement

if TYPE_CHECKING:
    from .server import Scheduler

logger = logging.getLogger("taskloom.distributed.scheduler")

POLL = 0.05  # seconds between two looks at the copies still on their way
RETRY_AFTER = 5.0  # seconds after which a copy that has not arrived is asked for again


class Retirer:
    """Owned by a :class:`~.server.Scheduler`: ``await retirer.retire([...])``."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._retiring: dict[str, asyncio.Future[Any]] = {}  # address -> why kept (None: retired)
        self.retired: dict[str, int] = {}  # address -> pid of the workers retired (and told to close)

    def resolve(self, workers: Iterable[str]) -> list[str]:
        """Worker addresses for ``workers`` given by address or by name; unknown ones are an error."""
        st = self.scheduler.state
        by_name = {ws.name: a for a, ws in st.workers.items()}
        out: list[str] = []
        unknown = []
        for w in workers:
            address = w if w in st.workers else by_name.get(w)
            if address is None:
                unknown.append(w)
            elif address not in out:
                out.append(address)
        if unknown:
            known = sorted(st.workers)
            raise ValueError(f"retire_workers: no such worker {unknown!r}; the workers are {known}")
        return out

    async def retire(self, workers: Iterable[str], timeout: float = 60.0) -> dict[str, Any]:
        """Retire ``workers`` (addresses or names).

        Returns ``{"retired": {address: info}, "kept": {address: why it stays}}``.
        """
        s = self.scheduler
        st = s.state
        loop = asyncio.get_running_loop()
        addresses = self.resolve(workers)
        others = {a: self._retiring[a] for a in addresses if a in self._retiring}  # asked already
        mine = [a for a in addresses if a not in others]
        for a in mine:
            self._retiring[a] = loop.create_future()
        infos = {a: _info(st.workers[a]) for a in addresses}
        retirement = Retirement(frozenset(mine), RETRY_AFTER)
        retired: dict[str, Any] = {}
        kept: dict[str, str] = {}
        pending = set(mine)
        try:
            s._send(retirement.start(st))
            deadline = loop.time() + timeout
            while pending:
                retirement.count_moved(st)
                step = retirement.step(st, loop.time())
                s._send(step.messages)
                for a in step.gone:
                    if a in pending:
                        pending.discard(a)
                        kept[a] = "it left the cluster while being retired"
                for a in step.drained:
                    if a in pending:
                        pending.discard(a)
                        retired[a] = {**infos[a], "moved": retirement.moved.get(a, 0)}
                        self._close(a)
                for a, why in step.stuck.items():
                    if a in pending:
                        pending.discard(a)
                        kept[a] = why
                if not pending:
                    break
                if loop.time() > deadline:
                    for a in pending:
                        ws = st.workers[a]
                        left = sum(1 for ts in ws.has_what if {h.address for h in ts.who_has} <= set(mine))
                        kept[a] = (
                            f"not drained within {timeout:g} s ({left} unique result(s) still to copy, "
                            f"{len(ws.processing)} task(s) still processing there)"
                        )
                    pending.clear()
                    break
                await asyncio.sleep(POLL)
        finally:  # also when cancelled: the workers not retired take tasks again
            s._send(retirement.abort(st, [a for a in mine if a not in retired]))
            for a in mine:
                fut = self._retiring.pop(a)
                if not fut.done():
                    fut.set_result(None if a in retired else kept.get(a, "the retirement was cancelled"))
        for a, why in kept.items():
            logger.warning("could not retire worker %s: %s", a, why)
        for a, fut in others.items():  # another request is retiring it: its outcome is ours
            why = await asyncio.shield(fut)
            if why is None:
                retired[a] = {**infos[a], "moved": 0}
            else:
                kept[a] = why
        if retired:
            st.events.append(("retire-workers", sorted(retired)))
        return {"retired": retired, "kept": kept}

    def _close(self, address: str) -> None:
        """``address`` is drained: remove it (blaming nothing) and tell it to close."""
        s = self.scheduler
        ws = s.state.workers.get(address)
        self.retired[address] = ws.pid if ws is not None else 0
        stream = s.streams.get(("worker", address))
        if stream is not None:
            try:
                stream.send({"op": "close", "reason": "retired"})
            except CommClosedError:
                pass
        s.lifecycle.remove(address, "retired", "retired gracefully", expected=True)


def _info(ws: Any) -> dict[str, Any]:
    return {"address": ws.address, "name": ws.name, "pid": ws.pid, "nthreads": ws.nthreads}
