"""taskloom-pool: run task graphs on any ``concurrent.futures`` executor the user supplies."""

from .scheduler import executor_scheduler, get

__all__ = ["executor_scheduler", "get"]
