"""Observe computations: callbacks, progress and profiling on the diagnostics hooks."""

from .callback import Callback as Callback

__all__ = ["Callback"]
