"""``report``: the profilers' records as one self-contained HTML page (inline CSS and SVG, no scripts).

The page has a task stream -- one row per worker, one rectangle per task, coloured by the
task's name prefix (:func:`~taskloom.diagnostics._shared.key_prefix`), failed tasks in red, a
tooltip with the key and the duration -- then CPU and memory over time when a
:class:`ResourceProfiler` is given, the number of results held when a :class:`CacheProfiler` is
given, and a summary table.  Every chart shares one time axis.  The SVG is written here, in
Python, so the file opens anywhere, offline, and needs nothing but a browser.

Elements carry stable hooks for tools and tests: each task is ``<rect class="task"
data-key="<repr of key>">`` inside ``<g class="worker" data-worker="<name>">``; the resource
charts are ``<svg id="cpu-plot">`` and ``<svg id="memory-plot">``, the cache charts
``<svg id="cache-plot">`` (results held) and ``<svg id="cache-bytes-plot">`` (their bytes, when known).
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ._shared import key_prefix
from .profile import (
    CacheProfiler,
    CacheRecord,
    Profiler,
    ResourceProfiler,
    ResourceRecord,
    TaskRecord,
    occupancy,
)

__all__ = ["report"]

AnyProfiler = Profiler | ResourceProfiler | CacheProfiler

_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d",
)  # fmt: skip
_ERROR = "#d62728"
_LEFT = 190  # px for the row labels
_WIDTH = 960  # px of time axis
_ROW = 22
_BAR = 16
_CHART = 140

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 6px; }
.meta { color: #666; margin-bottom: 12px; }
svg { display: block; overflow: visible; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
.lane { fill: #f4f4f4; } .axis line { stroke: #bbb; } .grid { stroke: #eee; }
.task:hover { stroke: #000; stroke-width: 1px; }
.legend span { display: inline-block; margin-right: 14px; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px; vertical-align: middle; }
table { border-collapse: collapse; margin-top: 6px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.empty { color: #888; font-style: italic; }
"""


def report(
    profilers: AnyProfiler | Iterable[AnyProfiler],
    filename: str | os.PathLike[str] = "report.html",
    title: str = "taskloom report",
) -> str:
    """Write the records of ``profilers`` to ``filename`` as one self-contained HTML page.

    ::

        with Profiler() as prof, ResourceProfiler() as rprof:
            total.compute()
        report([prof, rprof], "profile.html")

    :param profilers: a :class:`Profiler`, :class:`ResourceProfiler` or :class:`CacheProfiler`,
        or several; the records of profilers of the same kind are combined.
    :param filename: where to write the page (overwritten).
    :param title: the page's title and heading.
    :return: the absolute path of the file written.
    """
    if isinstance(profilers, Profiler | ResourceProfiler | CacheProfiler):
        profilers = [profilers]
    tasks: list[TaskRecord] = []
    resources: list[ResourceRecord] = []
    cache: list[CacheRecord] = []
    has_cache = False
    for prof in profilers:
        if isinstance(prof, Profiler):
            tasks.extend(prof.results)
        elif isinstance(prof, ResourceProfiler):
            resources.extend(prof.results)
        elif isinstance(prof, CacheProfiler):
            cache.extend(prof.results)
            has_cache = True
        else:
            raise TypeError(
                f"report() takes Profiler, ResourceProfiler and CacheProfiler objects, "
                f"got {type(prof).__name__}: {prof!r}"
            )
    resources.sort(key=lambda r: r.time)
    page = _page(title, tasks, resources, cache, has_cache)
    path = os.path.abspath(os.fspath(filename))
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------


class _Axis:
    """Maps ``time.time()`` seconds to x pixels, shared by every chart."""

    def __init__(self, times: Sequence[float]) -> None:
        self.t0 = min(times, default=0.0)
        self.span = max(max(times, default=0.0) - self.t0, 1e-6)

    def x(self, t: float) -> float:
        return _LEFT + (t - self.t0) / self.span * _WIDTH

    def ticks(self, y: float) -> str:
        """Tick marks and labels (seconds since the start) along a horizontal line at ``y``."""
        step = _nice_step(self.span / 8)
        out = [f'<g class="axis"><line x1="{_LEFT}" y1="{y}" x2="{_LEFT + _WIDTH}" y2="{y}"/>']
        i = 0
        while i * step <= self.span * 1.0001:
            x = self.x(self.t0 + i * step)
            out.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}"/>')
            label = _seconds(i * step) if i else "0"
            out.append(f'<text x="{x:.1f}" y="{y + 16}" text-anchor="middle">{label}</text>')
            i += 1
        out.append("</g>")
        return "".join(out)


