"""Hook implementations of taskloom-dask: the ``dask`` scheduler (dask.distributed) and its defaults."""

from __future__ import annotations

from typing import Any

import taskloom

from .distributed import get, local_cluster


@taskloom.hookimpl
def taskloom_schedulers() -> list[taskloom.SchedulerSpec]:
    return [
        taskloom.SchedulerSpec(
            "dask",
            get=get,
            aliases=("dask.distributed",),
            description="a dask.distributed cluster, through the current Client or client=",
            setup=local_cluster,
        )
    ]


@taskloom.hookimpl
def taskloom_config_defaults() -> dict[str, Any]:
    return {
        "client": None,  # the dask scheduler's distributed.Client; None: the current one
        "dask": {"fuse": True},  # the dask scheduler fuses linear chains before submitting
    }


@taskloom.hookimpl
def taskloom_bench_cases() -> list[Any]:
    from .bench import ARRAY_CASE

    return [ARRAY_CASE]
