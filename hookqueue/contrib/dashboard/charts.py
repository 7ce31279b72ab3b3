"""Server-rendered charts: the geometry of an inline SVG, computed here, drawn by a template.

No JavaScript charting library: the overview's chart is an ``<svg>`` element whose
coordinates come from :func:`timeline_chart`, and the ``chart`` macro
(``templates/_macros.html``) only places them, so the text in it is autoescaped like the rest
of the page.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from .data import Timeline

__all__ = ["Bar", "TimelineChart", "timeline_chart"]


@attrs.frozen(kw_only=True)
class Bar:
    """One bucket: a bar of finished tasks with its failed part stacked at the bottom."""

    x: float
    width: float
    #: Top and height of the whole bar (finished tasks).
    y: float
    height: float
    #: Top and height of the failed part.
    failed_y: float
    failed_height: float
    #: The tooltip text.
    title: str


@attrs.frozen(kw_only=True)
class TimelineChart:
    """Everything the ``chart`` macro draws, in SVG user units."""

    width: int
    height: int
    #: The plot area's left, top, right and bottom edges.
    left: float
    top: float
    right: float
    bottom: float
    bars: tuple[Bar, ...]
    #: ``(y, label)`` of the horizontal grid lines (tasks per bucket).
    ticks: tuple[tuple[float, str], ...]
    #: ``(x, label)`` under the plot (bucket start times).
    labels: tuple[tuple[float, str], ...]
    #: The failure rate per bucket as a polyline (``"x,y x,y ..."``), 0-100 % on the right.
    rate_points: str
    #: Totals over the window.
    finished: int
    failed: int


def _nice_max(value: int) -> int:
    if value <= 4:
        return 4
    magnitude = 10 ** int(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        top = int(math.ceil(value / (magnitude * step)) * magnitude * step)
        if top >= value and top / (magnitude * step) <= 10:
            return top
    return value


def _time_label(delta_seconds: float, at: Any) -> str:
    if delta_seconds >= 2 * 86400:
        return at.strftime("%m-%d %H:%M")
    return at.strftime("%H:%M")


def timeline_chart(timeline: Timeline, *, width: int = 760, height: int = 220) -> TimelineChart:
    """The SVG geometry of a timeline: one stacked bar per bucket (finished, failed part in
    red), the failure rate as a line against the right axis, four grid lines, and about six
    time labels (UTC)."""
    left, top, right, bottom = 48.0, 12.0, width - 44.0, height - 28.0
    buckets = timeline.buckets
    n = max(1, len(buckets))
    peak = _nice_max(max((b.finished for b in buckets), default=0))
    slot = (right - left) / n
    gap = min(2.0, slot * 0.2)
    scale = (bottom - top) / peak
    bars = []
    points = []
    for i, b in enumerate(buckets):
        x = left + i * slot
        h = b.finished * scale
        fh = b.failed * scale
        bars.append(
            Bar(
                x=round(x + gap / 2, 2),
                width=round(slot - gap, 2),
                y=round(bottom - h, 2),
                height=round(h, 2),
                failed_y=round(bottom - fh, 2),
                failed_height=round(fh, 2),
                title=(
                    f"{b.start:%Y-%m-%d %H:%M}–{b.end:%H:%M} UTC: {b.finished} finished, "
                    f"{b.failed} failed ({b.failure_rate:.0%})"
                ),
            )
        )
        if b.finished:  # no rate where nothing finished
            points.append(f"{x + slot / 2:.2f},{bottom - b.failure_rate * (bottom - top):.2f}")
    ticks = tuple(
        (round(bottom - (peak * k / 4) * scale, 2), f"{int(peak * k / 4):,}") for k in range(5)
    )
    every = max(1, n // 6)
    labels = tuple(
        (round(left + i * slot, 2), _time_label(timeline.window_seconds, buckets[i].start))
        for i in range(0, len(buckets), every)
    )
    return TimelineChart(
        width=width,
        height=height,
        left=left,
        top=top,
        right=right,
        bottom=bottom,
        bars=tuple(bars),
        ticks=ticks,
        labels=labels,
        rate_points=" ".join(points),
        finished=sum(b.finished for b in buckets),
        failed=sum(b.failed for b in buckets),
    )
