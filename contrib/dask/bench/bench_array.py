"""Dask's threaded scheduler against taskloom's ``threads`` on the same Dask array graph.

The seed's array workload, ``da.random.random((10000, 10000), chunks=(1000, 1000)).mean()``,
computed by Dask's own threaded scheduler and by ``taskloom_dask.get`` on taskloom's
``threads`` scheduler, best of ``--repeat`` runs each, alternating; prints both timings and the
ratio taskloom / Dask (below 1: taskloom is faster).  Both use ``--num-workers`` threads
(default: the CPU count).  ``--size``/``--chunk`` shrink it for a quick look.  ``taskloom bench
--compare dask`` runs the same measurement (case ``dask-array``, from ``taskloom_dask.bench``).

    python contrib/dask/bench/bench_array.py [--size 10000] [--chunk 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10000, help="the array is size x size")
    parser.add_argument("--chunk", type=int, default=1000, help="chunks are chunk x chunk")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scheduler; the best counts")
    parser.add_argument("--num-workers", type=int, default=None, help="threads (default: CPUs)")
    args = parser.parse_args(argv)

    import dask
    from taskloom_dask.bench import measure_array

    workers = args.num_workers or _cpu_count()
    runs = measure_array(args.size, args.chunk, args.repeat, workers)
    best = {name: min(times) for name, times in runs.items()}
    ratio = best["taskloom"] / best["dask"]
    print(
        f"array workload: random(({args.size}, {args.size}), chunks=({args.chunk}, {args.chunk})).mean()"
        f" -- {workers} threads, best of {args.repeat}"
    )
    print(f"  dask threaded scheduler : {best['dask']:.3f} s")
    print(f"  taskloom threads        : {best['taskloom']:.3f} s")
    print(f"  ratio taskloom / dask   : {ratio:.3f}")
    shown = {name: ", ".join(f"{t:.3f}" for t in times) for name, times in runs.items()}
    print(f"  (dask {dask.__version__}; all runs, s: dask {shown['dask']}; taskloom {shown['taskloom']})")
    return {"dask": best["dask"], "taskloom": best["taskloom"], "ratio": ratio}


if __name__ == "__main__":
    main()
