"""taskloom-threads: the default scheduler, a reusable thread pool over the shared local engine."""

from .pool import ThreadPool, get_pool, shutdown
from .scheduler import get

__all__ = ["ThreadPool", "get", "get_pool", "shutdown"]
