"""Nannies: a process-keeper per worker that restarts it when it dies and reports how it died."""

from .nanny import Nanny, describe_exit
from .process import MEMORY_EXIT_CODE, nanny_link

__all__ = ["MEMORY_EXIT_CODE", "Nanny", "describe_exit", "nanny_link"]
