"""The pages in a real browser: headless Chromium driven by Playwright for Python.

The app runs on a live port (aiohttp's test server) with the real database, worker pool
and test model. Chromium is Debian's ``chromium`` package (Playwright's own browser
download is not used); without it these tests skip, except under ``CI=true`` where a
missing browser is a failure. Set ``SCREENSHOT_DIR`` to keep screenshots of the pages.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import db
from model.detection import Detection
from service.web import keys
from service.web.handlers import pages
from settings import BASE_DIR
from tests.paths import PHOTOS_DIR

BUS = PHOTOS_DIR / "portrait.jpg"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


def _chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM_PATH")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def chromium_executable() -> str:
    """Checked before the database and worker fixtures start, so a skip costs nothing."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install playwright)")
    executable = _chromium()
    if executable is None:
        _unavailable("Chromium is not installed (apt-get install -y chromium, "
                     "or set CHROMIUM_PATH)")
    return executable


@pytest.fixture
async def browser(chromium_executable: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    executable = chromium_executable
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable,
                                                   args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page_factory(browser: Any) -> AsyncIterator[Any]:
    """New pages that fail the test on any script error."""
    contexts = []
    errors: list[str] = []

    async def make(width: int = 1280, height: int = 900) -> Any:
        context = await browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield make
    for context in contexts:
        await context.close()
    assert errors == [], f"script errors in the page: {errors}"


async def screenshot(page: Any, name: str) -> None:
    folder = os.environ.get("SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


async def test_upload_draws_boxes_and_links_to_record_and_history(
        client: Any, page_factory: Any) -> None:
    page = await page_factory()
    await page.goto(str(client.make_url("/")))
    # The random test model scores every box near 0.25: a low threshold gives boxes.
    await page.fill("#conf-input", "0.05")
    await page.set_input_files("#image-input", str(BUS))

    card = page.locator("#results .result").first
    await card.locator(".stage__spinner").wait_for(state="hidden")
    await page.wait_for_selector("#results .result.is-done")
    record_id = await card.get_attribute("data-record-id")
    response = await client.get(f"/api/detections/{record_id}")
    record = await response.json()
    detections = record["detections"]
    assert detections, "the test model finds boxes at conf 0.05"

    # One box and one list entry per detection, labelled with label and confidence.
    boxes = card.locator(".stage__boxes .box")
    assert await boxes.count() == len(detections)
    assert await card.locator(".det-list .det").count() == len({d["label"] for d in detections})
    first = detections[0]
    assert await boxes.first.get_attribute("title") == f"{first['label']} {first['confidence'] * 100:.1f}%"
    assert await card.locator(".result__state").inner_text() == f"{len(detections)} objects"
    assert await page.locator("#upload-status").inner_text() == "All images processed."

    # Boxes sit where the record says, scaled to the displayed image.
    await page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                 arg=await card.locator("img").element_handle())
    image = await card.locator(".stage__img").bounding_box()
    scale = image["width"] / record["width"]
    assert image["height"] == pytest.approx(record["height"] * scale, abs=1.5)
    for index in (0, len(detections) - 1):
        box = await boxes.nth(index).bounding_box()
        want = detections[index]["box"]
        assert box["x"] == pytest.approx(image["x"] + want["x1"] * scale, abs=1.5)
        assert box["y"] == pytest.approx(image["y"] + want["y1"] * scale, abs=1.5)
        assert box["width"] == pytest.approx((want["x2"] - want["x1"]) * scale, abs=1.5)
        assert box["height"] == pytest.approx((want["y2"] - want["y1"]) * scale, abs=1.5)

    # The page's colours are the ones the annotated images use (utils.draw via pages.py).
    for index in range(min(len(detections), 20)):
        style = await boxes.nth(index).get_attribute("style")
        expected = pages.color_style(detections[index]["class_id"], detections[index]["label"])
        assert expected.split("; ")[0] in style, (expected, style)  # --c, the box colour
    await screenshot(page, "upload")

    # Follow the link to the record page.
    await card.locator("a.result__record").click()
    await page.wait_for_url(f"**/detections/{record_id}")
    assert await page.locator("#detections tbody tr").count() == len(detections)
    shown = page.locator(".record-image img")
    await page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                 arg=await shown.element_handle())
    assert await shown.evaluate("img => img.naturalWidth") == record["width"]
    await screenshot(page, "record")

    # And on to the history, where the record is listed with its annotated thumbnail.
    await page.click("text=« History")
    await page.wait_for_url("**/history")
    item = page.locator(f'.record-card[data-record-id="{record_id}"]')
    assert await item.count() == 1
    thumb = item.locator("img")
    assert await thumb.get_attribute("src") == \
        f"/detections/{record_id}/image?annotated=1&size=thumb"
    await page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                 arg=await thumb.element_handle())
    assert await page.locator("#per-day svg.chart--wide rect.chart__bar").count() == 1
    await screenshot(page, "history")


