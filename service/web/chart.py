"""The geometry of the history page's SVG bar chart (images per day on a time axis):
bars, grid lines, ticks and a text description, in the SVG's own units. Plain data in,
plain data out; ``templates/history.html`` draws it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Protocol


class DayCount(Protocol):
    """A day's count (``service.history_stats.DayCount`` is one)."""

    @property
    def day(self) -> date: ...

    @property
    def records(self) -> int: ...


CHART_MAX_DAYS = 366  # a longer range shows its last year


@dataclass(frozen=True)
class ChartBar:
    day: str
    count: int
    x: float
    y: float
    w: float
    h: float


CHART_MIN_DAYS = 14  # a shorter range is widened (a single day: one narrow bar)
MAX_BAR_WIDTH = 18.0
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def day_chart(days: Sequence[DayCount], *, since: datetime | None = None,
              until: datetime | None = None, width: int = 640, height: int = 200,
              max_days: int = CHART_MAX_DAYS, max_ticks: int = 7) -> dict[str, Any]:
    """Geometry of an SVG bar chart of images per day, on a time axis.

    The axis spans the selected range (``since`` .. ``until``, either taken from the data
    when not given), at least :data:`CHART_MIN_DAYS` days (a shorter range is widened
    towards the past), at most the last ``max_days`` days. Each day has one slot, and its
    bar is at most :data:`MAX_BAR_WIDTH` wide; days without records are empty slots.
    Ticks fall on whole days, weeks (Mondays) or months, at most ``max_ticks`` of them.
    """
    chart: dict[str, Any] = {"width": width, "height": height, "bars": [], "ticks": [],
                             "grid": [], "clipped": False}
    per_day = {d.day: d.records for d in days if d.records}
    if not per_day:
        return chart
    first = since.astimezone(timezone.utc).date() if since is not None else min(per_day)
    # until is exclusive: a bare date has become the next day's midnight.
    last = ((until.astimezone(timezone.utc) - timedelta(microseconds=1)).date()
            if until is not None else max(per_day))
    first, last = min(first, min(per_day)), max(last, max(per_day))
    clipped = (last - first).days + 1 > max_days
    if clipped:
        first = last - timedelta(days=max_days - 1)
    if (last - first).days + 1 < CHART_MIN_DAYS:
        first = last - timedelta(days=CHART_MIN_DAYS - 1)
    span = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    left, right, top, bottom = 40.0, 8.0, 12.0, 36.0
    baseline = height - bottom
    peak = max(per_day.get(day, 0) for day in span)
    scale_max, step = _nice_scale(peak)
    slot = (width - left - right) / len(span)
    bar_w = min(MAX_BAR_WIDTH, max(slot * 0.8, 1.0))
    bars = []
    for i, day in enumerate(span):
        count = per_day.get(day, 0)
        if not count:
            continue
        h = max((baseline - top) * count / scale_max, 1.5)
        bars.append(ChartBar(day=day.isoformat(), count=count,
                             x=round(left + (i + 0.5) * slot - bar_w / 2, 2),
                             y=round(baseline - h, 2), w=round(bar_w, 2), h=round(h, 2)))
    grid = [{"y": round(baseline - (baseline - top) * value / scale_max, 2), "text": f"{value:,}"}
            for value in range(0, scale_max + 1, step)]
    chart.update(
        bars=bars, left=left, right=width - right, top=top, baseline=baseline, max=peak,
        grid=grid, clipped=clipped, first=span[0].isoformat(), last=span[-1].isoformat(),
        ticks=_ticks(span, left, slot, max_ticks),
        description=_chart_description(span, per_day),
    )
    return chart


def _nice_scale(peak: int) -> tuple[int, int]:
    """The axis maximum and the grid step: 1, 2 or 5 times a power of ten, 2 to 5 lines."""
    peak = max(peak, 1)
    step = 1
    while True:
        for factor in (1, 2, 5):
            candidate = step * factor
            if -(-peak // candidate) <= 4:
                return candidate * -(-peak // candidate), candidate
        step *= 10


def _ticks(span: Sequence[date], left: float, slot: float,
           max_ticks: int = 7) -> list[dict[str, Any]]:
    """Day labels under the slots: every day, every 2 or 4 days, every Monday, every
    second or fourth Monday, or the first of each (or every 2nd, 3rd, 6th, 12th) month;
    the finest of these that gives at most ``max_ticks``."""
    n = len(span)
    choices: list[tuple[str, int]] = [("day", 1), ("day", 2), ("day", 4), ("week", 1),
                                      ("week", 2), ("week", 4), ("month", 1), ("month", 2),
                                      ("month", 3), ("month", 6), ("month", 12)]
    picked: list[tuple[int, date]] = []
    for unit, every in choices:
        if unit == "day":
            picked = [(i, d) for i, d in enumerate(span) if (n - 1 - i) % every == 0]
        elif unit == "week":
            mondays = [(i, d) for i, d in enumerate(span) if d.weekday() == 0]
            picked = mondays[::every]
        else:
            picked = [(i, d) for i, d in enumerate(span)
                      if d.day == 1 and (d.month - 1) % every == 0]
        if len(picked) <= max_ticks and (picked or n <= max_ticks):
            break
    ticks = []
    previous_year = None
    for i, day in picked:
        month_only = len(picked) > 1 and all(d.day == 1 for _, d in picked) and n > 62
        text = _MONTHS[day.month - 1] if month_only else f"{_MONTHS[day.month - 1]} {day.day}"
        sub = str(day.year) if day.year != previous_year else ""
        previous_year = day.year
        ticks.append({"x": round(left + (i + 0.5) * slot, 2), "text": text, "sub": sub,
                      "day": day.isoformat()})
    return ticks


def _chart_description(span: Sequence[date], per_day: Mapping[date, int]) -> str:
    total = sum(per_day.get(day, 0) for day in span)
    busiest = max(span, key=lambda day: per_day.get(day, 0))
    return (f"{total} images from {span[0].isoformat()} to {span[-1].isoformat()}; "
            f"busiest day {busiest.isoformat()} with {per_day.get(busiest, 0)}.")
