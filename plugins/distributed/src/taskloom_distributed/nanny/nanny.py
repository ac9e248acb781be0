"""The nanny: starts a worker process, restarts it when it dies, and tells the scheduler why.

A :class:`Nanny` lives on an asyncio loop -- the cluster's loop in the process that owns a
``LocalCluster``, or the ``taskloom worker`` command's own process -- and keeps one worker process
(``spawn`` start method) running ``target(*args, **kwargs)`` under :func:`.process.child_main`.
It holds a connection to the scheduler of its own (``register-nanny``) on which it:

* reports every exit of its worker (``worker-exited``): the worker's address and pid, how it
  died (``"killed by signal SIGKILL"``, ``"exit code 3"``, ``"memory: ..."``), the digests of the
  tasks it was executing (:mod:`.slots`), and whether the exit was expected (asked for);
* answers ``restart`` (kill the worker, start a new one, reply with the new worker's address:
  ``client.restart()``) and ``close``.

A worker that dies unexpectedly is started again at once; one that dies before it has
registered three times in a row (or on its very first start) is not: the nanny gives up
(``status == "failed"``).  A worker that closes on purpose is not restarted, and the nanny closes
with it -- unless the worker only lost the scheduler while the nanny can still reach it.  When
the nanny loses the scheduler it tries to reconnect for ``distributed.worker.reconnect_timeout``
seconds, then closes.  Closing stops the worker (``SIGTERM``: it closes cleanly; ``SIGKILL`` after
``timeout``); a worker process also exits by itself as soon as its nanny's process dies.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import ssl
import tempfile
import time
import uuid
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from taskloom import config

from ..batched import BatchedSend
from ..comm import Comm, CommClosedError, connect, connect_handshake
from . import slots
from .process import MEMORY_EXIT_CODE, NO_MAIN_GUARD_EXIT, ChildSetup, child_main

logger = logging.getLogger("taskloom.distributed.nanny")

MAX_START_FAILURES = 3  # consecutive deaths before registering, after which the nanny gives up
KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL when a nanny stops its worker
RESTART_GRACE = 1.0  # the same for a restart: whatever the worker runs is forgotten anyway


def describe_exit(exitcode: int | None, memory_limit: int = 0) -> str:
    """How a worker process ended, in words: signal name, exit code, or memory."""
    if exitcode is None:
        return "vanished (no exit status)"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    if exitcode == MEMORY_EXIT_CODE:
        limit = f" of its {memory_limit / 1e9:.3g} GB limit" if memory_limit else ""
        return f"memory: it passed the terminate fraction{limit} (exit code {exitcode})"
    return f"exit code {exitcode}"


class Nanny:
    """Keeps one worker process running for the scheduler at ``scheduler_address``.

    ``log_directory``: the worker's output goes to ``<log_directory>/<name>.log`` (appended to
    across restarts); None keeps it on this process's stdout/stderr.  ``config``: dotted keys
    applied with ``config.set`` in the worker process before ``target`` runs.
    """

    def __init__(
        self,
        scheduler_address: str,
        target: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        name: str = "",
        nthreads: int = 1,
        memory_limit: int = 0,
        auth_token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        log_directory: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.scheduler_address = scheduler_address
        self.target, self.args, self.kwargs = target, args, dict(kwargs or {})
        self.id = f"nanny-{uuid.uuid4().hex[:12]}"
        self.name = name or self.id
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.auth_token = auth_token
        self.ssl_context = ssl_context
        self.config = dict(config or {})
        self.status = "created"  # running | failed | closing | closed
        self.process: BaseProcess | None = None
        self._pid: int | None = None
        self.worker_address = ""
        self.deaths: list[dict[str, Any]] = []  # every unexpected exit: pid, how, time
        self.closed = asyncio.Event()
        if log_directory:
            self.log_file = os.path.join(log_directory, f"{self.name}.log")
            self.log = self.log_file
            self._workdir, self._own_workdir = log_directory, False
        else:
            self.log_file = ""
            self.log = f"the output of the nanny process {os.getpid()} on {socket.gethostname()}"
            self._workdir, self._own_workdir = tempfile.mkdtemp(prefix="taskloom-nanny-"), True
        self._slots = os.path.join(self._workdir, f".{self.name}.slots")
        self._stream: BatchedSend | None = None
        self._comm: Comm | None = None
        self._connected = False
        self._expected_exit = False  # the current worker is being stopped on purpose
        self._start_failures = 0
        self._ever_started = False
        self._closing_msg: tuple[Any, ...] | None = None
        self._started: asyncio.Future[str] | None = None
        self._exited: asyncio.Event = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ctx = multiprocessing.get_context("spawn")

    @property
    def pid(self) -> int | None:
        """The current worker process's pid (None between its death and its replacement)."""
        return self._pid

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> Nanny:
        """Connect to the scheduler and start the worker process (without waiting for it)."""
        await self._connect()
        self.status = "running"
        self._spawn_worker()
        return self

    async def wait_started(self, timeout: float) -> str:
        """The address of the current worker once it has registered."""
        assert self._started is not None
        return await asyncio.wait_for(asyncio.shield(self._started), timeout)

    async def restart(self, timeout: float = 60.0) -> str:
        """Stop the worker (whatever it is doing), start a new one; its address once registered."""
        if self.status != "running":
            raise RuntimeError(f"nanny {self.name} is {self.status}: it cannot restart its worker")
        await self._stop_worker(RESTART_GRACE)
        self._start_failures = 0
        self._spawn_worker()
        return await self.wait_started(timeout)

    async def close(self, timeout: float = KILL_GRACE) -> None:
        """Stop the worker (SIGTERM, then SIGKILL after ``timeout`` s) and disconnect."""
        if self.status in ("closing", "closed"):
            await self.closed.wait()
            return
        self.status = "closing"
        await self._stop_worker(timeout)
        self._connected = False
        if self._stream is not None:
            await self._stream.close()
            self._stream.comm.close()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self._own_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self.status = "closed"
        self.closed.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the worker process ------------------------------------------------------------------
    def _spawn_worker(self) -> None:
        loop = asyncio.get_running_loop()
        slots.create(self._slots, self.nthreads)
        setup = ChildSetup(self.id, self.name, self.log_file, self.log, self._slots, self.config)
        reader, writer = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=child_main,
            args=(setup, writer, self.target, self.args, self.kwargs),
            name=f"taskloom-{self.name}",
            daemon=True,
        )
        proc.start()
        writer.close()
        self.process = proc
        self._pid = proc.pid
        self.worker_address = ""
        self._expected_exit = False
        self._closing_msg = None
        self._started = loop.create_future()
        self._exited = asyncio.Event()
        loop.add_reader(reader.fileno(), self._on_pipe, reader)
        loop.add_reader(proc.sentinel, self._on_exit, proc, reader, self._exited)
        logger.info("%s: started worker process %s", self.name, proc.pid)

    def _on_pipe(self, reader: multiprocessing.connection.Connection) -> None:
        try:
            while reader.poll():
                self._pipe_message(reader.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(reader.fileno())

    def _pipe_message(self, msg: tuple[Any, ...]) -> None:
        if msg[0] == "started":
            self.worker_address = msg[1]
            self._ever_started = True
            self._start_failures = 0
            if self._started is not None and not self._started.done():
                self._started.set_result(msg[1])
        elif msg[0] == "closing":
            self._closing_msg = msg

    def _on_exit(
        self, proc: BaseProcess, reader: multiprocessing.connection.Connection, exited: asyncio.Event
    ) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(proc.sentinel)
        try:
            loop.remove_reader(reader.fileno())
            self._on_pipe(reader)  # what it said last
        except (OSError, ValueError):
            pass
        reader.close()
        self._spawn(self._worker_exited(proc, exited))

    async def _worker_exited(self, proc: BaseProcess, exited: asyncio.Event) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 5)
            if self.process is proc:
                self._handle_exit(proc)
        finally:
            exited.set()

    def _handle_exit(self, proc: BaseProcess) -> None:
        self._pid = None
        code = proc.exitcode
        executing = slots.read(self._slots)
        address = self.worker_address
        expected = self._expected_exit
        closing = self._closing_msg
        deliberate = closing is not None and code == 0
        how = (
            f"closed: {closing[1]}"
            if deliberate and closing is not None
            else describe_exit(code, self.memory_limit)
        )
        self._report(address, proc.pid, how, executing, expected or deliberate)
        if self._started is not None and not self._started.done():
            self._started.set_exception(
                RuntimeError(
                    f"worker process {proc.pid} of {self.name} {how} before it registered; log: {self.log}"
                )
            )
            self._started.exception()  # retrieved: nobody may be waiting
        if expected or self.status != "running":
            return
        if deliberate:
            lost_scheduler = bool(closing and closing[2])
            if lost_scheduler and self._connected:
                logger.warning("%s: worker lost the scheduler; starting a new one", self.name)
                self._spawn_worker()
            else:
                self._spawn(self.close())
            return
        self.deaths.append(
            {"pid": proc.pid, "address": address, "how": how, "exitcode": code, "time": time.time()}
        )
        if code == NO_MAIN_GUARD_EXIT:  # the cluster's owner says why, in one line: stay quiet
            self.status = "failed"
            self._spawn(self._give_up())
            return
        logger.warning("%s: worker process %s %s; log: %s", self.name, proc.pid, how, self.log)
        if not address:
            self._start_failures += 1
        if not self._ever_started or self._start_failures >= MAX_START_FAILURES:
            logger.error("%s: the worker could not start (%s); giving up. Log: %s", self.name, how, self.log)
            self.status = "failed"
            self._spawn(self._give_up())
            return
        if not self._connected:
            self._spawn(self.close())
            return
        self._spawn_worker()

    async def _give_up(self) -> None:
        if self._stream is not None:
            await self._stream.close()
            self._stream.comm.close()
        self.closed.set()

    async def _stop_worker(self, timeout: float = KILL_GRACE) -> None:
        proc = self.process
        if proc is None or self._exited.is_set():
            return
        self._expected_exit = True
        if self._pid is not None:
            proc.terminate()
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except TimeoutError:
            logger.info("%s: worker %s did not stop within %g s: killing it", self.name, proc.pid, timeout)
            proc.kill()
            await asyncio.wait_for(self._exited.wait(), 10)

    # -- the scheduler ---------------------------------------------------------------------------
    async def _connect(self) -> None:
        comm = await connect(self.scheduler_address, self.ssl_context)
        await connect_handshake(comm, self.auth_token, "nanny", self.name)
        await comm.write({"op": "register-nanny", "id": self.id, "name": self.name, "pid": os.getpid()})
        self._comm = comm
        self._stream = BatchedSend(comm)
        self._connected = True
        self._spawn(self._scheduler_loop(comm))

    def _report(
        self, address: str, pid: int | None, how: str, executing: list[bytes], expected: bool
    ) -> None:
        msg = {
            "op": "worker-exited",
            "address": address,
            "pid": pid,
            "how": how,
            "executing": executing,
            "expected": expected,
        }
        if self._stream is not None and self._connected:
            try:
                self._stream.send(msg)
            except CommClosedError:
                pass

    async def _scheduler_loop(self, comm: Comm) -> None:
        try:
            while True:
                for msg in await comm.read():
                    self._scheduler_message(msg)
        except CommClosedError:
            pass
        if self.status == "running":
            self._connected = False
            self._spawn(self._reconnect())

    def _scheduler_message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "restart":
            self._spawn(self._restart_request(msg.get("rid"), msg.get("timeout", 60.0)))
        elif op == "close":
            self._spawn(self.close())

    async def _restart_request(self, rid: Any, timeout: float) -> None:
        try:
            reply: dict[str, Any] = {"op": "reply", "rid": rid, "address": await self.restart(timeout)}
        except Exception as exc:
            reply = {"op": "reply", "rid": rid, "error": f"{type(exc).__name__}: {exc}"}
        if self._stream is not None:
            try:
                self._stream.send(reply)
            except CommClosedError:
                pass

    async def _reconnect(self) -> None:
        timeout = float(config.get("distributed.worker.reconnect_timeout", 10))
        deadline = time.monotonic() + timeout
        delay = 0.05
        while self.status == "running" and time.monotonic() < deadline:
            try:
                await self._connect()
                logger.info("%s: reconnected to the scheduler at %s", self.name, self.scheduler_address)
                if self.pid is None and self.status == "running":
                    self._spawn_worker()
                return
            except (OSError, ConnectionError):
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 1.0)
        if self.status == "running":
            logger.warning("%s: lost the scheduler at %s; closing", self.name, self.scheduler_address)
            await self.close()