def _page(
    title: str,
    tasks: list[TaskRecord],
    resources: list[ResourceRecord],
    cache: list[CacheRecord],
    has_cache: bool,
) -> str:
    times = [t for r in tasks for t in (r.start, r.end)] + [r.time for r in resources]
    times += [t for r in cache for t in (r.stored, r.freed)]
    axis = _Axis(times)
    colours = _colours(tasks)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<div class="meta">{len(tasks)} tasks on {len({r.worker for r in tasks})} workers; '
        f"{len(resources)} resource samples; {len(cache)} cached results</div>",
        "<h2>Task stream</h2>",
        _task_stream(tasks, axis, colours),
    ]
    if resources:
        parts += [
            "<h2>CPU</h2>",
            _line_chart("cpu-plot", "cpu", [(r.time, r.cpu) for r in resources], axis, "%"),
            "<h2>Memory</h2>",
            _line_chart(
                "memory-plot", "memory", [(r.time, r.memory / 2**20) for r in resources], axis, " MiB"
            ),
        ]
    if has_cache:
        steps = [(t, float(n)) for t, n in occupancy(cache)]
        parts += ["<h2>Results held</h2>", _line_chart("cache-plot", "cache", steps, axis, "", step=True)]
        if any(r.nbytes for r in cache):
            held = [(t, n / 2**20) for t, n in occupancy(cache, "nbytes")]
            parts += [
                "<h2>Bytes held</h2>",
                _line_chart("cache-bytes-plot", "cache", held, axis, " MiB", step=True),
            ]
    parts += ["<h2>Summary</h2>", _summary(tasks, resources, cache, colours), "</body></html>"]
    return "\n".join(parts)


def _task_stream(tasks: list[TaskRecord], axis: _Axis, colours: dict[str, str]) -> str:
    if not tasks:
        return '<p class="empty">No tasks recorded (pass a Profiler).</p>'
    by_worker: dict[str, list[TaskRecord]] = {}
    for r in tasks:
        by_worker.setdefault(r.worker, []).append(r)
    workers = sorted(by_worker, key=_natural)
    height = len(workers) * _ROW + 24
    out = [f'<svg id="task-stream" width="{_LEFT + _WIDTH + 20}" height="{height}">']
    for row, worker in enumerate(workers):
        y = row * _ROW
        out.append(f'<g class="worker" data-worker="{_esc(worker)}" transform="translate(0,{y})">')
        out.append(f'<rect class="lane" x="{_LEFT}" y="0" width="{_WIDTH}" height="{_BAR + 2}"/>')
        out.append(f'<text x="{_LEFT - 8}" y="{_BAR - 3}" text-anchor="end">{_esc(worker)}</text>')
        for r in by_worker[worker]:
            x = axis.x(r.start)
            w = max(axis.x(r.end) - x, 0.5)
            tip = f"{r.key!r}\n{_seconds(r.duration)} on {worker}"
            cls = "task"
            fill = colours[key_prefix(r.key)]
            if r.error is not None:
                tip += f"\nfailed: {r.error}"
                cls, fill = "task error", _ERROR
            out.append(
                f'<rect class="{cls}" data-key="{_esc(repr(r.key))}" x="{x:.2f}" y="1" '
                f'width="{w:.2f}" height="{_BAR}" fill="{fill}"><title>{_esc(tip)}</title></rect>'
            )
        out.append("</g>")
    out.append(axis.ticks(len(workers) * _ROW + 2))
    out.append("</svg>")
    legend = "".join(
        f'<span><i class="swatch" style="background:{c}"></i>{_esc(p)}</span>' for p, c in colours.items()
    )
    if any(r.error is not None for r in tasks):
        legend += f'<span><i class="swatch" style="background:{_ERROR}"></i>failed</span>'
    return "".join(out) + f'<div class="legend">{legend}</div>'