async def test_dropped_files_each_get_a_result_or_an_error(client: Any,
                                                           page_factory: Any) -> None:
    page = await page_factory()
    await page.goto(str(client.make_url("/")))
    # A drop with a DataTransfer made in the page, as a drag from the desktop gives: a
    # photo and a text file. Each is sent on its own, so one failure spoils nothing else.
    await page.evaluate("""(photo) => {
        const bytes = Uint8Array.from(atob(photo), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "bus.jpg", { type: "image/jpeg" }));
        data.items.add(new File(["just text"], "notes.txt", { type: "text/plain" }));
        const zone = document.getElementById("dropzone");
        const init = { dataTransfer: data, bubbles: true, cancelable: true };
        zone.dispatchEvent(new DragEvent("dragenter", init));
        zone.dispatchEvent(new DragEvent("drop", init));
    }""", base64.b64encode(BUS.read_bytes()).decode())
    await page.wait_for_function(
        "() => document.querySelectorAll('#results .result:not(.is-pending)').length === 2")
    names = await page.locator("#results .result .result__name").all_inner_texts()
    assert names == ["bus.jpg", "notes.txt"]  # in the order they were dropped

    done, failed = page.locator("#results .result").nth(0), page.locator("#results .result").nth(1)
    assert "is-done" in await done.get_attribute("class")
    assert await done.locator(".result__links").is_visible()
    assert "is-error" in await failed.get_attribute("class")
    alert = failed.locator(".result__error[role=alert]")
    assert await alert.is_visible()
    text = await alert.inner_text()
    assert "415" in text and "unsupported_media_type" in text
    assert not await failed.locator(".result__links").is_visible()
    assert await failed.locator(".result__state").inner_text() == "Failed"
    assert not await page.locator("#dropzone").evaluate("z => z.classList.contains('is-dragging')")

    ids = await client.server.app[keys.db_key].fetch("SELECT id FROM detections")
    assert [str(row["id"]) for row in ids] == [await done.get_attribute("data-record-id")]


@pytest.mark.parametrize("width", [360, 768])
async def test_pages_fit_narrow_screens(client: Any, page_factory: Any, width: int) -> None:
    name = "x" * 120 + ".jpg"  # one long word: must wrap, not widen the page
    data = BUS.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    rec = db.Record(id=uuid.uuid4(), created_at=datetime.now(timezone.utc), filename=name,
                    sha256=sha, width=810, height=1080, model="test-model", inference_ms=9.0,
                    detections=[Detection("stop", 1, 0.9, 10, 20, 300, 400)])
    await db.save_records(client.server.app[keys.db_key], [rec],
                          [db.StoredImage(sha, "image/jpeg", data)])
    page = await page_factory(width=width, height=800)
    for path in ("/", "/history", f"/detections/{rec.id}", "/detections/unknown"):
        await page.goto(str(client.make_url(path)))
        overflow = await page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than a {width}px screen"
    await screenshot(page, f"record-{width}")


async def test_api_docs_page_renders_the_openapi_document(client: Any,
                                                          page_factory: Any) -> None:
    page = await page_factory()
    await page.goto(str(client.make_url("/docs")))
    # Swagger UI (system/static/vendor) fetched /openapi.json and drew every operation.
    await page.wait_for_selector(".opblock-summary-path", timeout=TIMEOUT_MS)
    paths = set(await page.locator(".opblock-summary-path").all_inner_texts())
    assert {"/detect", "/v1/vision/detection", "/v1/vision/custom/{model}",
            "/api/models"} <= {p.replace("\u200b", "") for p in paths}
    await screenshot(page, "docs")


async def test_upload_page_picks_the_model(two_model_client: Any, page_factory: Any) -> None:
    page = await page_factory()
    await page.goto(str(two_model_client.make_url("/")))
    await page.select_option("#model-select", "colours")
    await page.set_input_files("#image-input", str(BUS))
    card = page.locator("#results .result").first
    await card.locator(".result__links").wait_for(state="visible")
    record_id = await card.get_attribute("data-record-id")
    record = await (await two_model_client.get(f"/api/detections/{record_id}")).json()
    assert record["model"] == "colours"
    await screenshot(page, "upload-model")


async def test_example_photos_run_through_the_detector(client: Any, page_factory: Any) -> None:
    page = await page_factory()
    await page.goto(str(client.make_url("/")))
    buttons = page.locator("[data-example]")
    assert await buttons.count() == 3
    for index in range(3):
        path = await buttons.nth(index).get_attribute("data-example")
        assert (BASE_DIR / "system" / path.removeprefix("/")).is_file()
    await buttons.first.click()
    card = page.locator("#results .result").first
    await card.locator(".result__links").wait_for(state="visible")
    assert await card.locator(".result__name").inner_text() == "street-green.jpg"
