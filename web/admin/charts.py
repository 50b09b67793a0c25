"""The Syncs page's chart, drawn on the server as SVG (no JavaScript library, readable with
JavaScript off): two panels over the same time axis (the last `days`),
- duration per run, one dot per run, coloured by how the run ended;
- games changed (added + updated, bars up) and removed (bars down) per run.
The time axis ends now and reaches back `days`, or only to shortly before the oldest run
in that window (a new installation's runs would otherwise crowd into one pixel column).

Only numbers and fixed words go into the markup; the one free text (a tooltip's kind and
status) is escaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from markupsafe import Markup

from services.ops.schemas import SyncChart, SyncChartPoint

WIDTH, LEFT, RIGHT = 760, 56, 12
PANEL, GAP, TOP, AXIS = 120, 34, 22, 22
HEIGHT = TOP + PANEL + GAP + PANEL + AXIS
STATUS_CLASS = {"succeeded": "ok", "partial": "warn", "failed": "bad", "running": "run"}


@dataclass(frozen=True)
class _Frame:
    start: datetime
    span_s: float

    def x(self, at: datetime) -> float:
        share = (at - self.start).total_seconds() / self.span_s
        return LEFT + max(0.0, min(1.0, share)) * (WIDTH - LEFT - RIGHT)


def _nice(value: float) -> float:
    """The smallest 1, 2 or 5 times 10^n at or above `value` (an axis maximum people can read)."""
    if value <= 0:
        return 1.0
    step = 1.0
    while step * 10 <= value:
        step *= 10
    while step > value * 10:
        step /= 10
    for factor in (1, 2, 5, 10):
        if step * factor >= value:
            return step * factor
    return step * 10


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _axis(y_top: float, height: float, top_label: str, bottom_label: str, title: str) -> str:
    right = WIDTH - RIGHT
    return (
        f'<text class="title" x="{LEFT}" y="{y_top - 7:.0f}">{title}</text>'
        f'<line class="grid" x1="{LEFT}" y1="{y_top:.1f}" x2="{right}" y2="{y_top:.1f}"/>'
        f'<line class="grid" x1="{LEFT}" y1="{y_top + height:.1f}" x2="{right}" '
        f'y2="{y_top + height:.1f}"/>'
        f'<text class="tick" x="{LEFT - 6}" y="{y_top + 4:.0f}" text-anchor="end">'
        f'{top_label}</text>'
        f'<text class="tick" x="{LEFT - 6}" y="{y_top + height + 4:.0f}" text-anchor="end">'
        f'{bottom_label}</text>'
    )


def _tip(point: SyncChartPoint) -> str:
    duration = "-" if point.duration_s is None else f"{point.duration_s:.1f} s"
    return escape(f"{point.started_at:%Y-%m-%d %H:%M} {point.kind.value} {point.status.value}: "
                  f"{duration}, {point.changed} changed, {point.removed} removed")


def _durations(points: list[SyncChartPoint], tips: list[str], xs: list[float]) -> str:
    y0 = TOP
    top = _nice(max((p.duration_s or 0.0 for p in points), default=0.0))
    parts = [_axis(y0, PANEL, f"{_fmt(top)} s", "0", "duration per run")]
    for p, tip, x in zip(points, tips, xs, strict=True):
        if p.duration_s is None:
            continue
        y = y0 + PANEL - (p.duration_s / top) * PANEL
        css = STATUS_CLASS.get(p.status.value, "run")
        parts.append(f'<circle class="dot {css}" cx="{x:.1f}" cy="{y:.1f}" '
                     f'r="3.5"><title>{tip}</title></circle>')
    return "".join(parts)


def _counts(points: list[SyncChartPoint], tips: list[str], xs: list[float]) -> str:
    y0 = TOP + PANEL + GAP
    up = _nice(max((p.changed for p in points), default=0))
    down = _nice(max((p.removed for p in points), default=0))
    # The changed bars take the upper 3/4 of the panel, the removed bars hang below.
    zero = y0 + PANEL * 0.75
    parts = [_axis(y0, PANEL, _fmt(up), f"-{_fmt(down)}",
                   "games changed (up) and removed (down) per run"),
             f'<line class="zero" x1="{LEFT}" y1="{zero:.1f}" x2="{WIDTH - RIGHT}" '
             f'y2="{zero:.1f}"/>',
             f'<text class="tick" x="{LEFT - 6}" y="{zero + 4:.0f}" text-anchor="end">0</text>']
    for p, tip, x_run in zip(points, tips, xs, strict=True):
        x = x_run - 1.5
        if p.changed:
            h = max(1.0, p.changed / up * PANEL * 0.75)
            parts.append(f'<rect class="changed" x="{x:.1f}" y="{zero - h:.1f}" width="3" '
                         f'height="{h:.1f}"><title>{tip}</title></rect>')
        if p.removed:
            h = max(1.0, p.removed / down * PANEL * 0.25)
            parts.append(f'<rect class="removed" x="{x:.1f}" y="{zero:.1f}" width="3" '
                         f'height="{h:.1f}"><title>{tip}</title></rect>')
    return "".join(parts)


def _time_axis(frame: _Frame) -> str:
    y = HEIGHT - 6
    fmt = ("%m-%d" if frame.span_s > 2 * 86400 else "%H:%M" if frame.span_s > 600
           else "%H:%M:%S")
    ticks = 6
    parts = []
    for i in range(ticks + 1):
        at = frame.start + timedelta(seconds=frame.span_s * i / ticks)
        anchor = "start" if i == 0 else "end" if i == ticks else "middle"
        parts.append(f'<text class="tick" x="{frame.x(at):.1f}" y="{y}" '
                     f'text-anchor="{anchor}">{at.strftime(fmt)}</text>')
    return "".join(parts)


def _frame(chart: SyncChart, now: datetime) -> _Frame:
    """The window's time axis: the last `days`, narrowed to the runs it holds (plus a
    margin), so a young installation's few runs are not one pile at the right edge."""
    start = now - timedelta(days=chart.days)
    if chart.points:
        first = min(p.started_at for p in chart.points)
        margin = max(timedelta(seconds=1), (now - first) * 0.05)
        start = max(start, first - margin)
    return _Frame(start=start, span_s=(now - start).total_seconds())


def sync_chart(chart: SyncChart, *, now: datetime) -> Markup:
    """The chart of `chart`'s points as one inline `<svg>` (scales to its container)."""
    frame = _frame(chart, now)
    # A run's tooltip and place are shared by its dot and its bars: made once per run
    # (3,000 of them a month).
    tips = [_tip(p) for p in chart.points]
    xs = [frame.x(p.started_at) for p in chart.points]
    body = (_durations(chart.points, tips, xs) + _counts(chart.points, tips, xs)
            + _time_axis(frame))
    label = f"Sync runs of the last {chart.days} days: {chart.total} runs"
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f'<title>{escape(label)}</title>{body}</svg>'
    )