def _line_chart(
    ident: str, cls: str, points: list[tuple[float, float]], axis: _Axis, unit: str, step: bool = False
) -> str:
    top = max((v for _, v in points), default=0.0)
    scale = _nice_step(top / 4) * 4 if top > 0 else 1.0

    def y(v: float) -> float:
        return _CHART - v / scale * _CHART

    coords: list[str] = []
    last = None
    for t, v in points:
        if step and last is not None:
            coords.append(f"{axis.x(t):.2f},{y(last):.2f}")
        coords.append(f"{axis.x(t):.2f},{y(v):.2f}")
        last = v
    out = [f'<svg id="{ident}" class="chart" width="{_LEFT + _WIDTH + 20}" height="{_CHART + 24}">']
    for i in range(5):
        v = scale * i / 4
        out.append(f'<line class="grid" x1="{_LEFT}" y1="{y(v):.1f}" x2="{_LEFT + _WIDTH}" y2="{y(v):.1f}"/>')
        out.append(f'<text x="{_LEFT - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{_number(v)}{unit}</text>')
    line = " ".join(coords)
    out.append(f'<polyline class="{cls}" fill="none" stroke="#1f77b4" stroke-width="1.5" points="{line}"/>')
    if not step and len(points) <= 200:  # markers, so that even a single sample shows
        for t, v in points:
            out.append(
                f'<circle class="{cls}-sample" cx="{axis.x(t):.2f}" cy="{y(v):.2f}" r="2" fill="#1f77b4">'
                f"<title>{_seconds(t - axis.t0)}: {_number(v)}{unit}</title></circle>"
            )
    out.append(axis.ticks(_CHART + 2))
    out.append("</svg>")
    return "".join(out)


def _summary(
    tasks: list[TaskRecord],
    resources: list[ResourceRecord],
    cache: list[CacheRecord],
    colours: dict[str, str],
) -> str:
    rows: list[tuple[str, str]] = []
    if tasks:
        wall = max(r.end for r in tasks) - min(r.start for r in tasks)
        busy = sum(r.duration for r in tasks)
        rows += [
            ("Tasks", str(len(tasks))),
            ("Failed tasks", str(sum(r.error is not None for r in tasks))),
            ("Workers", str(len({r.worker for r in tasks}))),
            ("Wall time", _seconds(wall)),
            ("Task time (sum)", _seconds(busy)),
        ]
    if resources:
        rows += [
            ("Peak CPU", f"{max(r.cpu for r in resources):.0f}%"),
            ("Peak memory", f"{max(r.memory for r in resources) / 2**20:.1f} MiB"),
        ]
    if cache:
        rows.append(("Results cached", str(len(cache))))
        if any(r.nbytes for r in cache):
            rows.append(("Largest result", f"{max(r.nbytes for r in cache) / 2**20:.2f} MiB"))
    head = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    out = [f'<table id="summary">{head}</table>']
    if tasks:
        groups: dict[str, list[TaskRecord]] = {}
        for r in tasks:
            groups.setdefault(key_prefix(r.key), []).append(r)
        body = []
        for prefix, recs in sorted(groups.items(), key=lambda kv: -sum(r.duration for r in kv[1])):
            total = sum(r.duration for r in recs)
            failed = sum(r.error is not None for r in recs)
            swatch = f'<i class="swatch" style="background:{colours[prefix]}"></i>'
            body.append(
                f'<tr data-prefix="{_esc(prefix)}"><td>{swatch}{_esc(prefix)}</td><td>{len(recs)}</td>'
                f"<td>{failed}</td><td>{_seconds(total)}</td><td>{_seconds(total / len(recs))}</td></tr>"
            )
        out.append(
            '<table id="prefixes"><tr><th>Task prefix</th><th>Count</th><th>Failed</th>'
            f"<th>Total time</th><th>Mean time</th></tr>{''.join(body)}</table>"
        )
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _colours(tasks: list[TaskRecord]) -> dict[str, str]:
    """A colour per task prefix, in order of first start."""
    out: dict[str, str] = {}
    for r in sorted(tasks, key=lambda r: r.start):
        prefix = key_prefix(r.key)
        if prefix not in out:
            out[prefix] = _PALETTE[len(out) % len(_PALETTE)]
    return out


def _natural(name: str) -> list[Any]:
    """Sort key putting ``worker-2`` before ``worker-10``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``raw``."""
    if raw <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def _seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def _number(v: float) -> str:
    return f"{v:.0f}" if v >= 10 or v == 0 else f"{v:.2g}"


def _esc(text: str) -> str:
    return html.escape(text, quote=True)
