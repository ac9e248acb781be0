"""``taskloom.distributed``: the Client, LocalCluster, Future, wait and as_completed of taskloom-distributed.

The core does not depend on the plugin: importing this module without it installed raises an
ImportError that says what to install.
"""

try:
    from taskloom_distributed import (
        ALL_COMPLETED,
        FIRST_COMPLETED,
        FIRST_EXCEPTION,
        CancelledError,
        Client,
        ClientExecutor,
        DoneAndNotDoneFutures,
        Future,
        LocalCluster,
        Scheduler,
        Worker,
        as_completed,
        default_client,
        wait,
    )
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "taskloom.distributed needs the distributed scheduler plugin: pip install taskloom-distributed"
    ) from exc

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "CancelledError",
    "Client",
    "ClientExecutor",
    "DoneAndNotDoneFutures",
    "Future",
    "LocalCluster",
    "Scheduler",
    "Worker",
    "as_completed",
    "default_client",
    "wait",
]
