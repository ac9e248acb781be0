"""taskloom-processes: a reusable pool of worker processes over the shared local engine."""

from .pool import ProcessPool, live_workers, shutdown
from .protocol import RemoteTraceback
from .scheduler import WorkerDiedError, get

__all__ = ["ProcessPool", "RemoteTraceback", "WorkerDiedError", "get", "live_workers", "shutdown"]
