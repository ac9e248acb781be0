"""The seed's array workload runs in ``taskloom bench --compare dask`` (case ``dask-array``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def array_rows(tmp_path: Path, *args: str) -> tuple[list[dict[str, Any]], str]:
    """The ``dask-array`` rows of a quick bench run's JSON, and what it printed."""
    out = tmp_path / "out.json"
    command = [sys.executable, "-m", "taskloom", "bench", "--quick", "--workload", "chain", *args]
    proc = subprocess.run([*command, "--json", str(out)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = json.loads(out.read_text())["cases"]
    return [r for r in cases if r["case"] == "dask-array"], proc.stdout


@pytest.mark.timeout(300)
def test_array_case_times_taskloom_threads_against_dask_threaded(tmp_path: Path) -> None:
    rows, printed = array_rows(tmp_path, "--scheduler", "threads", "--compare", "dask")
    ran = [(r["scheduler"], r["engine"]) for r in rows]
    assert ran == [("threads", "taskloom"), ("dask threaded", "dask")]
    assert all(r["seconds"] > 0 and r["error"] is None for r in rows)
    assert rows[0]["note"].endswith("x Dask's time")
    assert "dask-array: da.random.random((10000, 10000)" in printed


@pytest.mark.timeout(300)
def test_array_case_without_compare_times_taskloom_only_and_skips_without_threads(tmp_path: Path) -> None:
    rows, _ = array_rows(tmp_path, "--scheduler", "threads")
    assert [r["scheduler"] for r in rows] == ["threads"]
    rows, _ = array_rows(tmp_path, "--scheduler", "sync")
    assert rows == []
