"""The ``taskloom scheduler`` and ``taskloom worker`` commands."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import sys
from typing import Any


def add_commands(commands: argparse._SubParsersAction) -> None:
    s = commands.add_parser("scheduler", help="run a distributed scheduler")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8786)
    s.add_argument(
        "--auth-token",
        default=None,
        help="shared token (default: $TASKLOOM_DISTRIBUTED__COMM__AUTH, else a new one, printed)",
    )
    s.add_argument(
        "--no-auth", action="store_true", help="accept unauthenticated connections (trusted networks only)"
    )
    s.set_defaults(func=run_scheduler_cmd)
    w = commands.add_parser("worker", help="run a distributed worker")
    w.add_argument("scheduler", help="the scheduler's address, HOST:PORT")
    w.add_argument("--nthreads", type=int, default=1)
    w.add_argument("--memory-limit", default="0", help="e.g. 4GB (0: no limit)")
    w.add_argument("--name", default="")
    w.add_argument("--host", default="127.0.0.1", help="interface this worker listens on for peers")
    w.add_argument("--auth-token", default=None)
    w.set_defaults(func=run_worker_cmd)


def _token(args: argparse.Namespace) -> str | None:
    from taskloom import config

    return args.auth_token or config.get("distributed.comm.auth", None)


def run_scheduler_cmd(args: argparse.Namespace) -> int:
    from .scheduler.server import Scheduler

    token = _token(args)
    if token is None and not args.no_auth:
        token = secrets.token_urlsafe(24)
        print(f"auth token: {token}", flush=True)

    async def main() -> None:
        scheduler = await Scheduler(args.host, args.port, auth_token=token).start()
        print(f"scheduler at {scheduler.address}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await scheduler.close()

    asyncio.run(main())
    return 0


def run_worker_cmd(args: argparse.Namespace) -> int:
    from .cluster.local import parse_bytes
    from .worker.server import Worker

    async def main() -> Any:
        worker = await Worker(
            args.scheduler, args.nthreads, parse_bytes(args.memory_limit), args.name, host=args.host,
            auth_token=_token(args),
        ).start()  # fmt: skip
        print(f"worker at {worker.address}", flush=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: loop.create_task(worker.close("signal")))
        await worker.closed.wait()

    asyncio.run(main())
    print("worker stopped", file=sys.stderr)
    return 0
