"""The figures ``taskloom bench`` measures and how they are shown: a text table, Markdown and JSON."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

import attrs

MIB = 1024 * 1024


@attrs.define
class Row:
    """One workload run on one scheduler (``engine`` is ``taskloom``, ``dask`` or ``direct``).

    ``wall_s`` is the best wall time over the repeats; ``baseline_s`` the best time of the same
    function calls made directly; ``peak_bytes`` the tracemalloc peak of a separate run, above
    the graph.  A Dask row names the taskloom scheduler it is compared with in ``pair``.
    """

    workload: str
    scheduler: str
    engine: str
    tasks: int
    wall_s: float | None = None
    baseline_s: float | None = None
    peak_bytes: int | None = None
    result: Any = None
    error: str | None = None
    pair: str | None = None
    repeat: int = 0

    @property
    def us_per_task(self) -> float | None:
        return None if self.wall_s is None else self.wall_s / self.tasks * 1e6

    @property
    def overhead_us_per_task(self) -> float | None:
        if self.wall_s is None or self.baseline_s is None:
            return None
        return (self.wall_s - self.baseline_s) / self.tasks * 1e6

    @property
    def tasks_per_s(self) -> float | None:
        return None if not self.wall_s else self.tasks / self.wall_s

    @property
    def peak_mib(self) -> float | None:
        return None if self.peak_bytes is None else self.peak_bytes / MIB

    @property
    def bytes_per_task(self) -> float | None:
        return None if self.peak_bytes is None else self.peak_bytes / self.tasks

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        for name in ("us_per_task", "overhead_us_per_task", "tasks_per_s", "peak_mib", "bytes_per_task"):
            out[name] = getattr(self, name)
        if not isinstance(self.result, int | float | str | bool | None):
            out["result"] = repr(self.result)
        return out


@attrs.define
class Report:
    """Everything one ``taskloom bench`` run measured."""

    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    rows: list[Row] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    skipped: dict[str, str] = attrs.field(factory=dict)  # scheduler -> why it did not run

    @property
    def ok(self) -> bool:
        return all(r.error is None for r in self.rows)

    def dask_row(self, row: Row) -> Row | None:
        """The Dask row measured against taskloom ``row``, if any."""
        for other in self.rows:
            if other.engine == "dask" and other.workload == row.workload and other.pair == row.scheduler:
                return other
        return None

    def as_dict(self) -> dict[str, Any]:
        comparisons = []
        for row in self.rows:
            theirs = self.dask_row(row) if row.engine == "taskloom" else None
            if theirs is not None and row.us_per_task and theirs.us_per_task:
                comparisons.append(
                    {
                        "workload": row.workload,
                        "scheduler": row.scheduler,
                        "dask_scheduler": theirs.scheduler,
                        "taskloom_us_per_task": row.us_per_task,
                        "dask_us_per_task": theirs.us_per_task,
                        "ratio": theirs.us_per_task / row.us_per_task,
                    }
                )
        return {
            "command": self.command,
            "machine": self.machine,
            "settings": self.settings,
            "results": [r.as_dict() for r in self.rows],
            "comparisons": comparisons,
            "skipped": self.skipped,
            "notes": self.notes,
            "ok": self.ok,
        }


def machine_info(
    taskloom_version: str, dask_version: str | None, schedulers: dict[str, str]
) -> dict[str, Any]:
    """Python, CPU, memory and package versions of this machine."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    info: dict[str, Any] = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "memory_gib": None,
        "taskloom": taskloom_version,
        "dask": dask_version or "not installed",
        "schedulers": schedulers,
        "load_average": None,
    }
    if hasattr(os, "getloadavg"):
        info["load_average"] = round(os.getloadavg()[0], 2)  # other work competing for the CPUs
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 1024**3, 1)
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_machine(report: Report) -> str:
    m = report.machine
    sched = ", ".join(f"{name} ({dist})" for name, dist in m["schedulers"].items()) or "none"
    mem = f", {m['memory_gib']} GiB RAM" if m.get("memory_gib") else ""
    load = f"; load average {m['load_average']} at start" if m.get("load_average") is not None else ""
    return "\n".join(
        [
            f"Python:     {m['python']} on {m['platform']}",
            f"CPU:        {m['cpu']}; {m['cpu_count']} CPUs ({m['cpu_usable']} usable){mem}{load}",
            f"taskloom:   {m['taskloom']}; schedulers: {sched}",
            f"dask:       {m['dask']}",
            "settings:   " + ", ".join(f"{k}={v}" for k, v in report.settings.items()),
        ]
    )


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratio_text(ours: float | None, theirs: float | None) -> str:
    """``12.3x faster`` (Dask time / ours) or ``2.0x slower``."""
    if not ours or not theirs:
        return "-"
    r = theirs / ours
    return f"{r:.1f}x faster" if r >= 1 else f"{1 / r:.1f}x slower"


