"""Reviewing on the record page in a real browser (Debian's Chromium through Playwright,
as ``test_browser.py``): a box marked wrong, a label changed with the keyboard, a box
drawn with the mouse and one with a finger (real touch input through the DevTools
protocol), saved, shown beside the model's boxes after a reload, and withdrawn.

Set ``SCREENSHOT_DIR`` to keep screenshots of the pages.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest

import db
from model.detection import Detection
from service.web import keys
from tests.e2e.test_browser import (  # noqa: F401  (fixtures)
    BUS,
    TIMEOUT_MS,
    browser,
    chromium_executable,
    page_factory,
    screenshot,
)

LABELS = ["go", "stop", "stopLeft", "goLeft", "warning", "warningLeft"]  # the test model's


async def saved_record(client: Any) -> db.Record:
    data = BUS.read_bytes()  # 810 x 1080
    sha = hashlib.sha256(data).hexdigest()
    app = client.server.app
    record = db.Record(id=uuid.uuid4(), created_at=datetime.now(timezone.utc),
                       filename="tail-lights.jpg", sha256=sha, width=810, height=1080,
                       model=app[keys.config_key].default_model.name, inference_ms=9.0,
                       detections=[Detection("stop", 1, 0.91, 100, 150, 200, 400),
                                   Detection("go", 0, 0.42, 400, 150, 500, 400)])
    await db.save_records(app[keys.db_key], [record], [db.StoredImage(sha, "image/jpeg", data)])
    return record


async def image_point(page: Any, fx: float, fy: float) -> tuple[float, float]:
    """Page coordinates of a point of the review image, as fractions of its size."""
    box = await page.locator("#review-stage img").bounding_box()
    return box["x"] + fx * box["width"], box["y"] + fy * box["height"]


async def test_review_a_record_in_the_browser(client: Any, browser: Any) -> None:
    record = await saved_record(client)
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, has_touch=True)
    context.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page = await context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(str(client.make_url(f"/detections/{record.id}")))
        await page.wait_for_function(
            "() => { const i = document.querySelector('#review-stage img');"
            " return i.complete && i.naturalWidth > 0; }")
        assert "Not reviewed yet" in await page.locator("#review-state").inner_text()
        rows = page.locator("#review-list .review-item")
        assert await rows.count() == 2
        assert await page.locator("#review-boxes .review-box").count() == 2
        # The boxes sit where the record says, over the shown image.
        image = await page.locator("#review-stage img").bounding_box()
        first = await page.locator("#review-boxes .review-box").first.bounding_box()
        scale = image["width"] / 810
        assert first["x"] == pytest.approx(image["x"] + 100 * scale, abs=1.5)
        assert first["width"] == pytest.approx(100 * scale, abs=1.5)

        # The false "stop": wrong (with the keyboard, on the box itself).
        await page.locator("#review-boxes .review-box").first.focus()
        await page.keyboard.press("Delete")
        assert "is-wrong" in await rows.nth(0).get_attribute("class")
        assert await rows.nth(0).locator("[data-part=wrong]").get_attribute("aria-pressed") == "true"
        # The second box's label with a key: 3 is the third label.
        await rows.nth(1).locator("select").focus()
        await page.keyboard.press("3")
        assert await rows.nth(1).locator("select").input_value() == "stopLeft"
        # Focus stays where it was, visibly.
        assert await page.evaluate("() => document.activeElement.dataset.part") == "label"
        assert await page.evaluate(
            "() => getComputedStyle(document.activeElement).outlineStyle") != "none"

        # A missed light drawn with the mouse.
        await page.click("#review-draw")
        assert await page.get_attribute("#review-draw", "aria-pressed") == "true"
        x1, y1 = await image_point(page, 0.6, 0.5)
        x2, y2 = await image_point(page, 0.8, 0.7)
        await page.mouse.move(x1, y1)
        await page.mouse.down()
        await page.mouse.move((x1 + x2) / 2, (y1 + y2) / 2, steps=4)
        await page.mouse.move(x2, y2, steps=4)
        await page.mouse.up()
        assert await rows.count() == 3
        await rows.nth(2).locator("select").select_option("warning")

        # And one with a finger: touch events as a touch screen sends them.
        cdp = await context.new_cdp_session(page)
        await page.locator("#review-stage").evaluate("e => e.scrollIntoView()")
        tx1, ty1 = await image_point(page, 0.1, 0.3)
        tx2, ty2 = await image_point(page, 0.3, 0.45)
        assert 0 < ty1 < ty2 < 900, "the touch lands inside the viewport"
        await cdp.send("Input.dispatchTouchEvent",
                       {"type": "touchStart", "touchPoints": [{"x": tx1, "y": ty1}]})
        for k in range(1, 6):
            await cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [
                {"x": tx1 + (tx2 - tx1) * k / 5, "y": ty1 + (ty2 - ty1) * k / 5}]})
        await cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        await page.wait_for_function("() => document.querySelectorAll('#review-list "
                                     ".review-item').length === 4")
        # A new box takes the last label used, and the focus: a key changes it.
        assert await rows.nth(3).locator("select").input_value() == "warning"
        assert await page.evaluate("() => document.activeElement.closest('li').dataset.item") == "3"
        await page.keyboard.press("1")
        assert await rows.nth(3).locator("select").input_value() == "go"
        await page.keyboard.press("Escape")
        assert await page.get_attribute("#review-draw", "aria-pressed") == "false"
        await screenshot(page, "review-editing")

        await page.click("#review-save")
        await page.wait_for_function(
            "() => document.getElementById('review-status').textContent"
            ".startsWith('Review saved')")
        assert await page.locator("#review-status").inner_text() == "Review saved: 3 boxes."

        saved = (await (await client.get(f"/api/detections/{record.id}")).json())["review"]
        boxes = saved["boxes"]
        assert [(b["label"], b.get("detection")) for b in boxes] == \
            [("stopLeft", 1), ("warning", None), ("go", None)]
        assert boxes[0]["box"] == {"x1": 400, "y1": 150, "x2": 500, "y2": 400}
        for box, want in ((boxes[1]["box"], (0.6, 0.5, 0.8, 0.7)),
                          (boxes[2]["box"], (0.1, 0.3, 0.3, 0.45))):
            got = (box["x1"] / 810, box["y1"] / 1080, box["x2"] / 810, box["y2"] / 1080)
            assert got == pytest.approx(want, abs=0.01), (box, want)
        # The model's own output is untouched.
        assert [d["label"] for d in (await (await client.get(
            f"/api/detections/{record.id}")).json())["detections"]] == ["stop", "go"]

        # After a reload the page shows both: the model's boxes with their verdicts,
        # the added ones, and the review in the editor.
        await page.reload()
        assert "Reviewed" in await page.locator("#review-state").inner_text()
        verdicts = await page.locator("#detections td.verdict").all_inner_texts()
        assert [v.strip() for v in verdicts] == ["✗ wrong", "✓ is stopLeft"]
        assert await page.locator("#drawn-boxes tbody tr").count() == 2
        assert await rows.count() == 4
        assert "is-wrong" in await rows.nth(0).get_attribute("class")
        assert await rows.nth(1).locator("select").input_value() == "stopLeft"
        await screenshot(page, "review-saved")

        # Back to the model's boxes.
        await page.click("#review-reset")
        await page.wait_for_function(
            "() => document.getElementById('review-status').textContent"
            ".startsWith('Review removed')")
        assert (await (await client.get(f"/api/detections/{record.id}")).json())["review"] is None
        assert await rows.count() == 2
    finally:
        await context.close()
    assert errors == [], errors


@pytest.mark.parametrize("width", [360])
async def test_review_fits_a_phone(client: Any, page_factory: Any, width: int) -> None:
    record = await saved_record(client)
    page = await page_factory(width=width, height=800)
    await page.goto(str(client.make_url(f"/detections/{record.id}")))
    overflow = await page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    # Touch targets: the label menus and verdict buttons are at least 34 px high.
    for box in [await item.bounding_box() for item in
                await page.locator("#review-list select, #review-list button").all()]:
        assert box["height"] >= 34
    await screenshot(page, f"review-{width}")


async def test_needs_review_view_from_the_history_page(client: Any, page_factory: Any) -> None:
    sure, unsure = await saved_record(client), await saved_record(client)
    pool = client.server.app[keys.db_key]
    await pool.execute("UPDATE detections SET max_confidence = 0.2 WHERE id = $1", unsure.id)
    reviewed = await saved_record(client)
    await client.put(f"/api/detections/{reviewed.id}/review", json={"boxes": []})
    page = await page_factory()
    await page.goto(str(client.make_url("/history")))
    assert await page.locator(f'[data-record-id="{reviewed.id}"] .record-card__reviewed') \
        .inner_text() == "✓ Reviewed"
    await page.click("#needs-review")
    await page.wait_for_url("**/history?reviewed=no&order=least_confident")
    ids = [await card.get_attribute("data-record-id")
           for card in await page.locator(".record-card").all()]
    assert ids == [str(unsure.id), str(sure.id)]
    assert await page.get_attribute("#needs-review", "aria-current") == "page"
    assert await page.locator("#f-order").input_value() == "least_confident"
    await screenshot(page, "needs-review")
