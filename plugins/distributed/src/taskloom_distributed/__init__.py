"""taskloom-distributed: a scheduler server, workers, a Client and LocalCluster."""

from .client.client import Client, default_client
from .client.futures import CancelledError, Future
from .cluster.local import LocalCluster
from .scheduler.server import Scheduler
from .worker.server import Worker

__all__ = ["CancelledError", "Client", "Future", "LocalCluster", "Scheduler", "Worker", "default_client"]
