"""Hook implementations of taskloom-distributed."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import taskloom


def _get(graph: Any, keys: list[Any], **kwargs: Any) -> list[Any]:
    from .client.client import default_client

    result: list[Any] = default_client().get(graph, keys, **kwargs)
    return result


@contextmanager
def _setup() -> Iterator[dict[str, Any]]:
    """A two-worker LocalCluster and its Client, for the conformance suite and benchmarks."""
    from .client.client import Client

    with Client(n_workers=2, threads_per_worker=1, set_as_default=False):
        yield {}


@taskloom.hookimpl
def taskloom_schedulers() -> list[taskloom.SchedulerSpec]:
    return [
        taskloom.SchedulerSpec(
            "distributed",
            get=_get,
            description="the running Client's cluster (create one with taskloom.distributed.Client())",
            setup=_setup,
        )
    ]


@taskloom.hookimpl
def taskloom_config_defaults() -> dict[str, Any]:
    return {
        "distributed": {
            "scheduler": {"address": None, "port": 8786},
            "comm": {"auth": None, "timeout": 30},
            "worker": {"nthreads": None, "memory_limit": "auto"},
            "dashboard": {"address": None},
        }
    }


@taskloom.hookimpl
def taskloom_cli(commands: argparse._SubParsersAction) -> None:
    from .cli import add_commands

    add_commands(commands)