def table(report: Report, compare: bool) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the result table (taskloom rows, with Dask side by side if ``compare``)."""
    header = ["workload", "scheduler", "tasks", "wall ms", "µs/task", "overhead µs/task", "tasks/s"]
    header += ["peak MiB", "B/task"]
    if compare:
        header += ["dask µs/task", "dask B/task", "vs dask"]
    lines = []
    for r in report.rows:
        if r.engine != "taskloom":
            continue
        if r.error is not None:
            cells = [r.workload, r.scheduler, f"{r.tasks:,}", f"ERROR: {r.error}"]
            lines.append(cells + [""] * (len(header) - len(cells)))
            continue
        cells = [
            r.workload,
            r.scheduler,
            f"{r.tasks:,}",
            _num(r.wall_s and r.wall_s * 1e3, ",.1f"),
            _num(r.us_per_task, ".2f"),
            _num(r.overhead_us_per_task, ".2f"),
            _num(r.tasks_per_s, ",.0f"),
            _num(r.peak_mib, ".1f"),
            _num(r.bytes_per_task, ",.0f"),
        ]
        if compare:
            d = report.dask_row(r)
            if d is None:
                cells += ["-", "-", "-"]
            elif d.error is not None:
                cells += [f"ERROR: {d.error}", "", ""]
            else:
                cells += [
                    _num(d.us_per_task, ".2f"),
                    _num(d.bytes_per_task, ",.0f"),
                    ratio_text(r.us_per_task, d.us_per_task),
                ]
        lines.append(cells)
    return header, lines


def baseline_lines(report: Report) -> list[str]:
    """One line per workload: the direct-call baseline the overhead is measured against."""
    seen: dict[str, Row] = {}
    for r in report.rows:
        if r.engine == "taskloom" and r.baseline_s is not None:
            seen.setdefault(r.workload, r)
    return [
        f"{w}: direct calls {r.baseline_s * 1e3:,.1f} ms = {r.baseline_s / r.tasks * 1e6:.2f} µs/task"
        for w, r in seen.items()
        if r.baseline_s is not None
    ]


def format_text(report: Report, compare: bool) -> str:
    header, lines = table(report, compare)
    widths = [len(h) for h in header]
    for cells in lines:
        for i, c in enumerate(cells):
            if not c.startswith("ERROR"):
                widths[i] = max(widths[i], len(c))
    left = {0, 1}

    def fmt(cells: Sequence[str]) -> str:
        out = []
        for i, c in enumerate(cells):
            if c.startswith("ERROR"):
                out.append(c)
                break
            out.append(c.ljust(widths[i]) if i in left else c.rjust(widths[i]))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    text = [fmt(header), rule, *(fmt(c) for c in lines)]
    base = baseline_lines(report)
    if base:
        text += ["", "baseline (the same calls made directly, no scheduler):", *("  " + b for b in base)]
    if report.notes:
        text += ["", *("note: " + n for n in report.notes)]
    return "\n".join(text)


def format_markdown(report: Report, compare: bool) -> str:
    """The report as a Markdown document: command, machine, table, baselines, notes."""
    header, lines = table(report, compare)
    right = [i >= 2 for i in range(len(header))]
    md = [
        "# taskloom benchmark",
        "",
        f"Command: `{report.command}`",
        "",
        "```",
        format_machine(report),
        "```",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if r else "---" for r in right) + "|",
    ]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in lines]
    base = baseline_lines(report)
    if base:
        md += ["", "Baseline (the same calls made directly, no scheduler):", ""]
        md += [f"- {b}" for b in base]
    if report.notes:
        md += ["", "Notes:", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(md) + "\n"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """``rows`` (dicts with the same keys, in column order) as a right-aligned Markdown table;
    floats are shown rounded to whole numbers with thousands separators (for the bench scripts)."""
    cols = list(rows[0])
    cells = [[f"{r[c]:,.0f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(cols, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    lines += ["| " + " | ".join(v.rjust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
