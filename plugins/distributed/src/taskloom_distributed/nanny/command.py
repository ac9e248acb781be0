"""``taskloom worker`` under a nanny (the default; ``--no-nanny`` runs the worker in-process).

The command's own process becomes the nanny: it starts the worker process (running the same
command with ``--no-nanny``), restarts it when it dies, and reports each death to the scheduler.
The worker's output stays on this command's terminal, or goes to ``--log-dir``/<name>.log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

from ..loop import run as run_loop
from .nanny import Nanny


def _worker_main(args: argparse.Namespace) -> None:
    """In the worker process: the plain ``taskloom worker`` command."""
    from ..cli import run_worker_cmd

    code = run_worker_cmd(args)
    if code:
        sys.exit(code)


def run_nanny_cmd(args: argparse.Namespace, security: Any) -> int:
    """Run a nanny for one worker until it closes; exit status 1 if the worker could not start."""
    child = argparse.Namespace(**{**vars(args), "no_nanny": True})
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)

    async def main() -> int:
        nanny = await Nanny(
            args.scheduler,
            _worker_main,
            (child,),
            name=args.name,
            auth_token=security.token,
            ssl_context=security.client_context(),
            log_directory=args.log_dir,
        ).start()
        print(f"nanny {os.getpid()}: started worker process {nanny.pid} (log: {nanny.log})", flush=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: loop.create_task(nanny.close()))
        await nanny.closed.wait()
        if nanny.status != "closed":  # gave up: the worker could not start
            await nanny.close()
            return 1
        return 0

    code = run_loop(main())
    print("nanny stopped", file=sys.stderr, flush=True)
    return code
