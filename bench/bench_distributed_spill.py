"""Spill throughput of taskloom-distributed workers: MB/s written to disk and read back.

Two measurements, printed as small tables:

* ``store``: the worker's data store (:class:`taskloom_distributed.worker.memory.SpillBuffer`)
  on its own, with NumPy arrays of a few sizes: ``write`` is storing values that go straight to
  disk (pickle 5, buffers out of band, one file each), ``read`` is reading them back into arrays,
  ``frames`` reading them as frames for a peer (no unpickling).  ``raw`` is plain
  ``file.write``/``readinto`` of the same bytes in the same directory: the file system's ceiling.
* ``cluster`` (``--cluster``): a 2-worker LocalCluster with ``memory_limit`` 300 MB each computes
  48 arrays of 40 MB (3.2 x the workers' memory) and a checksum of each while all are held; the
  figures are the workers' own spill counters (bytes and seconds spent writing and reading).

Writes go to the page cache (no ``fsync``), as a worker's do; with a cold cache and a slow disk
the read figures drop to the disk's.  Run: ``python bench/bench_distributed_spill.py [--dir PATH]
[--total-mb 1024] [--repeat 3] [--cluster]``.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np
from taskloom.bench.report import markdown_table as table


def best(times: list[float]) -> float:
    return min(times)


def store_figures(directory: str, size_mb: int, total_mb: int, repeat: int) -> dict[str, float]:
    from taskloom_distributed.worker.memory import SpillBuffer

    n = max(1, total_mb // size_mb)
    values = [np.full(size_mb * 1_000_000 // 8, i, dtype=np.float64) for i in range(n)]
    nbytes = sum(v.nbytes for v in values)
    write, read, frames, raw_write, raw_read = [], [], [], [], []
    for r in range(repeat):
        buf = SpillBuffer(os.path.join(directory, f"spill-{size_mb}-{r}"), target=0)  # all to disk
        start = time.perf_counter()
        for i, v in enumerate(values):
            buf[i] = v
        write.append(time.perf_counter() - start)
        assert len(buf.slow) == n
        start = time.perf_counter()
        for i in range(n):
            back = buf[i]
        read.append(time.perf_counter() - start)
        assert back[0] == n - 1
        start = time.perf_counter()
        for i in range(n):
            buf.spilled_frames(i)
        frames.append(time.perf_counter() - start)
        buf.close()

        raw_dir = os.path.join(directory, f"raw-{size_mb}-{r}")
        os.makedirs(raw_dir)
        start = time.perf_counter()
        for i, v in enumerate(values):
            with open(os.path.join(raw_dir, str(i)), "wb") as f:
                f.write(memoryview(v).cast("B"))
        raw_write.append(time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(n):
            with open(os.path.join(raw_dir, str(i)), "rb") as f:
                out = bytearray(os.fstat(f.fileno()).st_size)
                f.readinto(out)
        raw_read.append(time.perf_counter() - start)
        shutil.rmtree(raw_dir)
    mb = nbytes / 1e6
    return {
        "values": n,
        "MB": mb,
        "write": mb / best(write),
        "read": mb / best(read),
        "frames": mb / best(frames),
        "raw write": mb / best(raw_write),
        "raw read": mb / best(raw_read),
    }


def make_array(i: int) -> Any:
    return np.full(5_000_000, i, dtype=np.float64)


def checksum(x: Any) -> float:
    return float(x.sum())


def spill_counters() -> dict[str, Any]:
    import taskloom

    return taskloom.get_worker().data.metrics()["spill"]  # type: ignore[attr-defined,no-any-return]


def cluster_figures(directory: str) -> list[dict[str, Any]]:
    os.environ["TASKLOOM_DISTRIBUTED__WORKER__LOCAL_DIRECTORY"] = directory
    os.environ["TASKLOOM_DISTRIBUTED__WORKER__MEMORY__TARGET"] = "0.3"
    os.environ["TASKLOOM_DISTRIBUTED__WORKER__MEMORY__SPILL"] = "0.5"
    from taskloom_distributed import Client

    n = 48
    with Client(n_workers=2, threads_per_worker=1, memory_limit="300MB", set_as_default=False) as client:
        start = time.perf_counter()
        arrays = client.map(make_array, range(n))
        sums = client.map(checksum, arrays)
        total = client.submit(sum, sums).result()
        elapsed = time.perf_counter() - start
        assert total == 5_000_000 * sum(range(n))
        counters = client.run(spill_counters)
    rows = []
    for address, c in sorted(counters.items()):
        rows.append(
            {
                "worker": address,
                "graph s": elapsed,
                "written MB": c["written"] / 1e6,
                "write MB/s": c["written"] / 1e6 / max(c["write_seconds"], 1e-9),
                "read MB": c["read"] / 1e6,
                "read MB/s": c["read"] / 1e6 / max(c["read_seconds"], 1e-9),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=None, help="where to spill (default: a new temporary directory)")
    parser.add_argument("--total-mb", type=int, default=1024, help="MB written per value size")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cluster", action="store_true", help="also measure a spilling LocalCluster")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="taskloom-spill-bench-", dir=args.dir)
    try:
        rows = []
        for size in (1, 10, 100):
            figures = store_figures(directory, size, args.total_mb, args.repeat)
            rows.append({"value MB": str(size), **figures})
        print(f"spill store, MB/s (best of {args.repeat}):")
        print(table(rows))
        if args.cluster:
            print("\nLocalCluster, 2 workers x 300 MB, 48 x 40 MB results:")
            print(table(cluster_figures(directory)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
