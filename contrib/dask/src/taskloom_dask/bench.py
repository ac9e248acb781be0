"""The seed's Dask array workload in ``taskloom bench``: taskloom ``threads`` against Dask threaded.

``da.random.random((10000, 10000), chunks=(1000, 1000)).mean()`` is built once and computed by
``taskloom_dask`` on taskloom's ``threads`` and, with ``--compare dask``, by Dask's own threaded
scheduler, alternating run by run so background load hits both alike, after one untimed run
each; the best run of each counts.  Both use the run's worker count.  Dask and NumPy are
imported only when the case runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from taskloom.bench.cases import BenchCase, BenchContext, BenchFigure

SIZE, CHUNK = 10_000, 1_000
QUICK_SIZE, QUICK_CHUNK = 2_000, 500


def measure_array(
    size: int, chunk: int, repeat: int, num_workers: int, compare: bool = True
) -> dict[str, list[float]]:
    """Wall times of ``repeat`` computes of the array's mean: ``{"taskloom": [...], "dask": [...]}``.

    Checks that both schedulers return the same mean; ``compare=False`` runs taskloom only.
    """
    import dask.array as da
    import numpy as np

    from .get import bind

    x = da.random.random((size, size), chunks=(chunk, chunk)).mean()
    on_taskloom = bind("threads", num_workers=num_workers)
    runs: dict[str, list[float]] = {"taskloom": []}
    values: dict[str, Any] = {}
    if compare:
        runs["dask"] = []
        x.compute(scheduler="threads", num_workers=num_workers)  # warm both: imports, pools, caches
    x.compute(scheduler=on_taskloom)
    for _ in range(repeat):
        if compare:
            runs["dask"].append(_timed(lambda: x.compute(scheduler="threads", num_workers=num_workers))[0])
        elapsed, values["taskloom"] = _timed(lambda: x.compute(scheduler=on_taskloom))
        runs["taskloom"].append(elapsed)
    if compare:
        values["dask"] = x.compute(scheduler="threads", num_workers=num_workers)
        if not np.isclose(values["dask"], values["taskloom"]):
            raise AssertionError(f"taskloom computed {values['taskloom']!r}, Dask {values['dask']!r}")
    return runs


def _timed(compute: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = compute()
    return time.perf_counter() - t0, value


def run_array_case(context: BenchContext) -> list[BenchFigure]:
    """The case's figures: taskloom threads, and Dask threaded with its ratio when compared."""
    if "threads" not in context.schedulers:
        return []
    size, chunk = (QUICK_SIZE, QUICK_CHUNK) if context.quick else (SIZE, CHUNK)
    compare = context.compare == "dask"
    runs = measure_array(size, chunk, context.repeat, context.num_workers, compare)
    ours = min(runs["taskloom"])
    figures = [BenchFigure("threads", ours)]
    if compare:
        theirs = min(runs["dask"])
        figures[0] = BenchFigure("threads", ours, note=f"{ours / theirs:.2f}x Dask's time")
        figures.append(BenchFigure("dask threaded", theirs, engine="dask"))
    return figures


ARRAY_CASE = BenchCase(
    "dask-array",
    f"da.random.random(({SIZE}, {SIZE}), chunks=({CHUNK}, {CHUNK})).mean() via taskloom_dask"
    " (quick: 2000 x 2000 in 500 x 500 chunks)",
    run=run_array_case,
)
