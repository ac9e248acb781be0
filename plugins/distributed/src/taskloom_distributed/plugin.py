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
            "scheduler": {
                "address": None,
                "port": 8786,
                "allowed_failures": 3,  # workers a task may see die under it before it fails
                "worker_ttl": 30,  # seconds without a heartbeat before a worker is removed
                "stall_timeout": 60,  # seconds without progress, tasks pending: warn (0/False: never)
                "work_stealing": True,  # tasks queued on busy workers move to idle ones
                # results up to this many bytes pickled are relayed by the scheduler to the workers
                # of their dependents inside the task message (no worker-to-worker fetch); 0: never
                "relay_bytes": 1024,
            },
            "adaptive": {  # cluster.adapt(): the defaults of its arguments
                "minimum": 0,
                "maximum": None,  # None: no limit
                "interval": 1.0,  # seconds between two decisions
                "wait_count": 3,  # consecutive decisions to retire a worker before it is retired
                "target_duration": 5.0,  # seconds the queued work should take: workers wanted
            },
            "admin": {
                "log_length": 1000,  # recent log records and events kept, for dumps
                "gc_threshold": 10_000,  # the collector's first threshold while a scheduler/worker runs
                "event_loop": "auto",  # "auto" (uvloop when installed), "uvloop" or "asyncio"
            },
            "nanny": {"log_directory": None},  # where each cluster's worker logs go (default: temp)
            "comm": {
                "auth": None,  # shared token (TASKLOOM_DISTRIBUTED__COMM__AUTH)
                "timeout": 30,
                "tls": {"ca_file": None, "cert": None, "key": None},  # PEM paths: mutual TLS
                # seconds: to connect + authenticate to a peer; a fetch with no byte moving (0: none)
                "timeouts": {"connect": 10, "idle": 30},
            },
            "worker": {
                "nthreads": None,
                "memory_limit": "auto",
                "local_directory": None,  # spill files go here (default: the system temp directory)
                "heartbeat_interval": 0.5,  # seconds between a worker's heartbeats (its metrics)
                "reconnect_timeout": 10,  # seconds a worker that lost its scheduler tries to reconnect
                "inline_result_bytes": 65536,  # a result a client waits for, up to this: sent with the news
                "memory": {  # fractions of memory_limit; False disables a step
                    "target": 0.6,  # results in memory past this: least recently used to disk
                    "spill": 0.7,  # process memory (RSS) past this: spill until below target
                    "pause": 0.8,  # past this: start no new task until back below
                    "terminate": 0.95,  # past this: the worker exits for its nanny to restart it
                    "monitor_interval": 0.1,  # seconds between process memory checks
                },
            },
            "dashboard": {"address": None},
        }
    }


@taskloom.hookimpl
def taskloom_cli(commands: argparse._SubParsersAction) -> None:
    from .cli import add_commands

    add_commands(commands)
