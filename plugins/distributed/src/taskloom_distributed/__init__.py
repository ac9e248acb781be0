"""taskloom-distributed: a scheduler server, workers, a Client and LocalCluster."""

from .client.as_completed import as_completed
from .client.client import Client, default_client
from .client.executor import ClientExecutor
from .client.futures import CancelledError, Future
from .client.wait import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, DoneAndNotDoneFutures, wait
from .cluster.adaptive import Adaptive
from .cluster.local import LocalCluster
from .cluster_dump import load_cluster_dump
from .scheduler.server import Scheduler
from .worker.server import Worker

__all__ = [
    "ALL_COMPLETED",
    "Adaptive",
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
    "load_cluster_dump",
    "wait",
]
