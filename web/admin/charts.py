"""The Syncs page's chart, drawn on the server as SVG (no JavaScript library, readable with
JavaScript off): two panels over the same time axis (the last `days`),
- duration per run, one dot per run, coloured by how the run ended;
- games changed (added + updated, bars up) and removed (bars down) per run.
The time axis ends now and reaches back `days`, or only to shortly before the oldest run
in that window (a new installation's runs would otherwise crowd into one pixel column).

Runs that fall on the same 3-pixel column are drawn as one mark: the longest duration
(coloured by the worst ending among them), the changed and removed games summed, and a
tooltip saying how many runs it holds. A month of 15-minute stock checks is ~3,000 runs on
~700 pixels; one element per run made the page 1.1 MB of SVG and took 65 ms to draw, for
marks drawn over each other anyway.

Only numbers and fixed words go into the markup; the one free text (a tooltip's kind and
status) is escaped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from html import escape

from markupsafe import Markup

from services.ops.schemas import SyncChart, SyncChartPoint

WIDTH, LEFT, RIGHT = 760, 56, 12
PANEL, GAP, TOP, AXIS = 120, 34, 22, 22
HEIGHT = TOP + PANEL + GAP + PANEL + AXIS
STATUS_CLASS = {"succeeded": "ok", "partial": "warn", "failed": "bad", "running": "run"}
# Which ending a merged mark shows: the worst of its runs.
_WORST_FIRST = ("failed", "partial", "succeeded", "running")
MARK_WIDTH = 3.0


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


@dataclass
class _Mark:
    """The runs drawn at one column `x` (its figures are read once it is complete, by its
    tooltip and by both panels: computed once)."""

    x: float
    runs: list[SyncChartPoint] = field(default_factory=list)

    @cached_property
    def changed(self) -> int:
        return sum(p.changed for p in self.runs)

    @cached_property
    def removed(self) -> int:
        return sum(p.removed for p in self.runs)

    @cached_property
    def longest(self) -> SyncChartPoint | None:
        """The finished run to draw as the dot: the longest, of the worst ending."""
        finished = [p for p in self.runs if p.duration_s is not None]
        if not finished:
            return None
        worst = min(_WORST_FIRST.index(p.status.value) for p in finished)
        return max((p for p in finished if _WORST_FIRST.index(p.status.value) == worst),
                   key=lambda p: p.duration_s or 0.0)

    def tip(self) -> str:
        first, last = self.runs[0], self.runs[-1]
        longest = self.longest
        duration = "-" if longest is None else f"{longest.duration_s:.1f} s"
        if len(self.runs) == 1:
            head = f"{first.started_at:%Y-%m-%d %H:%M} {first.kind.value} {first.status.value}"
        else:
            ending = "" if longest is None else f" ({longest.kind.value} {longest.status.value})"
            head = (f"{len(self.runs)} runs {first.started_at:%Y-%m-%d %H:%M}"
                    f" to {last.started_at:%H:%M}, longest{ending}")
        return escape(f"{head}: {duration}, {self.changed} changed, {self.removed} removed")


def _marks(points: list[SyncChartPoint], frame: _Frame) -> list[_Mark]:
    """`points` (oldest first) merged per MARK_WIDTH column of the plot."""
    marks: list[_Mark] = []
    for point in points:
        column = int((frame.x(point.started_at) - LEFT) // MARK_WIDTH)
        x = LEFT + (column + 0.5) * MARK_WIDTH
        if not marks or marks[-1].x != x:
            marks.append(_Mark(x))
        marks[-1].runs.append(point)
    return marks


def _durations(marks: list[_Mark], tips: list[str]) -> str:
    y0 = TOP
    dots = [(mark.longest, tip, mark.x) for mark, tip in zip(marks, tips, strict=True)]
    top = _nice(max((p.duration_s or 0.0 for p, _, _ in dots if p is not None), default=0.0))
    parts = [_axis(y0, PANEL, f"{_fmt(top)} s", "0", "duration per run")]
    for p, tip, x in dots:
        if p is None or p.duration_s is None:
            continue
        y = y0 + PANEL - (p.duration_s / top) * PANEL
        css = STATUS_CLASS.get(p.status.value, "run")
        parts.append(f'<circle class="dot {css}" cx="{x:.1f}" cy="{y:.1f}" '
                     f'r="3.5"><title>{tip}</title></circle>')
    return "".join(parts)


def _counts(marks: list[_Mark], tips: list[str]) -> str:
    y0 = TOP + PANEL + GAP
    sums = [(mark.changed, mark.removed, tip, mark.x)
            for mark, tip in zip(marks, tips, strict=True)]
    up = _nice(max((changed for changed, _, _, _ in sums), default=0))
    down = _nice(max((removed for _, removed, _, _ in sums), default=0))
    # The changed bars take the upper 3/4 of the panel, the removed bars hang below.
    zero = y0 + PANEL * 0.75
    parts = [_axis(y0, PANEL, _fmt(up), f"-{_fmt(down)}",
                   "games changed (up) and removed (down) per run"),
             f'<line class="zero" x1="{LEFT}" y1="{zero:.1f}" x2="{WIDTH - RIGHT}" '
             f'y2="{zero:.1f}"/>',
             f'<text class="tick" x="{LEFT - 6}" y="{zero + 4:.0f}" text-anchor="end">0</text>']
    for changed, removed, tip, x_mark in sums:
        x = x_mark - MARK_WIDTH / 2
        if changed:
            h = max(1.0, changed / up * PANEL * 0.75)
            parts.append(f'<rect class="changed" x="{x:.1f}" y="{zero - h:.1f}" '
                         f'width="{MARK_WIDTH:g}" height="{h:.1f}"><title>{tip}</title></rect>')
        if removed:
            h = max(1.0, removed / down * PANEL * 0.25)
            parts.append(f'<rect class="removed" x="{x:.1f}" y="{zero:.1f}" '
                         f'width="{MARK_WIDTH:g}" height="{h:.1f}"><title>{tip}</title></rect>')
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
    marks = _marks(chart.points, frame)
    tips = [mark.tip() for mark in marks]  # shared by a mark's dot and its bars
    body = _durations(marks, tips) + _counts(marks, tips) + _time_axis(frame)
    label = f"Sync runs of the last {chart.days} days: {chart.total} runs"
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f'<title>{escape(label)}</title>{body}</svg>'
    )
