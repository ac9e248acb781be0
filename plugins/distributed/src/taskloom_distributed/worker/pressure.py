"""The worker's memory loop: measure the process, carry out the monitor's spill/pause/terminate.

Every ``monitor_interval`` seconds the process memory (RSS) goes to the worker's
:class:`~.monitor.MemoryMonitor` (the policy, no I/O); its instructions are carried out here:
results spilled to disk (:func:`~.monitor.spill_until_below`), new work paused or resumed (the
scheduler is told), or, past ``terminate``, the process ends with
:data:`~.memory.MEMORY_EXIT_CODE` for its nanny to restart it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..comm import CommClosedError
from .memory import MEMORY_EXIT_CODE, SpillBuffer
from .monitor import spill_until_below

if TYPE_CHECKING:
    from .server import Worker

logger = logging.getLogger("taskloom.distributed.worker")


async def memory_loop(worker: Worker) -> None:
    """Check the process memory every ``monitor_interval`` until the worker closes."""
    import psutil

    proc = psutil.Process()

    def measure() -> int:
        return int(proc.memory_info().rss)

    while not worker.closed.is_set():
        await check_memory(worker, measure)
        try:
            await asyncio.wait_for(worker.closed.wait(), worker.memory_limits.monitor_interval)
        except TimeoutError:
            pass


async def check_memory(worker: Worker, measure: Callable[[], int]) -> None:
    """One turn of the memory monitor: spill, pause, resume or terminate as it decides."""
    monitor = worker.memory_monitor
    rss = measure()
    while not worker.closed.is_set():
        instructions = monitor.check(rss)
        spill = [ins for ins in instructions if ins[0] == "spill"]
        for ins in instructions:
            if ins[0] != "spill":
                await memory_instruction(worker, ins, rss)
        if not spill:
            return
        done = spill_until_below(spill[0][1], lambda: evict(worker), measure)
        for ins in monitor.spilled(done.rss, done.exhausted):
            await memory_instruction(worker, ins, done.rss)
        if done.done or done.exhausted:
            return
        await asyncio.sleep(0)  # let messages and finished tasks through between rounds
        rss = measure()


def evict(worker: Worker) -> int:
    """Spill one result to disk: its size, or -1 when nothing is left to spill."""
    return worker.data.evict() if isinstance(worker.data, SpillBuffer) else -1


async def memory_instruction(worker: Worker, ins: tuple[Any, ...], rss: int) -> None:
    """Carry out one instruction of the monitor other than ``spill``."""
    op = ins[0]
    if op in ("pause", "resume"):
        logger.warning("%s: %s", worker.address, ins[1])
        worker._do(worker.state.set_paused(op == "pause"))
        worker._send_metrics(rss)
        if worker.stream is not None:  # the scheduler sends new tasks to running workers only
            try:
                worker.stream.send(
                    {"op": "worker-status", "status": "paused" if op == "pause" else "running"}
                )
            except CommClosedError:
                pass
    elif op == "warn":
        logger.warning("%s: %s", worker.address, ins[1])
    elif op == "terminate":
        await exit_for_memory(worker, ins[1], rss)


async def exit_for_memory(worker: Worker, reason: str, rss: int) -> None:
    """Past ``terminate``: tell the scheduler, remove the spill files, exit for the nanny."""
    logger.error("%s: %s (exit status %d)", worker.address, reason, MEMORY_EXIT_CODE)
    worker.state.set_paused(True)
    worker._send_metrics(rss)
    if worker.stream is not None:
        try:
            await asyncio.wait_for(worker.stream.close(), 2)
        except Exception:
            pass
    if isinstance(worker.data, SpillBuffer):
        worker.data.spill_files.remove()
    if worker.local_directory:
        shutil.rmtree(worker.local_directory, ignore_errors=True)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(MEMORY_EXIT_CODE)
