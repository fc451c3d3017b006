"""The history chart's geometry (``service.web.chart``): plain data, no server."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import pytest

from service.web.chart import MAX_BAR_WIDTH, day_chart

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Day:
    """A day's count, as ``service.history_stats.DayCount`` has it."""

    day: date
    records: int
    boxes: int


def test_day_chart_one_bar_per_day_on_a_time_axis() -> None:
    days = [Day(date(2024, 5, 1), 2, 5),
            Day(date(2024, 5, 4), 4, 1)]
    chart = day_chart(days, width=400, height=100)
    assert [(b.day, b.count) for b in chart["bars"]] == [("2024-05-01", 2), ("2024-05-04", 4)]
    assert (chart["first"], chart["last"]) == ("2024-04-21", "2024-05-04")  # 14 days
    slot = (400 - chart["left"] - 8) / 14
    first, last = chart["bars"]
    assert (last.x - first.x) == pytest.approx(3 * slot, abs=0.01)  # three days apart
    plot_height = chart["baseline"] - chart["top"]
    assert last.h == pytest.approx(plot_height) and first.h == pytest.approx(plot_height / 2)
    assert all(b.y + b.h == pytest.approx(chart["baseline"]) for b in chart["bars"])
    assert chart["left"] < first.x and last.x + last.w <= 400
    assert chart["max"] == 4
    assert [g["text"] for g in chart["grid"]] == ["0", "1", "2", "3", "4"]


def test_day_chart_spans_the_selected_range() -> None:
    days = [Day(date(2024, 5, 10), 3, 3)]
    since, until = T0.replace(day=1, hour=0), T0.replace(month=6, day=1, hour=0)
    chart = day_chart(days, since=since, until=until)
    assert (chart["first"], chart["last"]) == ("2024-05-01", "2024-05-31")
    bar, = chart["bars"]
    assert bar.w <= MAX_BAR_WIDTH
    # Weekly ticks on Mondays (6, 13, 20, 27 May), the year under the first.
    assert [t["day"] for t in chart["ticks"]] == ["2024-05-06", "2024-05-13", "2024-05-20",
                                                  "2024-05-27"]
    assert chart["ticks"][0]["sub"] == "2024" and chart["ticks"][1]["sub"] == ""


def test_day_chart_single_day_is_one_narrow_bar() -> None:
    chart = day_chart([Day(date(2024, 5, 1), 7, 9)])
    bar, = chart["bars"]
    assert bar.w <= MAX_BAR_WIDTH < chart["width"] / 10
    assert chart["ticks"][-1]["day"] == "2024-05-01"  # the day itself is labelled


def test_day_chart_shows_at_most_max_days() -> None:
    days = [Day(date(2024, 1, 1) + timedelta(days=i), 1, 1) for i in range(100)]
    chart = day_chart(days, max_days=30)
    assert len(chart["bars"]) == 30
    assert chart["bars"][-1].day == "2024-04-09"
    assert len(chart["ticks"]) <= 7
    assert chart["clipped"] is True
    assert day_chart(days[:30], max_days=30)["clipped"] is False
    assert day_chart([])["bars"] == []
    # A year: monthly ticks.
    year = [Day(date(2024, 1, 1) + timedelta(days=i), 1, 1) for i in range(366)]
    ticks = day_chart(year)["ticks"]
    assert len(ticks) <= 7 and all(t["day"].endswith("-01") for t in ticks)
