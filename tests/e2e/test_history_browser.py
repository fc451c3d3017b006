"""The history page in a real browser (Debian's Chromium through Playwright, as
``test_browser.py``): the per-day chart with one day and with many, counts that follow
the filters, the spacing around the page, and thumbnails that are thumbnails.

Set ``SCREENSHOT_DIR`` to keep screenshots of the pages.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import db
from model.detection import Detection
from service.web import keys
from tests.e2e.test_browser import (  # noqa: F401  (fixtures)
    BUS,
    browser,
    chromium_executable,
    page_factory,
    screenshot,
)

NOW = datetime.now(timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0)


async def save(client: Any, days_ago: list[int], labels: list[list[str]]) -> list[db.Record]:
    data = BUS.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    records = []
    for i, (ago, names) in enumerate(zip(days_ago, labels, strict=True)):
        dets = [Detection(name, ("go", "stop", "stopLeft", "goLeft").index(name), 0.9 - j / 10,
                          40 + 120 * j, 60, 140 + 120 * j, 300) for j, name in enumerate(names)]
        records.append(db.Record(
            id=uuid.uuid4(), created_at=NOW - timedelta(days=ago, minutes=i),
            filename=f"cam{i % 3}/frame-{i:03d}.jpg", sha256=sha, width=810, height=1080,
            model="traffic-lights-tiny-spp:traffic-lights-tiny-spp", inference_ms=9.0,
            detections=dets))
    await db.save_records(client.server.app[keys.db_key], records,
                          [db.StoredImage(sha, "image/jpeg", data)])
    return records


async def boxes(page: Any, selector: str) -> list[dict[str, float]]:
    return [await item.bounding_box() for item in await page.locator(selector).all()]


async def check_spacing(page: Any) -> None:
    header = await page.locator(".site-header").bounding_box()
    heading = await page.locator("main h1").bounding_box()
    assert heading["y"] - (header["y"] + header["height"]) >= 16, "the heading touches the header"
    footer = await page.locator(".site-footer").bounding_box()
    last = (await boxes(page, "main .card"))[-1]
    gap = footer["y"] - (last["y"] + last["height"])
    assert gap >= 24, f"the last card is {gap:.0f}px from the footer"


async def test_chart_with_one_day_is_one_narrow_bar(client: Any, page_factory: Any) -> None:
    await save(client, [0, 0, 0], [["go"], ["stop"], ["go", "stop"]])
    page = await page_factory()
    await page.goto(str(client.make_url("/history")))
    chart = await page.locator("#per-day svg.chart--wide").bounding_box()
    bars = await boxes(page, "#per-day .chart--wide .chart__bar")
    assert len(bars) == 1
    assert bars[0]["width"] < chart["width"] / 20, (bars[0], chart)
    assert await page.locator("#per-day .chart--wide .chart__bar").get_attribute("data-count") == "3"
    # The axis is labelled with days, the last one being the day of the data.
    days = [await t.get_attribute("data-day")
            for t in await page.locator("#per-day .chart--wide .chart__tick-label").all()]
    assert len(days) >= 3 and days[-1] == NOW.date().isoformat()
    await no_overlap(page, "#per-day .chart--wide .chart__tick-label")
    await check_spacing(page)
    # Thumbnails are small JPEGs, not the originals.
    thumb = page.locator(".record-card__thumb").first
    await thumb.evaluate("img => img.decode()")
    natural = await thumb.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert max(natural) == 320, natural
    await screenshot(page, "history-one-day")


async def no_overlap(page: Any, selector: str) -> None:
    labels = sorted(await boxes(page, selector), key=lambda b: b["x"])
    for left, right in zip(labels, labels[1:]):
        assert left["x"] + left["width"] <= right["x"], (left, right)


async def test_chart_with_many_days_is_a_time_axis(client: Any, page_factory: Any) -> None:
    days_ago = [0, 1, 1, 3, 7, 7, 7, 12, 20, 33, 33, 47]
    await save(client, days_ago, [["go"]] * len(days_ago))
    page = await page_factory()
    await page.goto(str(client.make_url("/history")))
    bars = page.locator("#per-day .chart--wide .chart__bar")
    days = [await bar.get_attribute("data-day") for bar in await bars.all()]
    expected = sorted({(NOW - timedelta(days=d)).date().isoformat() for d in days_ago})
    assert days == expected
    # Bars sit where their day is: x grows with the date, by the same step per day.
    xs = [b["x"] for b in await boxes(page, "#per-day .chart--wide .chart__bar")]
    dates = [datetime.fromisoformat(d) for d in days]
    per_day = (xs[-1] - xs[0]) / (dates[-1] - dates[0]).days
    for x, day in zip(xs, dates):
        assert abs(x - xs[0] - per_day * (day - dates[0]).days) < 1.0
    # The busiest day (3 images) is the tallest bar; ticks are few and do not overlap.
    heights = {await bar.get_attribute("data-count"): (await bar.bounding_box())["height"]
               for bar in await bars.all()}
    assert heights["3"] == max(heights.values())
    ticks = page.locator("#per-day .chart--wide .chart__tick-label")
    assert 3 <= await ticks.count() <= 7
    await no_overlap(page, "#per-day .chart--wide .chart__tick-label")
    await screenshot(page, "history-many-days")

    # A selected range is the axis: 60 days, the data in its second half.
    since = (NOW - timedelta(days=59)).date().isoformat()
    await page.goto(str(client.make_url(f"/history?since={since}&until={NOW.date()}")))
    svg = page.locator("#per-day svg.chart--wide")
    assert await svg.get_attribute("data-first") == since
    assert await svg.get_attribute("data-last") == NOW.date().isoformat()
    await screenshot(page, "history-range-60-days")


async def test_counts_follow_the_filters(client: Any, page_factory: Any) -> None:
    await save(client, [0, 0, 1, 2, 2],
               [["go", "stop"], ["stop"], ["go"], ["go", "go"], ["goLeft"]])
    page = await page_factory()
    await page.goto(str(client.make_url("/history")))

    async def counts() -> dict[str, str]:
        rows = await page.locator("#label-counts li").all()
        return {await row.locator("a").inner_text(): await row.locator(".count").inner_text()
                for row in rows}

    async def totals() -> str:
        return re.sub(r"\s+", " ", await page.locator("#totals").inner_text()).strip()

    assert await counts() == {"go": "4", "stop": "2", "goLeft": "1"}
    assert await totals() == "5 images · 7 objects"
    # Click a label: the records, the counts and the totals are those of that label.
    await page.locator("#label-counts a", has_text=re.compile("^stop$")).click()
    await page.wait_for_url(re.compile(r"label=stop"))
    assert await page.locator("#records > li").count() == 2
    assert await counts() == {"stop": "2", "go": "1"}
    assert await totals() == "2 images · 3 objects match these filters"
    assert await page.locator("#per-day .chart--wide .chart__bar").count() == 1
    await screenshot(page, "history-filtered-stop")

    # A file-name filter too.
    await page.goto(str(client.make_url("/history?filename=cam0")))
    assert await counts() == {"go": "3", "stop": "1"}
    assert await totals() == "2 images · 4 objects match these filters"

    # An unknown label: 400, and the labels one may ask for.
    response = await page.goto(str(client.make_url("/history?label=nosuch")))
    assert response.status == 400
    links = await page.locator("#error-links a").all_inner_texts()
    assert links[:4] == ["go", "stop", "stopLeft", "goLeft"]
    await screenshot(page, "history-unknown-label")
    await page.locator("#error-links a", has_text=re.compile("^goLeft$")).click()
    await page.wait_for_url(re.compile(r"label=goLeft"))
    assert await counts() == {"goLeft": "1"}


async def test_chart_on_a_phone_has_fewer_larger_ticks(client: Any, page_factory: Any) -> None:
    days_ago = [0, 2, 5, 9, 16, 30, 44]
    await save(client, days_ago, [["go"]] * len(days_ago))
    page = await page_factory(width=360, height=800)
    await page.goto(str(client.make_url("/history")))
    assert not await page.locator("#per-day svg.chart--wide").is_visible()
    assert await page.locator("#per-day svg.chart--narrow").is_visible()
    labels = "#per-day .chart--narrow .chart__tick-label"
    assert 2 <= await page.locator(labels).count() <= 4
    await no_overlap(page, labels)
    heights = [b["height"] for b in await boxes(page, labels)]
    assert min(heights) >= 9, heights  # rendered text height in CSS px
    assert await page.locator("#per-day .chart--narrow .chart__bar").count() == len(days_ago)
    await page.locator("#per-day").scroll_into_view_if_needed()
    await screenshot(page, "history-phone")


async def test_record_opens_large(client: Any, page_factory: Any) -> None:
    rec, = await save(client, [0], [["stop", "go"]])
    page = await page_factory()
    await page.goto(str(client.make_url("/history")))
    await page.locator(f'[data-record-id="{rec.id}"] a').click()
    await page.wait_for_url(f"**/detections/{rec.id}")
    image = page.locator(".record-image img")
    await image.evaluate("img => img.decode()")
    box = await image.bounding_box()
    assert box["width"] >= 600, box  # large on a 1280 px wide window
    assert await page.locator(".meta dd", has_text="traffic-lights-tiny-spp").inner_text() \
        == "traffic-lights-tiny-spp"
    await check_spacing(page)
    await screenshot(page, "record-page")
