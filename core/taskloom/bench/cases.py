"""Benchmarks that plugins add to ``taskloom bench`` through the ``taskloom_bench_cases`` hook.

A plugin returns :class:`BenchCase` objects; ``taskloom bench`` runs each after the standard
workloads with a :class:`BenchContext` (the chosen schedulers, worker count, repeats, whether
Dask is compared, quick mode) and prints the :class:`BenchFigure` rows it returns.  A case that
raises is reported with its name and the run goes on (the exit status says a run failed)::

    @taskloom.hookimpl
    def taskloom_bench_cases():
        return [BenchCase("mine", "what it measures", run=measure_mine)]
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ..plugins import get_plugin_manager


@attrs.frozen
class BenchContext:
    """What a case is asked to measure: the run's schedulers and settings."""

    schedulers: tuple[str, ...]  # the taskloom schedulers chosen for this run (canonical names)
    num_workers: int
    repeat: int  # timed runs per figure; keep the best
    compare: str | None  # "dask" with --compare dask, else None
    quick: bool  # a smoke test: make the workload tiny


@attrs.frozen
class BenchFigure:
    """One measured row: who ran it, the best wall time, and a remark (a ratio, a rate)."""

    scheduler: str
    seconds: float
    engine: str = "taskloom"  # or "dask" for the comparison's own scheduler
    note: str = ""


@attrs.frozen
class BenchCase:
    """A benchmark from a plugin: ``run(context)`` measures it and returns its figures."""

    name: str
    description: str
    run: Callable[[BenchContext], Sequence[BenchFigure]]


def plugin_cases() -> list[BenchCase]:
    """Every case the installed and registered plugins provide, in registration order."""
    cases: list[BenchCase] = []
    for provided in get_plugin_manager().hook.taskloom_bench_cases():
        cases.extend(provided or ())
    return cases


def run_cases(cases: Sequence[BenchCase], context: BenchContext) -> tuple[list[dict[str, Any]], str, int]:
    """Run ``cases``; return their rows (for JSON), the text to print, and how many failed."""
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    failed = 0
    for case in cases:
        print(f"\n{case.name}: {case.description}", flush=True)
        lines += ["", f"{case.name}: {case.description}"]
        try:
            figures = list(case.run(context))
        except Exception as exc:
            failed += 1
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            print(f"  ERROR {error}", file=sys.stderr, flush=True)
            lines.append(f"  ERROR {error}")
            rows.append({"case": case.name, "error": error})
            continue
        for f in figures:
            label = f.scheduler if f.engine == "taskloom" else f"{f.scheduler} ({f.engine})"
            line = f"  {label:<32} {f.seconds:8.3f} s  {f.note}".rstrip()
            print(line, flush=True)
            lines.append(line)
            rows.append({"case": case.name, **attrs.asdict(f), "error": None})
    return rows, "\n".join(lines), failed
