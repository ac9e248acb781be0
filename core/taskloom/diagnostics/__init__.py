"""Observe computations: callbacks, progress and profiling on the diagnostics hooks."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .callback import Callback as Callback

if TYPE_CHECKING:
    from ._report import report as report
    from .profile import CacheProfiler as CacheProfiler
    from .profile import Profiler as Profiler
    from .profile import ResourceProfiler as ResourceProfiler
    from .progress import ProgressBar as ProgressBar

# Imported on first use, so ``import taskloom.diagnostics`` loads neither tqdm nor psutil.
# ``report`` lives in ``_report``: a submodule named ``report`` would replace this function
# with itself as the package attribute the moment anything imported it.
_LAZY = {
    "ProgressBar": "progress",
    "Profiler": "profile",
    "ResourceProfiler": "profile",
    "CacheProfiler": "profile",
    "report": "_report",
}

__all__ = ["CacheProfiler", "Callback", "Profiler", "ProgressBar", "ResourceProfiler", "report"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
