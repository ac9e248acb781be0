"""taskloom-sync: run every task in the calling thread, for debugging and profiling."""

from .scheduler import get

__all__ = ["get"]
