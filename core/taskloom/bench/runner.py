"""``taskloom bench``: time and measure the standard workloads on every installed scheduler (and Dask's).

For each workload the graph is built once, before anything is timed, and every scheduler runs
that same dict:

* **wall time** is the best of ``--repeat`` runs, each preceded by ``gc.collect()`` (fewer when
  the runs have already taken ``--budget`` seconds: a slow scheduler gets at least one);
* the **baseline** is the same function calls made directly in topological order over the
  pre-built graph (:func:`taskloom.bench.workloads.direct`), timed the same way; a scheduler's
  **overhead** per task is ``(wall - baseline) / tasks``;
* **peak memory** comes from one more, untimed run under ``tracemalloc``, started after the
  graph was built, so it counts what the scheduler allocates above the graph.  Only this
  process is traced (for process-based schedulers, the parent's side).

With ``--compare dask`` each taskloom scheduler with a Dask counterpart (``sync`` -
``dask.local.get_sync``, ``threads`` - ``dask.threaded.get``, ``processes`` -
``dask.multiprocessing.get``, ``distributed`` - ``distributed.Client.get`` on a dask.distributed
``LocalCluster``) is measured against it on the same graph, same worker count.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any, NamedTuple

from .. import config
from ..errors import SchedulerNotFoundError
from ..plugins import SchedulerSpec, get_scheduler_spec, schedulers
from .report import Report, Row, format_machine, format_markdown, format_text, machine_info, write_text
from .workloads import MILLION, STANDARD, Workload, direct

_MILLION_SCHEDULERS = ("sync", "threads")
_MILLION_MAX_REPEAT = 3

Get = Callable[[dict[Any, Any], Any], Any]
Setup = Callable[[], AbstractContextManager[dict[str, Any]]]
"""What a scheduler needs around its runs (an executor, a cluster): a context giving get() kwargs."""
DaskSetup = Callable[[], AbstractContextManager[Get]]
"""What a Dask counterpart needs around its runs of one workload: a context giving its get."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``taskloom bench``'s options to ``parser``."""
    parser.add_argument(
        "--scheduler", action="append", metavar="NAME", default=None,
        help="run only this scheduler (repeat to choose several); default: every installed one",
    )  # fmt: skip
    parser.add_argument(
        "--workload", action="append", metavar="NAME", default=None,
        choices=[w.name for w in STANDARD], help="run only this standard workload (repeatable)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per figure, best kept (default 5)")
    parser.add_argument(
        "--num-workers", type=int, default=None, metavar="N",
        help="workers for parallel schedulers, taskloom's and Dask's alike (default: usable CPUs)",
    )  # fmt: skip
    parser.add_argument(
        "--compare", choices=["dask"], default=None,
        help="also run Dask's matching schedulers on the same graphs",
    )  # fmt: skip
    parser.add_argument(
        "--million", action="store_true",
        help="also run a 1,000,000-task graph on sync and threads (wall time, memory per task)",
    )  # fmt: skip
    parser.add_argument(
        "--budget", type=float, default=30.0, metavar="SECONDS",
        help="stop repeating a figure once its runs took this long (default 30; at least one run)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny graphs and one repeat: a smoke test")
    parser.add_argument(
        "--no-matrix", action="store_true",
        help="skip the decision matrix (CPU-bound tasks and 50 MB arrays on sync, threads, processes)",
    )  # fmt: skip
    parser.add_argument(
        "--no-cases", action="store_true",
        help="skip the benchmarks that installed plugins add (taskloom_bench_cases hook)",
    )  # fmt: skip
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown to PATH")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``taskloom bench``; 0 if every run succeeded, 1 if any failed, 2 on a usage error."""
    try:
        chosen = _choose_schedulers(args.scheduler)
    except SchedulerNotFoundError as exc:
        print(f"taskloom bench: error: {exc}", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print("taskloom bench: error: --repeat must be at least 1", file=sys.stderr)
        return 2
    from .. import __version__

    installed = {n: s.distribution for n, s in schedulers().items()}
    machine = machine_info(__version__, _dask_version(), installed)
    workers = args.num_workers or machine["cpu_usable"]
    repeat = 1 if args.quick else args.repeat
    settings = {"repeat": repeat, "budget_s": args.budget, "num_workers": workers, "quick": bool(args.quick)}
    report = Report(command=_command_line(args), machine=machine, settings=settings)
    specs = _runnable(chosen, bool(args.scheduler), report)
    with ExitStack() as stack:
        dask_gets: dict[str, tuple[str, DaskSetup]] = {}
        if args.compare == "dask":
            dask_gets = _dask_counterparts(specs, workers, stack, report)
        print(format_machine(report), flush=True)
        workloads = [w for w in STANDARD if not args.workload or w.name in args.workload]
        for w in workloads:
            size = w.quick if args.quick else w.default
            _bench_workload(report, w, size, specs, dask_gets, workers, _Timing(repeat, args.budget))
        if args.million:
            size = MILLION.quick if args.quick else MILLION.default
            big = {n: s for n, s in specs.items() if n in _MILLION_SCHEDULERS}
            big_dask = {n: g for n, g in dask_gets.items() if n in big}
            timing = _Timing(min(repeat, _MILLION_MAX_REPEAT), args.budget)
            _bench_workload(report, MILLION, size, big, big_dask, workers, timing)
        matrix_text = ""
        matrix_rows: list[dict[str, Any]] = []
        if not args.quick and not args.no_matrix:
            from .matrix import format_rows, measure

            local: dict[str, dict[str, Any]] = {
                n: {"num_workers": workers} for n in ("sync", "threads", "processes") if n in specs
            }
            if local:
                matrix_rows = measure(local)
                matrix_text = format_rows(matrix_rows)
        case_rows: list[dict[str, Any]] = []
        case_text = ""
        failed_cases = 0
        if not args.no_cases:
            from .cases import BenchContext, plugin_cases, run_cases

            context = BenchContext(tuple(specs), workers, repeat, args.compare, bool(args.quick))
            case_rows, case_text, failed_cases = run_cases(plugin_cases(), context)
    compare = bool(dask_gets)
    print()
    print(format_text(report, compare))
    if matrix_text:
        print(matrix_text)
    if case_text:
        print(case_text)
    if args.json:
        import json

        figures = {**report.as_dict(), "decision_matrix": matrix_rows, "cases": case_rows}
        figures["ok"] = figures["ok"] and not failed_cases
        write_text(args.json, json.dumps(figures, indent=2, default=repr) + "\n")
    if args.markdown:
        extra = "".join(f"\n```{text}\n```\n" for text in (matrix_text, case_text) if text)
        write_text(args.markdown, format_markdown(report, compare) + extra)
    failed = len([r for r in report.rows if r.error is not None]) + failed_cases
    if failed:
        print(f"\n{failed} run(s) failed", file=sys.stderr)
        return 1
    return 0


def _choose_schedulers(names: list[str] | None) -> dict[str, SchedulerSpec]:
    """The schedulers to run: every installed one, or those named (aliases resolve)."""
    if not names:
        return schedulers()
    chosen: dict[str, SchedulerSpec] = {}
    for name in names:
        spec = get_scheduler_spec(name)
        chosen[spec.name] = spec
    return chosen


class _Skip(Exception):
    """The scheduler cannot run here as things stand; the message says why."""


def _setup_of(spec: SchedulerSpec, explicit: bool) -> Setup:
    """What to enter around ``spec``'s runs (its own ``setup``, if any); raises _Skip if it should not run.

    ``pool`` runs on the executor the user configured; without one it is skipped, unless chosen
    with --scheduler: then its ``setup`` provides one.  A scheduler that has no ``setup`` but
    needs a cluster (``dask``) runs only when chosen with --scheduler.
    """
    if spec.name == "pool" and config.get("pool", None) is not None:
        return _no_setup
    if spec.name == "pool" and not explicit:
        raise _Skip(
            "it runs on a configured executor and 'pool' is not set (config.set(pool=...)); "
            "choose it with --scheduler pool to run it on its own setup's executor"
        )
    if spec.name == "dask" and not explicit:
        raise _Skip(
            "it runs taskloom graphs on a dask.distributed cluster (a route to Dask's engine, not a "
            "taskloom scheduler to compare); choose it with --scheduler dask"
        )
    if spec.setup is not None:
        return spec.setup
    return _no_setup


def _no_setup() -> AbstractContextManager[dict[str, Any]]:
    return nullcontext({})


def _runnable(
    chosen: dict[str, SchedulerSpec], explicit: bool, report: Report
) -> dict[str, tuple[SchedulerSpec, Setup]]:
    """The chosen schedulers that can run, each with its setup; the others are noted as skipped."""
    out = {}
    for name, spec in chosen.items():
        try:
            out[name] = (spec, _setup_of(spec, explicit))
        except _Skip as why:
            report.skipped[name] = str(why)
            report.notes.append(f"scheduler {name!r} skipped: {why}")
    return out


def _bench_workload(
    report: Report,
    w: Workload,
    size: int,
    specs: dict[str, tuple[SchedulerSpec, Setup]],
    dask_gets: dict[str, tuple[str, DaskSetup]],
    workers: int,
    timing: _Timing,
) -> None:
    """Build ``w``'s graph once; measure the baseline, then every scheduler and its Dask counterpart."""
    graph, out = w.build(size)
    tasks = len(graph)
    print(f"\n{w.name}: {w.describe(size)} ({tasks:,} tasks)", flush=True)
    calls = direct(graph, out)
    baseline_s, expected, _ = _best_time(calls, timing)
    del calls
    print(f"  {'direct calls':<28} {baseline_s / tasks * 1e6:8.2f} µs/task", flush=True)
    for name, (spec, setup) in specs.items():
        row = Row(w.name, name, "taskloom", tasks, baseline_s=baseline_s)
        try:
            with setup() as kwargs:
                _measure(row, _taskloom_get(spec, workers, kwargs), graph, out, expected, timing)
        except Exception as exc:  # the setup itself failed
            row.error = _describe(exc)
            print(f"  {name:<28} ERROR {row.error}", flush=True)
        report.rows.append(row)
        if name in dask_gets:
            label, dask_setup = dask_gets[name]
            theirs = Row(w.name, label, "dask", tasks, baseline_s=baseline_s, pair=name)
            try:
                with dask_setup() as get:  # e.g. Dask's cluster: up only while Dask runs
                    _measure(theirs, get, graph, out, expected, timing)
            except Exception as exc:  # the setup itself failed
                theirs.error = _describe(exc)
                print(f"  {label + ' (dask)':<28} ERROR {theirs.error}", flush=True)
            report.rows.append(theirs)


def _taskloom_get(spec: SchedulerSpec, workers: int, kwargs: dict[str, Any]) -> Get:
    get = spec.get
    kwargs = {"num_workers": workers, **kwargs}

    def run(graph: dict[Any, Any], out: Any) -> Any:
        return get(graph, [out], **kwargs)[0]

    return run


def _measure(row: Row, get: Get, graph: dict[Any, Any], out: Any, expected: Any, timing: _Timing) -> None:
    """Fill ``row``: best wall time, result, then the tracemalloc peak of one more run."""
    label = f"{row.scheduler}" if row.engine == "taskloom" else f"{row.scheduler} (dask)"
    try:
        row.wall_s, row.result, row.repeat = _best_time(lambda: get(graph, out), timing)
        if row.result != expected:
            raise AssertionError(f"wrong result {row.result!r}, expected {expected!r}")
        row.peak_bytes = _peak_bytes(lambda: get(graph, out))
    except Exception as exc:
        row.error = _describe(exc)
        print(f"  {label:<28} ERROR {row.error}", flush=True)
        return
    print(
        f"  {label:<28} {row.us_per_task:8.2f} µs/task  {row.overhead_us_per_task:8.2f} overhead"
        f"  {row.bytes_per_task:8,.0f} B/task",
        flush=True,
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


class _Timing(NamedTuple):
    repeat: int  # runs per figure
    budget: float  # seconds after which no further run starts


def _best_time(fn: Callable[[], Any], timing: _Timing) -> tuple[float, Any, int]:
    """Best wall time of up to ``repeat`` calls of ``fn`` (``gc.collect()`` before each), result, runs."""
    best = float("inf")
    result = None
    spent = 0.0
    runs = 0
    while runs < timing.repeat and (runs == 0 or spent < timing.budget):
        result = None
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        t = time.perf_counter() - t0
        best = min(best, t)
        spent += t
        runs += 1
    return best, result, runs


def _peak_bytes(fn: Callable[[], Any]) -> int:
    """The tracemalloc peak of one call of ``fn``: what it allocates above what already exists."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _ready(get: Get) -> DaskSetup:
    """A Dask counterpart that needs nothing around it."""
    return lambda: nullcontext(get)


def _dask_counterparts(
    specs: dict[str, Any], workers: int, stack: ExitStack, report: Report
) -> dict[str, tuple[str, DaskSetup]]:
    """For each taskloom scheduler with a Dask equivalent: (Dask's name, a setup giving a get that
    runs the same graph)."""
    try:
        import dask.local
        import dask.threaded
    except ImportError as exc:
        report.notes.append(f"--compare dask: dask is not importable ({exc}); Dask not measured")
        print(f"note: {report.notes[-1]}", file=sys.stderr)
        return {}
    out: dict[str, tuple[str, DaskSetup]] = {}
    if "sync" in specs:
        out["sync"] = ("dask.local.get_sync", _ready(lambda g, k: dask.local.get_sync(g, k)))
    if "threads" in specs:
        threaded: Get = lambda g, k: dask.threaded.get(g, k, num_workers=workers)  # noqa: E731
        out["threads"] = ("dask.threaded.get", _ready(threaded))
    if "processes" in specs:
        out["processes"] = ("dask.multiprocessing.get", _ready(_dask_processes(workers, stack, report)))
    if "distributed" in specs:
        dist = _dask_distributed(workers, report)
        if dist is not None:
            out["distributed"] = ("distributed.Client.get", dist)
    return out


def _dask_distributed(workers: int, report: Report) -> DaskSetup | None:
    """``client.get`` of a dask.distributed LocalCluster shaped like taskloom's (``workers`` x 1
    thread), started around Dask's runs of each workload and closed after them: an idle cluster's
    heartbeats and monitors (its scheduler shares this process) must not weigh on taskloom's runs."""
    try:
        import distributed
    except ImportError as exc:
        report.notes.append(f"--compare dask: dask.distributed is not importable ({exc}); not measured")
        return None
    report.notes.append(
        f"distributed.Client.get runs on a dask.distributed LocalCluster of {workers} worker "
        "processes x 1 thread, like taskloom's distributed setup, up only while Dask runs"
    )

    @contextmanager
    def setup() -> Iterator[Get]:
        with (
            distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            distributed.Client(cluster, set_as_default=False) as client,
        ):
            yield lambda graph, out: client.get(graph, out, sync=True)

    return setup


def _dask_processes(workers: int, stack: ExitStack, report: Report) -> Get:
    import dask.multiprocessing

    pool = stack.enter_context(_process_pool(workers))
    report.notes.append(
        "dask.multiprocessing.get runs on one reused process pool (by default it starts a new pool "
        "per call) with optimize_graph=False, so both sides run the same tasks on warm workers"
    )

    def run(graph: dict[Any, Any], out: Any) -> Any:
        return dask.multiprocessing.get(graph, out, pool=pool, optimize_graph=False)

    return run


@contextmanager
def _process_pool(workers: int) -> Iterator[Executor]:
    from concurrent.futures import ProcessPoolExecutor

    import dask.multiprocessing

    pool = ProcessPoolExecutor(workers, mp_context=dask.multiprocessing.get_context())
    try:
        yield pool
    finally:
        pool.shutdown(wait=True)


def _dask_version() -> str | None:
    try:
        import dask
    except ImportError:
        return None
    return str(dask.__version__)


def _command_line(args: argparse.Namespace) -> str:
    """The ``taskloom bench`` command that reproduces this run."""
    parts = ["taskloom", "bench"]
    for name in args.scheduler or ():
        parts += ["--scheduler", name]
    for name in args.workload or ():
        parts += ["--workload", name]
    if args.repeat != 5:
        parts += ["--repeat", str(args.repeat)]
    if args.budget != 30.0:
        parts += ["--budget", f"{args.budget:g}"]
    if args.num_workers:
        parts += ["--num-workers", str(args.num_workers)]
    if args.compare:
        parts += ["--compare", args.compare]
    for flag in ("million", "quick"):
        if getattr(args, flag):
            parts.append(f"--{flag}")
    for opt in ("json", "markdown"):
        if getattr(args, opt):
            parts += [f"--{opt}", getattr(args, opt)]
    return shlex.join(parts)
