"""Event loops of the distributed plugin: which implementation (uvloop or asyncio's own), running
a coroutine on one, and a loop on a daemon thread for the synchronous Client API and LocalCluster.

``distributed.admin.event_loop`` chooses: ``"auto"`` (the default) takes uvloop when it is
installed (it is a dependency of taskloom-distributed except on Windows) and asyncio's loop
otherwise; ``"uvloop"`` insists on it; ``"asyncio"`` never uses it.  uvloop's network path is
libuv in C: a message between two processes costs a third of what it costs on asyncio's loop
(see bench/RESULTS.md), which is most of a small task's round trip.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from taskloom import config
from taskloom.errors import ConfigError

T = TypeVar("T")

CHOICES = ("auto", "uvloop", "asyncio")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new event loop, as ``distributed.admin.event_loop`` says."""
    choice = config.get("distributed.admin.event_loop", "auto") or "auto"
    if choice not in CHOICES:
        raise ConfigError(
            f"distributed.admin.event_loop is {choice!r}: it must be one of {', '.join(map(repr, CHOICES))}"
        )
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "distributed.admin.event_loop is 'uvloop' but uvloop is not installed: "
                "pip install uvloop (or set it to 'auto' or 'asyncio')"
            ) from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the configured implementation."""
    return loop_factory()()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` on a new loop of the configured implementation."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


class LoopThread:
    """Runs an event loop on its own thread; :meth:`run` executes a coroutine there and waits."""

    def __init__(self, name: str = "taskloom-distributed-loop") -> None:
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = threading.Event()
        self._thread.start()
        self._started.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop thread and return its result (interruptible by Ctrl-C)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopThread.run called from its own loop thread: await the coroutine instead")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except BaseException:
            fut.cancel()
            raise

    def submit(self, coro: Coroutine[Any, Any, T]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(10)
