"""``ProgressBar``, the profilers and the HTML report, on every installed scheduler."""

from __future__ import annotations

import contextlib
import io
import itertools
import operator
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import taskloom
from taskloom import Ref, Task
from taskloom.diagnostics import CacheProfiler, Profiler, ProgressBar, ResourceProfiler, report
from taskloom.diagnostics._shared import key_prefix, needed_tasks

SCHEDULERS = sorted(taskloom.schedulers())
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = pytest.mark.usefixtures("no_callback_left_behind")


@pytest.fixture(params=SCHEDULERS)
def run(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``run(graph, keys, **kwargs)``: ``taskloom.get`` on one scheduler (its id is the name)."""
    name = str(request.param)
    spec = taskloom.schedulers()[name]
    with spec.setup() if spec.setup is not None else contextlib.nullcontext({}) as extra:

        def run(graph: Any, keys: Any, **kwargs: Any) -> Any:
            return taskloom.get(graph, keys, scheduler=name, **{**extra, **kwargs})

        run.scheduler = name  # type: ignore[attr-defined]
        yield run


def fail(x: Any) -> Any:
    raise ValueError(f"bad input {x!r}")


def meet(barrier: threading.Barrier, x: Any) -> Any:
    """Return ``x`` once ``barrier.parties`` tasks are running at once."""
    barrier.wait()
    return x


def make_graph(width: int = 12) -> tuple[dict[Any, Any], list[Any]]:
    """A literal, ``width`` leaves, a sum of them, an alias, and one task nobody requests.

    Returns the graph and the keys of the tasks that computing ``"total"`` runs.
    """
    graph: dict[Any, Any] = {"a": 1}
    for i in range(width):
        graph[("leaf", i)] = Task(operator.add, Ref("a"), i)
    graph["sum-1f3e"] = Task(sum, [Ref(("leaf", i)) for i in range(width)])
    graph["total"] = Ref("sum-1f3e")  # an alias runs as a task too
    graph["unused"] = Task(operator.neg, Ref("a"))
    return graph, [("leaf", i) for i in range(width)] + ["sum-1f3e", "total"]


# ---------------------------------------------------------------------------------------------
# ProgressBar
# ---------------------------------------------------------------------------------------------


def test_progress_bar_shows_every_task_and_ends_at_100_percent(run: Any) -> None:
    graph, tasks = make_graph()
    out = io.StringIO()
    with ProgressBar(out=out):
        assert run(graph, "total") == 12 + sum(range(12))
    text = out.getvalue()
    n = len(tasks)  # neither the literal nor the unrequested task counts
    assert f"{n}/{n}" in text and "100%" in text
    assert text.endswith("\n")


def test_progress_bar_minimum_hides_a_fast_compute(run: Any) -> None:
    graph, _ = make_graph()
    out = io.StringIO()
    with ProgressBar(out=out, minimum=60):
        run(graph, "total")
    assert out.getvalue() == ""


def test_progress_bar_marks_a_failed_compute(run: Any) -> None:
    graph = {"a": 1, "b": Task(fail, Ref("a")), "c": Task(operator.neg, Ref("b"))}
    out = io.StringIO()
    with ProgressBar(out=out), pytest.raises(ValueError, match="bad input 1"):
        run(graph, "c")
    text = out.getvalue()
    assert "failed: ValueError" in text
    assert "100%" not in text


def test_progress_bar_registered_shows_one_bar_per_compute() -> None:
    graph, tasks = make_graph(3)
    out = io.StringIO()
    bar = ProgressBar(out=out)
    bar.register()
    try:
        taskloom.get(graph, "total", scheduler="sync")
        taskloom.get(graph, ("leaf", 0), scheduler="sync")
    finally:
        bar.unregister()
    lines = out.getvalue().strip("\n").split("\n")
    assert len(lines) == 2
    assert f"{len(tasks)}/{len(tasks)}" in lines[0] and "1/1" in lines[1]


def test_progress_bar_counts_the_tasks_of_a_classic_graph() -> None:
    graph: dict[Any, Any] = {
        "x": 1,
        "y": (operator.add, "x", 1),
        "z": (operator.mul, "y", "y"),
        "w": (abs, "x"),
    }
    out = io.StringIO()
    with ProgressBar(out=out):
        assert taskloom.get(graph, "z", scheduler="sync") == 4
    assert "2/2" in out.getvalue()


def compute_inner(width: int) -> int:
    """A task that runs a compute of its own (``width`` + 2 tasks)."""
    graph, _ = make_graph(width)
    return int(taskloom.get(graph, "total", scheduler="sync"))


def test_progress_bar_adds_a_nested_compute_to_the_running_bar() -> None:
    graph: dict[Any, Any] = {"inner": Task(compute_inner, 3), "outer": Task(operator.neg, Ref("inner"))}
    out = io.StringIO()
    with ProgressBar(out=out):
        assert taskloom.get(graph, "outer", scheduler="sync") == -(3 + 0 + 1 + 2)
    lines = out.getvalue().strip("\n").split("\n")
    assert len(lines) == 1 and "7/7" in lines[0] and "100%" in lines[0]


def test_needed_tasks_culls_like_the_planner() -> None:
    graph, tasks = make_graph(4)
    found = needed_tasks(graph, ["total"])
    assert found is not None
    assert sorted(repr(k) for k, deps in found.items() if deps is not None) == sorted(map(repr, tasks))
    assert found["sum-1f3e"] == tuple(("leaf", i) for i in range(4))
    assert found["a"] is None  # data, not a task; "unused" is not visited
    assert set(found) == {"a", *tasks}
    assert needed_tasks(graph, ["missing"]) is None  # the compute is about to fail anyway


# ---------------------------------------------------------------------------------------------
# Profiler
# ---------------------------------------------------------------------------------------------


def test_profiler_records_every_task_with_its_times_and_worker(run: Any) -> None:
    graph, tasks = make_graph()
    with Profiler() as prof:
        run(graph, "total")
    assert sorted(repr(r.key) for r in prof.results) == sorted(map(repr, tasks))
    for r in prof.results:
        assert r.start <= r.end and r.duration == r.end - r.start
        assert isinstance(r.worker, str) and r.worker
        assert r.error is None
    for worker in {r.worker for r in prof.results}:  # a worker runs one task at a time
        mine = sorted((r for r in prof.results if r.worker == worker), key=lambda r: r.start)
        for a, b in itertools.pairwise(mine):
            assert a.end <= b.start + 1e-3


def test_profiler_records_the_error_of_a_failed_task(run: Any) -> None:
    graph = {"a": 1, "b": Task(fail, Ref("a"))}
    with Profiler() as prof, pytest.raises(ValueError):
        run(graph, "b")
    (record,) = prof.results
    assert record.key == "b" and record.error == "ValueError: bad input 1"


def test_profiler_sees_threads_working_at_once() -> None:
    barrier = threading.Barrier(2, timeout=30)
    graph: dict[Any, Any] = {"x": Task(meet, barrier, 1), "y": Task(meet, barrier, 2)}
    with Profiler() as prof:
        assert taskloom.get(graph, ["x", "y"], scheduler="threads", num_workers=2) == [1, 2]
    x, y = sorted(prof.results, key=lambda r: r.key)
    assert x.worker != y.worker
    assert x.start < y.end and y.start < x.end  # they overlapped


def test_profiler_clear_and_reentry_start_empty() -> None:
    graph, tasks = make_graph(2)
    prof = Profiler()
    with prof:
        taskloom.get(graph, "total", scheduler="sync")
    assert len(prof.results) == len(tasks)
    with prof:  # a with block starts afresh
        taskloom.get(graph, ("leaf", 0), scheduler="sync")
    assert [r.key for r in prof.results] == [("leaf", 0)]
    prof.clear()
    assert prof.results == []


# ---------------------------------------------------------------------------------------------
# ResourceProfiler
# ---------------------------------------------------------------------------------------------


def _sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "taskloom-resource-profiler"]


def test_resource_profiler_samples_and_stops_its_thread(run: Any) -> None:
    graph, _ = make_graph()
    with ResourceProfiler(dt=0.01) as rprof:
        run(graph, "total")
        assert _sampler_threads() == []  # joined when the compute finished
    assert len(rprof.results) >= 1
    times = [r.time for r in rprof.results]
    assert times == sorted(times)
    assert all(r.memory > 0 and r.cpu >= 0 for r in rprof.results)


def test_resource_profiler_counts_worker_processes_memory() -> None:
    psutil = pytest.importorskip("psutil")
    if "processes" not in SCHEDULERS:
        pytest.skip("the processes scheduler is not installed")
    graph, _ = make_graph(2)
    with ResourceProfiler(dt=0.01) as rprof:
        taskloom.get(graph, "total", scheduler="processes", num_workers=2)
    own = psutil.Process().memory_info().rss
    assert rprof.results[-1].memory > own  # this process plus its workers


def test_resource_profiler_thread_stops_when_unregistered_mid_compute() -> None:
    rprof = ResourceProfiler(dt=0.01)
    rprof.register()
    rprof.start({}, [], "manual")  # a compute whose finish never comes
    assert len(_sampler_threads()) == 1
    rprof.unregister()
    assert _sampler_threads() == []
    assert len(rprof.results) >= 1


# ---------------------------------------------------------------------------------------------
# CacheProfiler
# ---------------------------------------------------------------------------------------------


def test_cache_profiler_frees_a_result_when_its_last_dependent_finishes(run: Any) -> None:
    graph = {
        "a": 1,
        "b": Task(operator.add, Ref("a"), 10),
        ("part", 0): Task(operator.mul, Ref("b"), 2),
        ("part", 1): Task(operator.mul, Ref("b"), 3),
        "total": Task(operator.add, Ref(("part", 0)), Ref(("part", 1))),
        "unused": Task(operator.neg, Ref("a")),
    }
    with CacheProfiler() as cprof:
        assert run(graph, ["total", ("part", 1)]) == [55, 33]
    rec = {r.key: r for r in cprof.results}
    assert set(rec) == {"b", ("part", 0), ("part", 1), "total"}
    assert all(r.stored <= r.freed and r.cost >= 0 and r.worker for r in rec.values())
    assert rec["b"].freed == max(rec[("part", 0)].stored, rec[("part", 1)].stored)
    assert rec[("part", 0)].freed == rec["total"].stored
    # requested results are held until the compute ends, even when a task needs them
    assert rec[("part", 1)].freed == rec["total"].freed >= rec["total"].stored
    assert max(n for _, n in cprof.occupancy()) <= 3
    assert cprof.occupancy()[-1][1] == 0


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def _profile(run: Any) -> tuple[Profiler, ResourceProfiler, list[Any]]:
    graph, tasks = make_graph(6)
    odd = "quote\"'<b>&amp;-7"  # every character the attribute must escape
    graph[odd] = Task(operator.add, Ref("total"), 1)
    with Profiler() as prof, ResourceProfiler(dt=0.01) as rprof:
        run(graph, odd)
    return prof, rprof, [*tasks, odd]


@pytest.mark.timeout(120)
def test_report_renders_in_a_browser(run: Any, tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    prof, rprof, tasks = _profile(run)
    path = report([prof, rprof], tmp_path / "report.html", title=f"run on {run.scheduler}")
    assert path == str(tmp_path / "report.html")
    requested: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(Path(path).as_uri())
            assert page.title() == f"run on {run.scheduler}"
            rects = page.locator("rect.task")
            assert rects.count() == len(tasks)
            keys = page.eval_on_selector_all("rect.task", "els => els.map(e => e.dataset.key)")
            assert sorted(keys) == sorted(repr(k) for k in tasks)
            tips = page.eval_on_selector_all("rect.task > title", "els => els.map(e => e.textContent)")
            assert sorted(tip.split("\n")[0] for tip in tips) == sorted(keys)  # hover: key, duration
            assert all(re.search(r"\d (s|ms|µs) on ", tip) for tip in tips)
            workers = page.eval_on_selector_all("g.worker", "els => els.map(e => e.dataset.worker)")
            assert sorted(workers) == sorted({r.worker for r in prof.results})  # one row each
            for worker in workers:  # each task in its worker's row
                row = page.locator(f'g.worker[data-worker="{worker}"] rect.task')
                assert row.count() == sum(r.worker == worker for r in prof.results)
            for ident in ("task-stream", "cpu-plot", "memory-plot"):
                assert page.locator(f"svg#{ident}").is_visible()
            assert page.locator("#cpu-plot polyline.cpu").count() == 1
            assert page.locator("#cpu-plot circle").count() == len(rprof.results)
            box = page.locator("svg#task-stream").bounding_box()
            assert box is not None and box["width"] > 500 and box["height"] > 20
            assert page.locator("#summary").inner_text().count(str(len(tasks))) >= 1
        finally:
            browser.close()
    assert all(url.startswith("file:") for url in requested), requested


def test_report_is_self_contained(tmp_path: Path) -> None:
    graph, tasks = make_graph(3)
    with Profiler() as prof, ResourceProfiler(dt=0.01) as rprof, CacheProfiler() as cprof:
        taskloom.get(graph, "total", scheduler="sync")
    text = Path(report([prof, rprof, cprof], tmp_path / "r.html")).read_text("utf-8")
    assert not re.search(r"""\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.IGNORECASE)
    assert "<script" not in text and "<link" not in text
    assert text.count('class="task"') == len(tasks)
    assert 'id="cache-plot"' in text and 'id="cpu-plot"' in text


