"""Worker-to-worker transfer speed of taskloom-distributed: MB/s for one NumPy array moved between workers.

Three layers, for arrays of 10, 100 and 500 MB (``--sizes``), best and median of ``--repeat``:

* ``cluster``: a 2-worker LocalCluster (``Client(n_workers=2, threads_per_worker=1)``).  The array
  is scattered to worker A; a task on worker B needs it.  (The task also takes a slightly larger
  array scattered to B beforehand, so the scheduler places it on B: moving the smaller input is
  cheaper.)  ``fetch`` is the receiving worker's own record of the transfer (its
  ``transfer_log``: request sent to value stored, i.e. connection, request, peer serializing,
  wire, unpickling, storing); ``task`` is ``submit`` to ``result()`` seen by the client, fetch
  and scheduling included.
* ``comm``: one frame of the same size through two of our :class:`~taskloom_distributed.comm.Comm`
  objects in this process (the framing layer alone, no pickling, no scheduler).
* ``asyncio``: the same bytes through plain asyncio streams on loopback (``writer.write`` +
  ``reader.read`` into nothing): a reference for what this machine's loopback and event loop give.

``CPU s/GB`` is CPU time per GB moved: sending worker / receiving worker for the cluster (the
whole task, from the workers' ``psutil`` CPU times), both ends together (one process) for
``comm`` and ``asyncio``.  On a busy machine the MB/s figures vary a lot from run to run (the
workers wait for a core); the CPU figures much less.

Run: ``python bench/bench_distributed_transfer.py [--sizes 10 100 500] [--repeat 5]``.  Nothing is
asserted: it prints a small Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import time
from typing import Any

import numpy as np
from taskloom.bench.report import markdown_table as table


def use(x: Any, pad: Any) -> tuple[int, int]:
    return int(x.nbytes), int(x[-1])


def transfer_log() -> list[dict[str, Any]]:
    import taskloom

    return list(taskloom.get_worker().transfer_log)  # type: ignore[attr-defined]


def cpu_seconds(procs: list[Any]) -> list[float]:
    return [sum(p.cpu_times()[:2]) for p in procs]


def cluster_figures(sizes: list[int], repeat: int) -> dict[int, dict[str, list[float]]]:
    import psutil
    from taskloom_distributed import Client

    out: dict[int, dict[str, list[float]]] = {}
    with Client(n_workers=2, threads_per_worker=1, set_as_default=False) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        pids = client.run(os.getpid)
        procs = [psutil.Process(pids[a]), psutil.Process(pids[b])]
        for size in sizes:
            nbytes = size * 1_000_000
            pad = client.scatter(np.zeros(nbytes + 1_000_000, dtype=np.uint8), workers=[b], hash=False)
            fetch, task, send_cpu, recv_cpu = [], [], [], []
            for r in range(repeat):
                x = client.scatter(np.full(nbytes, r % 256, dtype=np.uint8), workers=[a], hash=False)
                cpu = cpu_seconds(procs)
                start = time.perf_counter()
                result = client.submit(use, x, pad, pure=False).result()
                task.append(time.perf_counter() - start)
                send_cpu.append(cpu_seconds(procs)[0] - cpu[0])
                recv_cpu.append(cpu_seconds(procs)[1] - cpu[1])
                assert result == (nbytes, r % 256), result
                assert set(client.who_has(x)[x.key]) == {a, b}, "the task did not run on worker B"
                record = [t for t in client.run(transfer_log)[b] if x.key in t["keys"]][-1]
                fetch.append(record["seconds"])
                del x
            del pad
            out[size] = {"fetch": fetch, "task": task, "send cpu": send_cpu, "recv cpu": recv_cpu}
    return out


async def comm_seconds(nbytes: int, repeat: int) -> list[float]:
    from taskloom_distributed.comm import connect, listen

    received: asyncio.Queue[float] = asyncio.Queue()

    async def handler(comm: Any) -> None:
        comm.set_authenticated()
        while True:
            try:
                await comm.read_frames()
            except ConnectionError:
                return
            received.put_nowait(time.perf_counter())

    server = await listen("127.0.0.1", 0, handler)
    port = server.sockets[0].getsockname()[1]
    comm = await connect(f"tcp://127.0.0.1:{port}")
    payload = np.ones(nbytes, dtype=np.uint8)
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        await comm.write_frames([b"header", payload])
        out.append(await received.get() - start)
    comm.close()
    server.close()
    await server.wait_closed()
    return out


async def asyncio_seconds(nbytes: int, repeat: int) -> list[float]:
    done: asyncio.Queue[float] = asyncio.Queue()
    finished = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                left = nbytes
                while left:
                    chunk = await reader.read(min(left, 1 << 22))
                    if not chunk:
                        return
                    left -= len(chunk)
                done.put_nowait(time.perf_counter())
        finally:
            writer.close()
            finished.set()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = np.ones(nbytes, dtype=np.uint8)
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        writer.write(memoryview(payload))
        await writer.drain()
        out.append(await done.get() - start)
    writer.close()
    await writer.wait_closed()
    await finished.wait()
    server.close()
    await server.wait_closed()
    return out


def cpu_text(size_mb: int, send: list[float], receive: list[float]) -> str:
    """Median CPU seconds per GB moved, sender / receiver (task and messages included)."""
    return (
        f"{statistics.median(send) / size_mb * 1000:.2f} / {statistics.median(receive) / size_mb * 1000:.2f}"
    )


def rate(size_mb: int, seconds: list[float]) -> tuple[float, float]:
    """(best, median) MB/s."""
    return size_mb / min(seconds), size_mb / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500], help="array sizes in MB")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cluster = cluster_figures(args.sizes, args.repeat)
    rows = []
    for size in args.sizes:
        figures = cluster[size]
        layers: dict[str, tuple[list[float], str]] = {
            "cluster fetch": (figures["fetch"], ""),
            "cluster task": (figures["task"], cpu_text(size, figures["send cpu"], figures["recv cpu"])),
        }
        for name, measure in (("comm", comm_seconds), ("asyncio", asyncio_seconds)):
            cpu = time.process_time()
            seconds = asyncio.run(measure(size * 1_000_000, args.repeat))
            per_run = (time.process_time() - cpu) / args.repeat
            layers[name] = (seconds, f"{per_run / size * 1000:.2f} (both ends)")
        for layer, (seconds, cpu_figures) in layers.items():
            best, median = rate(size, seconds)
            rows.append(
                {
                    "MB": str(size),
                    "layer": layer,
                    "best MB/s": best,
                    "median MB/s": median,
                    "CPU s/GB": cpu_figures,
                }
            )
    print(f"worker-to-worker transfer, MB/s (best and median of {args.repeat}):")
    print(table(rows))


if __name__ == "__main__":
    main()
