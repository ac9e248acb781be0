"""The ``taskloom`` command: subcommands come from plugins through the ``taskloom_cli`` hook.

The core's own commands (``bench``, ``config``, ``plugins``) are registered by its built-in
plugin exactly as a third-party plugin registers its own.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from .plugins import PluginWarning, get_plugin_manager


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every installed plugin's subcommands."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="taskloom", description="Run Python task graphs on pluggable schedulers."
    )
    parser.add_argument("--version", action="version", version=f"taskloom {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    pm = get_plugin_manager()
    trace = pm.trace.root.get("hook")
    for impl in reversed(pm.hook.taskloom_cli.get_hookimpls()):  # registration order
        try:
            trace("taskloom_cli", {"plugin": impl.plugin_name})
            impl.function(commands=commands)
        except Exception as exc:  # a broken plugin loses its commands, not the whole CLI
            warnings.warn(
                f"taskloom plugin {impl.plugin_name!r} failed to add its commands: "
                f"{type(exc).__name__}: {exc}",
                PluginWarning,
                stacklevel=2,
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taskloom`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "func", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        status = run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover - python -m taskloom.cli
    sys.exit(main())