def test_report_draws_failed_tasks_in_red(tmp_path: Path) -> None:
    graph: dict[Any, Any] = {"a": 1, "ok": Task(operator.neg, Ref("a")), "bad": Task(fail, Ref("ok"))}
    with Profiler() as prof, pytest.raises(ValueError):
        taskloom.get(graph, "bad", scheduler="sync")
    text = Path(report(prof, tmp_path / "r.html")).read_text("utf-8")
    assert text.count('class="task error"') == 1
    assert re.search(r'class="task error" data-key="&#x27;bad&#x27;"[^>]*fill="#d62728"', text)
    assert "ValueError: bad input -1" in text


def test_report_rejects_what_is_not_a_profiler(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="Profiler"):
        report([object()], tmp_path / "r.html")  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("key", "prefix"),
    [
        ("add-3f2a9c", "add"),
        ("my-task-1", "my-task"),
        ("plain", "plain"),
        ("-lead", "-lead"),
        (("part", 0), "part"),
        (("sum-ab12", 3, 1), "sum"),
        (b"raw-01", "raw"),
        (7, "7"),
    ],
)
def test_key_prefix_names_tasks_for_colouring(key: Any, prefix: str) -> None:
    assert key_prefix(key) == prefix


# ---------------------------------------------------------------------------------------------
# The package
# ---------------------------------------------------------------------------------------------


def test_importing_diagnostics_loads_neither_tqdm_nor_psutil() -> None:
    code = (
        "import sys, taskloom.diagnostics as d\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tqdm', 'psutil'))\n"
        "assert not heavy, heavy\n"
        "assert {'ProgressBar', 'Profiler', 'ResourceProfiler', 'CacheProfiler', 'report'} <= set(dir(d))\n"
        "import taskloom.diagnostics._report\n"
        "assert callable(d.report) and d.report.__module__ == 'taskloom.diagnostics._report'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
