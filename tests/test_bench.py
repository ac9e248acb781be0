"""Tests for ``taskloom bench``: a real smoke run, scheduler choice and errors, and its workloads."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import taskloom
from taskloom import plugins
from taskloom.bench.cases import BenchCase, BenchContext, BenchFigure
from taskloom.bench.workloads import MILLION, STANDARD, direct
from taskloom.cli import main

DASK_COUNTERPARTS = {
    "sync": "dask.local.get_sync",
    "threads": "dask.threaded.get",
    "processes": "dask.multiprocessing.get",
    "distributed": "distributed.Client.get",
}


def run_bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskloom", "bench", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=280,
    )


@pytest.mark.timeout(300)
def test_quick_bench_with_dask_measures_every_scheduler_and_workload(tmp_path: Path) -> None:
    pytest.importorskip("dask")
    proc = run_bench("--quick", "--compare", "dask", "--json", "out.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["ok"] is True

    installed = set(taskloom.schedulers())
    ran = {r["scheduler"] for r in report["results"] if r["engine"] == "taskloom"}
    assert ran | set(report["skipped"]) == installed
    assert {"sync", "threads"} <= ran
    workloads = {r["workload"] for r in report["results"]}
    assert workloads == {w.name for w in STANDARD}

    for row in report["results"]:
        assert row["error"] is None
        assert row["wall_s"] > 0
        assert row["us_per_task"] > 0
        assert row["tasks_per_s"] > 0
        assert row["peak_bytes"] > 0
        assert row["tasks"] >= 500
        assert row["result"] is not None

    for name in ran & set(DASK_COUNTERPARTS):
        for w in STANDARD:
            (theirs,) = [
                r for r in report["results"]
                if r["engine"] == "dask" and r["pair"] == name and r["workload"] == w.name
            ]  # fmt: skip
            assert theirs["scheduler"] == DASK_COUNTERPARTS[name]
            ours = next(
                r for r in report["results"]
                if r["engine"] == "taskloom" and r["scheduler"] == name and r["workload"] == w.name
            )  # fmt: skip
            assert theirs["result"] == ours["result"]
    assert report["comparisons"], "the JSON lists taskloom-vs-Dask ratios"
    assert "vs dask" in proc.stdout
    assert "x faster" in proc.stdout or "x slower" in proc.stdout


@pytest.mark.timeout(300)
def test_unknown_scheduler_is_an_error_naming_the_installed_ones(tmp_path: Path) -> None:
    proc = run_bench("--quick", "--scheduler", "nosuch", cwd=tmp_path)
    assert proc.returncode != 0
    assert "unknown scheduler 'nosuch'" in proc.stderr
    for name in taskloom.schedulers():
        assert name in proc.stderr
    assert "Traceback" not in proc.stderr


def _explode(graph: Any, keys: Any, **kwargs: Any) -> list[Any]:
    raise RuntimeError("this scheduler always fails")


class BrokenSchedulerPlugin:
    @taskloom.hookimpl
    def taskloom_schedulers(self) -> list[taskloom.SchedulerSpec]:
        return [taskloom.SchedulerSpec("broken-for-test", get=_explode, aliases=("kaput",))]


@pytest.fixture
def broken_scheduler() -> Iterator[None]:
    plugin = BrokenSchedulerPlugin()
    plugins.register(plugin, name="broken-for-test")
    try:
        yield
    finally:
        plugins.unregister(plugin)


@pytest.mark.timeout(300)
def test_a_failing_scheduler_is_reported_in_its_row_and_the_run_continues(
    broken_scheduler: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    md = tmp_path / "out.md"
    argv = ["bench", "--quick", "--workload", "chain", "--scheduler", "kaput", "--scheduler", "synchronous"]
    status = main([*argv, "--json", str(out), "--markdown", str(md)])
    assert status == 1
    rows = {r["scheduler"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"broken-for-test", "sync"}, "aliases resolve to the canonical names"
    assert rows["broken-for-test"]["error"] == "RuntimeError: this scheduler always fails"
    assert rows["sync"]["error"] is None and rows["sync"]["wall_s"] > 0
    printed = capsys.readouterr().out
    assert "ERROR: RuntimeError: this scheduler always fails" in printed
    assert "| chain | sync |" in md.read_text()


@pytest.mark.parametrize("workload", [*STANDARD, MILLION], ids=lambda w: w.name)
def test_direct_baseline_computes_what_the_schedulers_compute(workload: Any) -> None:
    graph, out = workload.build(workload.quick)
    expected = taskloom.get(graph, out, scheduler="sync")
    assert direct(graph, out)() == expected


def test_million_graph_has_no_task_with_a_million_dependencies() -> None:
    graph, out = MILLION.build(MILLION.quick)
    widest = max(len(v[1]) for v in graph.values() if isinstance(v[1], list))
    assert widest <= 100
    assert taskloom.get(graph, out, scheduler="sync") == sum(range(1, MILLION.quick + 1))


def _calls_seen(context: BenchContext) -> list[BenchFigure]:
    quick = str(context.quick)
    return [BenchFigure(f"{name} x{context.num_workers}", 0.5, note=quick) for name in context.schedulers]


def _case_fails(context: BenchContext) -> list[BenchFigure]:
    raise ValueError("this case always fails")


class CasesPlugin:
    @taskloom.hookimpl
    def taskloom_bench_cases(self) -> list[BenchCase]:
        return [
            BenchCase("echo-case", "reports the context it was given", run=_calls_seen),
            BenchCase("failing-case", "raises", run=_case_fails),
        ]


@pytest.mark.timeout(120)
def test_a_plugins_bench_cases_run_after_the_workloads_and_a_failing_one_is_reported(
    registered_plugin: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    argv = ["bench", "--quick", "--workload", "chain", "--scheduler", "sync", "--num-workers", "3"]
    with registered_plugin(CasesPlugin()):
        status = main([*argv, "--json", str(out)])
    assert status == 1, "a failing case fails the run"
    report = json.loads(out.read_text())
    assert report["ok"] is False
    cases = {r["case"]: r for r in report["cases"] if r["case"] in ("echo-case", "failing-case")}
    assert cases["echo-case"]["scheduler"] == "sync x3" and cases["echo-case"]["note"] == "True"
    assert cases["failing-case"]["error"] == "ValueError: this case always fails"
    assert [r["scheduler"] for r in report["results"]] == ["sync"], "the workloads ran as usual"
    printed = capsys.readouterr()
    assert "echo-case: reports the context it was given" in printed.out
    assert "sync x3" in printed.out
    assert "ERROR ValueError: this case always fails" in printed.err


@pytest.mark.timeout(120)
def test_no_cases_skips_the_plugins_bench_cases(registered_plugin: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    with registered_plugin(CasesPlugin()):
        argv = ["bench", "--quick", "--workload", "chain", "--scheduler", "sync", "--no-cases"]
        status = main([*argv, "--json", str(out)])
    assert status == 0
    assert json.loads(out.read_text())["cases"] == []
