"""The worker's link to the scheduler: registration, the message loop, heartbeats and reconnection.

The worker registers over one connection that then carries a batched stream both ways
(:class:`~..batched.BatchedSend` out, lists of messages in).  Messages from the scheduler go to
the state machine, or are handled here (plugins, client configurations, close, restart, state
dumps).  When the stream ends, the worker drops every task and result -- the scheduler has
forgotten them -- and registers afresh for up to ``distributed.worker.reconnect_timeout``
seconds; failing that, it closes.  Metrics go every ``distributed.worker.heartbeat_interval``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from taskloom.serialize import deserialize

from ..batched import BatchedSend
from ..comm import Comm, CommClosedError, connect, connect_handshake
from .dump import worker_state
from .state import WorkerState

if TYPE_CHECKING:
    from .server import Worker

logger = logging.getLogger("taskloom.distributed.worker")

STREAM_INTERVAL = 0.0005  # seconds: results finished sooner after the last write to the scheduler wait


async def register(worker: Worker) -> Comm:
    """Connect to the scheduler and register with it (at start, and afresh after losing it)."""
    comm = await connect(worker.scheduler_address, worker.client_ssl_context)
    await connect_handshake(comm, worker.auth_token, "worker", worker.name)
    comm.unpickle = False  # task specifications stay frames until they run (see Worker._run_task)
    await comm.write(
        {
            "op": "register-worker",
            "address": worker.address,
            "name": worker.name or worker.address,
            "nthreads": worker.nthreads,
            "memory_limit": worker.memory_limit,
            "pid": os.getpid(),
            "nanny": worker.nanny.nanny_id if worker.nanny is not None else None,
            "log": worker.nanny.log if worker.nanny is not None else "",
        }
    )
    return comm


async def reconnect(worker: Worker) -> Comm | None:
    """The scheduler stream ended: drop every task and result (the scheduler has forgotten
    them) and register afresh, trying for ``distributed.worker.reconnect_timeout`` seconds."""
    old, worker.stream = worker.stream, None
    if old is not None:
        old.comm.close()
    worker._epoch += 1  # what still runs or arrives from before is thrown away
    paused = getattr(worker.state, "paused", False)
    worker.data.clear()
    worker.state = WorkerState(worker.nthreads, worker.address, data=worker.data)
    worker.runtime.worker.state = worker.state  # type: ignore[attr-defined]
    if paused:
        worker._do(worker.state.set_paused(True))
    deadline = time.monotonic() + worker.reconnect_timeout
    delay = 0.05
    while not worker.closed.is_set():
        try:
            comm = await register(worker)
        except (OSError, ConnectionError) as exc:
            if time.monotonic() + delay > deadline:
                logger.warning("worker %s: cannot reach the scheduler: %s", worker.address, exc)
                return None
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)
            continue
        worker.stream = BatchedSend(comm, STREAM_INTERVAL)
        logger.warning("worker %s: registered again with %s", worker.address, worker.scheduler_address)
        return comm
    return None


async def scheduler_loop(worker: Worker, comm: Comm | None) -> None:
    """Handle the scheduler's messages, reconnecting when the stream ends; close the worker at the end."""
    reason = "the scheduler went away"
    try:
        while comm is not None:
            try:
                while True:
                    for msg in await comm.read():
                        try:
                            await scheduler_message(worker, msg)
                        except Exception:  # one bad message must not take the worker down
                            logger.exception(
                                "worker %s: could not handle %r from the scheduler",
                                worker.address,
                                msg.get("op"),
                            )
            except CommClosedError:
                pass
            if worker.closed.is_set():
                return
            comm = await reconnect(worker)
        worker._lost_scheduler = True
        reason = f"lost the scheduler (no reconnection within {worker.reconnect_timeout:g} s)"
    except Exception as exc:  # an unreadable stream: nothing more can be trusted on it
        reason = f"unreadable message from the scheduler: {exc}"
        logger.exception("worker %s: %s", worker.address, reason)
    finally:
        await worker.close(reason)


async def scheduler_message(worker: Worker, msg: dict[str, Any]) -> None:
    """Handle one message from the scheduler."""
    op = msg["op"]
    worker.events.append((time.time(), op, msg["key"] if "key" in msg else list(msg.get("keys", ()))))
    if op == "compute-task":
        worker._do(worker.state.compute_task(msg, _relayed_inputs(msg)))
    elif op == "free-keys":
        worker._do(worker.state.free(msg["keys"]))
    elif op == "plugins":
        error = await worker._sync_plugins(msg["plugins"])
        if "rid" in msg and worker.stream is not None:
            worker.stream.send({"op": "reply", "rid": msg["rid"], "error": error})
    elif op == "client-config":
        worker.configs[msg["id"]] = msg["config"]  # loaded on first use, on a task thread
    elif op == "forget-config":
        for cid in msg["ids"]:
            worker.configs.pop(cid, None)
    elif op == "close":
        await worker.close(msg.get("reason", "asked to close"))
    elif op == "restart":  # client.restart() without a nanny: drop everything, register again
        if worker.stream is not None:
            worker.stream.comm.close()  # the scheduler loop then reconnects (reconnect)
    elif op == "steal-request":  # another worker is idle: this task goes there if not started
        worker._do(worker.state.steal(msg["key"]))
    elif op == "acquire-replicas":  # copies of a retiring worker's results
        worker._do(worker.state.acquire_replicas(msg["who_has"]))
    elif op == "dump-state":
        if worker.stream is not None:
            worker.stream.send({"op": "reply", "rid": msg["rid"], "state": worker_state(worker)})
    elif op == "registered":
        pass


async def metrics_loop(worker: Worker) -> None:
    """Send the worker's metrics every heartbeat interval (they are also its heartbeat)."""
    import psutil

    proc = psutil.Process()
    while not worker.closed.is_set():
        if worker.stream is not None:
            try:
                worker.stream.send({"op": "metrics", "metrics": worker._metrics(proc.memory_info().rss)})
            except CommClosedError:
                return
        try:
            await asyncio.wait_for(worker.closed.wait(), worker.heartbeat_interval)  # also a heartbeat
        except TimeoutError:
            pass


def _relayed_inputs(msg: dict[str, Any]) -> dict[Any, Any] | None:
    """The small input values the scheduler relays inside a compute-task message, loaded (one
    that cannot be loaded here is left out: it is fetched from a holder like any other)."""
    data = msg.get("data")
    if not data:
        return None
    out = {}
    for key, (name, frames) in data.items():
        try:
            out[key] = deserialize(name, frames)
        except Exception:
            logger.exception("worker: could not load the relayed value of %r; it will be fetched", key)
    return out
