"""The scheduler server's side of worker life and death: nannies, heartbeats, deaths, restarts.

* Nannies connect with ``register-nanny`` and report each exit of their worker
  (``worker-exited``: how it died, which tasks it was executing); the worker is removed at once
  with that account, which is what :class:`~taskloom.errors.KilledWorkerError` quotes.
* A worker whose connection drops while its nanny is connected is taken out of placement and
  removed when the nanny's report arrives, or after ``NANNY_REPORT_GRACE`` seconds without one.
* Every message from a worker counts as a heartbeat (workers send metrics every
  ``distributed.worker.heartbeat_interval``); a worker not heard from for
  ``distributed.scheduler.worker_ttl`` seconds is removed and its connection closed, so that it
  registers afresh if it wakes up.
* ``restart`` (``client.restart()``): every task is forgotten, each worker with a nanny is
  restarted by it, each one without is told to drop everything and register again; it returns
  once all of them are back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from taskloom import config

from ..batched import BatchedSend
from ..comm import Comm, CommClosedError

if TYPE_CHECKING:
    from .server import Scheduler

logger = logging.getLogger("taskloom.distributed.scheduler")

NANNY_REPORT_GRACE = 1.0  # seconds to wait for a nanny's account of a dropped worker


class WorkerLifecycle:
    """Owned by a :class:`~.server.Scheduler`; see the module docstring."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.ttl = float(config.get("distributed.scheduler.worker_ttl", 30))
        self._reports: dict[str, asyncio.Future[None]] = {}  # address -> its nanny has reported
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._rids = 0
        self._watchdog: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    # -- removing workers --------------------------------------------------------------------------
    def remove(
        self,
        address: str,
        reason: str,
        how: str | None = None,
        executing: Iterable[bytes] | None = None,
        expected: bool = False,
        close: bool = False,
    ) -> None:
        """Remove the worker at ``address`` now; ``close`` also closes its connection."""
        s = self.scheduler
        stream = s.streams.pop(("worker", address), None)
        if stream is not None and close:
            stream.comm.abort()
        if address in s.state.workers:
            level = logging.INFO if expected else logging.WARNING
            logger.log(level, "removing worker %s: %s", address, how or reason)
            s._send(s.state.remove_worker(address, reason, how, executing, expected))
        s._workers_changed.set()
        fut = self._reports.pop(address, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def disconnected(self, address: str, stream: BatchedSend) -> None:
        """The connection of the worker at ``address`` (registered on ``stream``) has ended."""
        s = self.scheduler
        key = ("worker", address)
        if s.streams.get(key) is not stream:  # removed already, or registered again since
            await stream.close()
            return
        s.streams.pop(key)
        await stream.close()
        ws = s.state.workers.get(address)
        if ws is not None and ws.nanny is not None and ("nanny", ws.nanny) in s.streams:
            s._send(s.state.worker_status(address, "closing"))  # no new tasks meanwhile
            fut = self._reports.setdefault(address, asyncio.get_running_loop().create_future())
            try:
                await asyncio.wait_for(asyncio.shield(fut), NANNY_REPORT_GRACE)
            except TimeoutError:
                pass
        if ws is not None and s.state.workers.get(address) is ws:
            self.remove(address, "connection closed", "its connection closed (no account from a nanny)")

    async def _watch(self) -> None:
        """Remove workers that have not been heard from for ``ttl`` seconds."""
        interval = min(max(self.ttl / 5, 0.05), 1.0)
        last = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            late, last = now - last - interval, now
            if late > max(1.0, self.ttl / 4):  # this loop was stalled, not the workers: next time
                continue
            for address in self.scheduler.state.stale_workers(now, self.ttl):
                how = (
                    f"stopped responding: not heard from for more than {self.ttl:g} s "
                    "(distributed.scheduler.worker_ttl)"
                )
                self.remove(address, "heartbeat timeout", how, close=True)

    async def located(self, keys: Iterable[Any], exclude: Iterable[str], timeout: float = 30.0) -> None:
        """Wait until none of ``keys`` is being recovered: each is held by a running worker other
        than those in ``exclude`` (where a client just failed to get it), has failed, or is gone."""
        state = self.scheduler.state
        bad = set(exclude)

        def recovering(key: Any) -> bool:
            ts = state.tasks.get(key)
            if ts is None or ts.state == "erred":
                return False
            if ts.state == "memory":
                return not any(ws.status == "running" and ws.address not in bad for ws in ts.who_has)
            return True  # lost, being computed again

        deadline = time.monotonic() + timeout
        while any(recovering(k) for k in keys) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # -- nannies ---------------------------------------------------------------------------------
    async def nanny_stream(self, comm: Comm, msg: dict[str, Any]) -> None:
        s = self.scheduler
        nanny = msg["id"]
        key = ("nanny", nanny)
        stream = s.streams[key] = BatchedSend(comm)
        try:
            while True:
                for m in await comm.read():
                    self._nanny_message(m)
        except CommClosedError:
            pass
        finally:
            if s.streams.get(key) is stream:
                s.streams.pop(key)
            await stream.close()

    def _nanny_message(self, m: dict[str, Any]) -> None:
        op = m.get("op")
        if op == "worker-exited":
            address = m.get("address") or ""
            ws = self.scheduler.state.workers.get(address)
            if ws is not None and ws.pid == m.get("pid"):
                self.remove(address, "its nanny reported its exit", m.get("how"), m.get("executing"),
                            m.get("expected", False), close=True)  # fmt: skip
            fut = self._reports.pop(address, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif op == "reply":
            fut2 = self._replies.pop(m.get("rid", -1), None)
            if fut2 is not None and not fut2.done():
                fut2.set_result(m)

    # -- restart ---------------------------------------------------------------------------------
    async def restart(self, timeout: float) -> dict[str, Any]:
        """Forget every task and restart every worker; return once they have all registered."""
        s = self.scheduler
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        s._send(s.state.restart("client.restart() restarted every worker"))
        waiting: list[asyncio.Future[dict[str, Any]]] = []
        back: list[str] = []  # addresses of workers that restart in place (no nanny)
        for address, ws in list(s.state.workers.items()):
            nanny = s.streams.get(("nanny", ws.nanny)) if ws.nanny else None
            worker_stream = s.streams.get(("worker", address))
            if nanny is not None:
                self._rids += 1
                fut = self._replies[self._rids] = loop.create_future()
                nanny.send({"op": "restart", "rid": self._rids, "timeout": timeout})
                waiting.append(fut)
            elif worker_stream is not None:
                worker_stream.send({"op": "restart", "reason": "client.restart()"})
                back.append(address)
            self.remove(address, "restart", "restarted", expected=True)
        for fut in waiting:
            reply = await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
            if "error" in reply:
                raise RuntimeError(f"a nanny could not restart its worker: {reply['error']}")
            back.append(reply["address"])
        while not all(a in s.state.workers for a in back):
            left = deadline - loop.time()
            if left <= 0:
                missing = sorted(a for a in back if a not in s.state.workers)
                raise TimeoutError(
                    f"workers did not come back within {timeout:g} s of the restart: {missing}"
                )
            await s.workers_changed(min(left, 0.2))
        return {"workers": len(back)}
