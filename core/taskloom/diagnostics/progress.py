"""``ProgressBar``: a tqdm progress bar over the tasks of each computation.

The total is the number of tasks the compute will run: the requested keys and what they need,
counted once at compute start by walking the graph from those keys (data values and tasks that
nothing requested are not counted -- ``len(graph)`` would be only an upper bound).  Per task,
the hook only increments a counter under a lock; the bar is redrawn by a small thread every
``dt`` seconds, so a graph of a million tiny tasks costs a million increments and a few redraws,
not a million terminal writes.  The thread lives from compute start to compute finish, when it
is joined and the bar closed -- at 100%, or with the error named if the compute failed.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence
from typing import IO, Any

from ._shared import needed_tasks
from .callback import Callback

__all__ = ["ProgressBar"]


class ProgressBar(Callback):
    """Show a progress bar for each computation while active.

    ::

        with ProgressBar():
            total.compute()

        ProgressBar(minimum=1.0).register()  # every compute lasting over a second, from now on

    :param minimum: show nothing for a computation that ends within this many seconds.
    :param out: where to write the bar (default ``sys.stdout``).  Without ``out``, Jupyter
        notebooks get tqdm's notebook widget where it is available (``tqdm.auto``).
    :param dt: seconds between redraws.

    Computations that overlap (several threads, or a compute inside a task) share one bar
    whose total is the sum of theirs; it closes when the last one ends.  Needs ``tqdm``.
    """

    def __init__(self, minimum: float = 0.0, out: IO[str] | None = None, dt: float = 0.1) -> None:
        super().__init__()
        _bar_class(out is None)  # fail now, not at the first compute, if tqdm is missing
        if dt <= 0:
            raise ValueError(f"dt must be positive, got {dt!r}")
        self.minimum = minimum
        self.out = out
        self.dt = dt
        self._lock = threading.Lock()
        self._computes = 0  # computes running now
        self._bar: _Bar | None = None  # the bar of the computes running now

    def start(self, graph: Mapping[Any, Any], keys: Sequence[Any], scheduler: str) -> None:
        found = needed_tasks(graph, keys)
        total = len(graph) if found is None else sum(deps is not None for deps in found.values())
        with self._lock:
            self._computes += 1
            if self._bar is not None:
                self._bar.total += total  # joins the bar that is already showing
            else:
                self._bar = _Bar(total, self.out, self.minimum, self.dt, self._lock)

    def task_finish(self, key: Any, worker: str, duration: float, error: BaseException | None) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.done += 1

    def finish(self, keys: Sequence[Any], error: BaseException | None) -> None:
        with self._lock:
            bar = self._bar
            if bar is not None and error is not None and bar.failed is None:
                bar.failed = error
            self._computes = max(0, self._computes - 1)
            if self._computes:
                return
            self._bar = None
        if bar is not None:
            bar.close()

    def unregister(self) -> None:
        super().unregister()
        with self._lock:
            self._computes = 0
            bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()


class _Bar:
    """One bar: its tqdm object, its counters, and the thread that redraws it every ``dt``.

    ``total``, ``done`` and ``failed`` are guarded by the owning ProgressBar's ``lock``.
    """

    def __init__(self, total: int, out: IO[str] | None, minimum: float, dt: float, lock: threading.Lock):
        self.total = total
        self.done = 0
        self.failed: BaseException | None = None
        self.lock = lock
        self.tqdm = _bar_class(out is None)(
            total=total,
            file=out if out is not None else sys.stdout,
            delay=minimum,  # tqdm's own "show only after" (its clock starts now, with the compute)
            mininterval=0,  # the thread below paces the redraws ...
            miniters=0,  # ... and each of them draws, once ``minimum`` has passed
            unit="task",
            dynamic_ncols=out is None,
        )
        self.dt = dt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskloom-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.dt):
            self.draw()

    def draw(self) -> None:
        """Bring the bar up to date (tqdm puts it on screen once ``minimum`` has passed)."""
        with self.lock:
            done, total = self.done, self.total
        bar = self.tqdm
        bar.total = max(total, done)  # a compute inside a task may add tasks
        bar.update(done - bar.n)

    def close(self) -> None:
        """Stop the thread, draw the final state and close: at 100%, or naming the error."""
        self._stop.set()
        self._thread.join()
        if self.failed is not None:
            self.tqdm.set_postfix_str(f"failed: {type(self.failed).__name__}", refresh=False)
        self.draw()  # after ``minimum``, this also makes tqdm print the closing line
        self.tqdm.close()


_bar_classes: dict[bool, type[Any]] = {}


def _bar_class(auto: bool) -> type[Any]:
    """tqdm's bar class (``tqdm.auto`` for notebooks if ``auto``), without tqdm's monitor thread.

    Redraws are paced here, so tqdm's process-wide monitor thread (which adjusts
    ``miniters``) is not needed; it would also outlive every compute.
    """
    cls = _bar_classes.get(auto)
    if cls is None:
        try:
            if auto:
                from tqdm.auto import tqdm
            else:
                from tqdm import tqdm
        except ImportError:
            msg = "ProgressBar needs tqdm: pip install 'taskloom[diagnostics]' (or tqdm)"
            raise ImportError(msg) from None
        cls = _bar_classes[auto] = type("ProgressBarTqdm", (tqdm,), {"monitor_interval": 0})
    return cls
