"""The upload page in a real browser (Debian's Chromium, as tests/e2e/test_browser.py):
every accepted format, a transparent PNG shown on the grey the model saw, a refused file
with its sentence, labels that never cover each other, and the large view.

Test images are made here with Pillow (and pillow-heif for HEIC). ``SCREENSHOT_DIR``
keeps screenshots of what was checked.
"""

from __future__ import annotations

import io
import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from main import init_app
from model.formats import FORMATS, NOT_AN_IMAGE
from model.preprocess import PAD_COLOR
from service.web import keys
from settings import BASE_DIR
from tests.e2e import test_browser
from tests.paths import shared

# The browser fixtures of test_browser.py (Debian's Chromium through Playwright), shared.
chromium_executable = test_browser.chromium_executable
browser = test_browser.browser
page_factory = test_browser.page_factory
screenshot = test_browser.screenshot
BUS = test_browser.BUS

PAGE_DONE = "n => document.querySelectorAll('#results .result:not(.is-pending)').length === n"


def _photo(width: int = 160, height: int = 120) -> Image.Image:
    """A small picture with structure: a gradient and a few blocks."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xx * 255 // width), (yy * 255 // height), np.full_like(xx, 90)], axis=2)
    rgb[20:60, 30:70] = (230, 40, 40)
    rgb[70:110, 90:150] = (40, 200, 60)
    return Image.fromarray(rgb.astype(np.uint8))


def _write(folder: Path, name: str, image: Image.Image, fmt: str, **params: Any) -> Path:
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    path = folder / name
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    path.write_bytes(buffer.getvalue())
    return path


async def _label_rects(page: Any, scope: str) -> list[dict[str, Any]]:
    """The shown labels' and their stage's rectangles, from the DOM, per stage."""
    return await page.evaluate("""(scope) => [...document.querySelectorAll(scope)].map((stage) => {
        const frame = stage.querySelector('.stage__boxes').getBoundingClientRect();
        const labels = [...stage.querySelectorAll('.box__label')].filter((l) => !l.hidden)
          .map((l) => { const r = l.getBoundingClientRect();
                        return {left: r.left, top: r.top, right: r.right, bottom: r.bottom,
                                text: l.textContent}; });
        return {frame: {left: frame.left, top: frame.top, right: frame.right,
                        bottom: frame.bottom},
                labels, boxes: stage.querySelectorAll('.box').length};
    })""", scope)


def _assert_apart_and_inside(stages: list[dict[str, Any]]) -> int:
    shown = 0
    for stage in stages:
        frame = stage["frame"]
        for label in stage["labels"]:
            assert frame["left"] - 0.5 <= label["left"] < label["right"] <= frame["right"] + 0.5
            assert frame["top"] - 0.5 <= label["top"] < label["bottom"] <= frame["bottom"] + 0.5
        for a, b in itertools.combinations(stage["labels"], 2):
            overlap_x = min(a["right"], b["right"]) - max(a["left"], b["left"])
            overlap_y = min(a["bottom"], b["bottom"]) - max(a["top"], b["top"])
            assert overlap_x <= 0.5 or overlap_y <= 0.5, (a, b)
        shown += len(stage["labels"])
    return shown


async def test_every_accepted_format_uploads(client: Any, page_factory: Any,
                                             tmp_path: Path) -> None:
    photo = _photo()
    params = {"JPEG": {"quality": 92}, "HEIF": {"quality": 90}, "AVIF": {"quality": 90}}
    files = [_write(tmp_path, f"photo{fmt.extensions[0]}", photo, fmt.pillow[0],
                    **params.get(fmt.pillow[0], {})) for fmt in FORMATS]
    page = await page_factory()
    await page.goto(str(client.make_url("/")))
    hint = await page.locator("#accepted-formats").inner_text()
    assert hint.startswith("JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF and AVIF")
    await page.set_input_files("#image-input", [str(f) for f in files])
    await page.wait_for_function(PAGE_DONE, arg=len(files))
    cards = page.locator("#results .result")
    for index, path in enumerate(files):
        card = cards.nth(index)
        assert await card.locator(".result__name").inner_text() == path.name
        assert "is-done" in await card.get_attribute("class"), await card.inner_text()
        # A preview for each: the browser's own, or (TIFF, HEIC) the server's rendering.
        img = card.locator(".stage__img")
        await page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                     arg=await img.element_handle())
        record = await (await client.get(
            f"/api/detections/{await card.get_attribute('data-record-id')}")).json()
        assert (record["width"], record["height"]) == photo.size
    sources = await page.locator("#results .stage__img").evaluate_all(
        "imgs => imgs.map((img) => img.src.startsWith('blob:') ? 'browser' : 'server')")
    shown = dict(zip([f.suffix for f in files], sources, strict=True))
    assert shown[".tif"] == "server"  # Chromium shows no TIFF (nor HEIC): the server's JPEG
    assert {shown[s] for s in (".jpg", ".png", ".webp", ".gif", ".bmp", ".avif")} == {"browser"}
    await screenshot(page, "look-formats")


async def test_transparent_png_shows_the_grey_the_model_saw(client: Any,
                                                            page_factory: Any,
                                                            tmp_path: Path) -> None:
    rgba = np.zeros((120, 160, 4), np.uint8)
    rgba[..., :3] = (20, 60, 220)
    rgba[:, 80:, 3] = 255  # the left half transparent
    path = _write(tmp_path, "transparent.png", Image.fromarray(rgba), "PNG")
    page = await page_factory()
    await page.goto(str(client.make_url("/")))
    await page.set_input_files("#image-input", str(path))
    await page.wait_for_function(PAGE_DONE, arg=1)
    stage = page.locator("#results .result .stage__img").first
    shot = Image.open(io.BytesIO(await stage.screenshot())).convert("RGB")
    width, height = shot.size
    left = np.asarray(shot)[height // 4: 3 * height // 4, width // 8: 3 * width // 8]
    right = np.asarray(shot)[height // 4: 3 * height // 4, 5 * width // 8: 7 * width // 8]
    assert np.abs(left.astype(int) - PAD_COLOR).max() <= 3  # the transparent half: grey 114
    assert np.abs(right.astype(int) - (20, 60, 220)).max() <= 3
    await screenshot(page, "look-transparent")


async def test_a_refused_file_says_why(client: Any, page_factory: Any,
                                       tmp_path: Path) -> None:
    pdf = tmp_path / "scan.pdf"
    pdf.write_bytes(b"%PDF-1.7\n" + b"0" * 400)
    fake = tmp_path / "renamed.jpg"  # named like a photo, and the browser sends image/jpeg
    fake.write_bytes(b"just some text, not a photo\n" * 10)
    ico = _write(tmp_path, "icon.ico", _photo(32, 32), "ICO")
    page = await page_factory()
    await page.goto(str(client.make_url("/")))
    await page.set_input_files("#image-input", [str(pdf), str(fake), str(ico)])
    await page.wait_for_function(PAGE_DONE, arg=3)
    for index, name in enumerate(("scan.pdf", "renamed.jpg", "icon.ico")):
        card = page.locator("#results .result").nth(index)
        assert "is-error" in await card.get_attribute("class")
        alert = card.locator(".result__error[role=alert]")
        text = await alert.inner_text()
        assert f"{name}: {NOT_AN_IMAGE}" in text and "(415 unsupported_media_type)" in text
    await screenshot(page, "look-refused")


async def test_labels_never_cover_each_other(client: Any, page_factory: Any) -> None:
    page = await page_factory()
    await page.goto(str(client.make_url("/")))
    # The random test model scores many boxes near 0.25: a low threshold gives crowds.
    await page.fill("#conf-input", "0.05")
    await page.set_input_files("#image-input", [str(BUS), str(BUS)])
    await page.wait_for_function(PAGE_DONE, arg=2)
    stages = await _label_rects(page, "#results .stage")
    assert all(stage["boxes"] > 3 for stage in stages)
    assert _assert_apart_and_inside(stages) > 3
    await screenshot(page, "look-labels-grid")

    # The large view: keyboard, labels laid out again for the size, Esc closes.
    opener = page.locator("#results .stage__open").first
    await opener.focus()
    await page.keyboard.press("Enter")
    viewer = page.locator("#viewer")
    await viewer.wait_for(state="visible")
    await page.wait_for_timeout(200)  # the resize observer's layout
    large = await _label_rects(page, "#viewer .stage")
    assert large[0]["frame"]["right"] - large[0]["frame"]["left"] > 1.5 * (
        stages[0]["frame"]["right"] - stages[0]["frame"]["left"])
    assert _assert_apart_and_inside(large) >= len(stages[0]["labels"])
    fonts = await page.evaluate("""() => [document.querySelector('#results .box__label'),
        document.querySelector('#viewer .box__label')]
        .map((l) => parseFloat(getComputedStyle(l).fontSize))""")
    assert fonts[1] > fonts[0]  # legible large, not only scaled
    await screenshot(page, "look-lightbox")
    await page.keyboard.press("Escape")
    await viewer.wait_for(state="hidden")
    assert await page.evaluate("() => document.activeElement.classList.contains('stage__open')")


async def test_coco_classes_on_real_photos(make_config: Any, aiohttp_client: Any,
                                           page_factory: Any) -> None:
    """zidane.jpg and bus.jpg with the real COCO model: crowded labels, all readable."""
    source = shared("models", "yolov3-tiny-coco")
    photos = [shared("images", name) for name in ("zidane.jpg", "bus.jpg")]
    config = make_config(models={"coco": {
        "cfg": str(source / "yolov3-tiny.cfg"), "weights": str(source / "yolov3-tiny.weights"),
        "names": str(source / "coco.names"), "img_size": 416, "conf_thres": 0.1,
        "iou_thres": 0.45}})
    client = await aiohttp_client(await init_app(config))
    await client.server.app[keys.warmup_task_key]
    page = await page_factory()
    await page.goto(str(client.make_url("/")))
    await page.set_input_files("#image-input", [str(p) for p in photos])
    await page.wait_for_function(PAGE_DONE, arg=2)
    stages = await _label_rects(page, "#results .stage")
    texts = [label["text"] for stage in stages for label in stage["labels"]]
    assert any(t.startswith("person ") for t in texts) and any(t.startswith("bus ") for t in texts)
    _assert_apart_and_inside(stages)
    await screenshot(page, "look-coco")
    await page.locator("#results .stage__open").nth(1).click()  # bus.jpg, large
    await page.locator("#viewer").wait_for(state="visible")
    await page.wait_for_timeout(200)
    _assert_apart_and_inside(await _label_rects(page, "#viewer .stage"))
    await screenshot(page, "look-coco-large")


async def test_traffic_lights_in_their_colours(make_config: Any, aiohttp_client: Any,
                                               page_factory: Any) -> None:
    """The shipped model on the shipped CINTA photos, through the page: each label has
    its light's colour (red for stop, amber for warning, green for go)."""
    from model.draw import label_style

    data = BASE_DIR / "model" / "data"
    config = make_config(models={"traffic-lights": {
        "cfg": str(data / "traffic-lights-yolov3-tiny.cfg"),
        "weights": str(data / "traffic-lights-yolov3-tiny.pt"),
        "names": str(data / "traffic_light.names"), "agnostic_nms": True,
        "img_size": 512, "conf_thres": 0.25}})
    client = await aiohttp_client(await init_app(config))
    await client.server.app[keys.warmup_task_key]
    page = await page_factory()
    await page.goto(str(client.make_url("/")))
    photos = ("street-green.jpg", "street-red.jpg", "closeup-yellow.jpg")
    await page.set_input_files("#image-input",
                               [str(BASE_DIR / "system/static/examples" / p) for p in photos])
    await page.wait_for_function(PAGE_DONE, arg=3)
    labels = await page.evaluate("""() => [...document.querySelectorAll('#results .stage')]
        .map((stage) => [...stage.querySelectorAll('.box__label')]
          .map((l) => [l.textContent, getComputedStyle(l).backgroundColor]))""")
    assert [{text.split(" ")[0] for text, _ in stage} for stage in labels] == [
        {"go"}, {"stop"}, {"warning"}], labels
    for text, color in (pair for stage in labels for pair in stage):
        red, green, blue = label_style(text.removeprefix("← ").rsplit(" ", 1)[0], 0).rgb
        assert color == f"rgb({red}, {green}, {blue})", (text, color)
    _assert_apart_and_inside(await _label_rects(page, "#results .stage"))
    await screenshot(page, "look-traffic-lights")


async def test_page_and_server_place_labels_alike(client: Any, page_factory: Any) -> None:
    """boxes.js and model/draw.py are two implementations of one rule: given the same
    boxes and label sizes, they put every label in the same place."""
    from model.draw import place_labels

    rng = np.random.default_rng(7)
    cases = []
    for _ in range(60):
        width, height = int(rng.integers(200, 1400)), int(rng.integers(150, 1000))
        n = int(rng.integers(1, 30))
        x1, y1 = rng.uniform(0, width - 5, n), rng.uniform(0, height - 5, n)
        x2 = np.minimum(width, x1 + rng.uniform(3, width / 2, n))
        y2 = np.minimum(height, y1 + rng.uniform(3, height / 2, n))
        boxes = np.stack([x1, y1, x2, y2], axis=1).round(2).tolist()
        sizes = [[float(w), 16.0] for w in rng.integers(30, 140, n)]
        cases.append({"width": width, "height": height, "boxes": boxes, "sizes": sizes})
    page = await page_factory()
    await page.goto(str(client.make_url("/")))
    in_page = await page.evaluate("""async (cases) => {
        const { placeLabels } = await import('/static/js/boxes.js');
        return cases.map((c) => placeLabels(c.boxes, c.sizes, c.width, c.height));
    }""", cases)
    for case, js in zip(cases, in_page, strict=True):
        py = place_labels([tuple(b) for b in case["boxes"]], [tuple(s) for s in case["sizes"]],
                          case["width"], case["height"])
        assert [None if r is None else (r.left, r.top, r.right, r.bottom) for r in py] == [
            None if r is None else (r["left"], r["top"], r["right"], r["bottom"]) for r in js]


async def test_arrows_are_marked_on_the_page_and_the_record_image(
        client: Any, page_factory: Any) -> None:
    """goLeft, stopLeft and warningLeft: their light's colour, a dashed outline and an
    arrow, on the upload page (boxes.js) and in the annotated JPEG (model/draw.py)."""
    import hashlib
    import uuid
    from datetime import UTC, datetime

    import db
    from model.detection import Detection

    photo = BASE_DIR / "system/static/examples/street-red.jpg"
    data = photo.read_bytes()
    detections = [Detection("stop", 1, 0.94, 362, 89, 383, 127),
                  Detection("stopLeft", 2, 0.61, 360, 92, 386, 125),
                  Detection("goLeft", 3, 0.55, 62, 94, 80, 132),
                  Detection("go", 0, 0.52, 60, 96, 82, 130),
                  Detection("warningLeft", 5, 0.40, 150, 200, 260, 330)]
    sha = hashlib.sha256(data).hexdigest()
    rec = db.Record(id=uuid.uuid4(), created_at=datetime.now(UTC),
                    filename=photo.name, sha256=sha, width=416, height=416,
                    model="test-model", inference_ms=9.0, detections=detections)
    await db.save_records(client.server.app[keys.db_key], [rec],
                          [db.StoredImage(sha, "image/jpeg", data)])
    page = await page_factory()
    await page.goto(str(client.make_url("/")))
    # The page's own drawing of this record, in a stage like a result's.
    found = await page.evaluate("""async (record) => {
        const { drawBoxes, readPalette } = await import('/static/js/boxes.js');
        const results = document.getElementById('results');
        results.insertAdjacentHTML('beforeend', '<li class="result card"><div class="stage">'
          + '<div class="stage__open">'
          + '<img class="stage__img" src="/static/examples/street-red.jpg">'
          + '<span class="stage__boxes"></span></div></div></li>');
        const img = results.querySelector('.stage__img');
        await img.decode();
        const overlay = results.querySelector('.stage__boxes');
        drawBoxes(overlay, record, readPalette(results));
        return [...overlay.querySelectorAll('.box')].map((box, i) => [
          overlay.querySelectorAll('.box__label')[i].textContent,
          getComputedStyle(box).borderTopStyle]);
    }""", {"width": 416, "height": 416, "detections": [
        {"label": d.label, "class_id": d.class_id, "confidence": d.confidence,
         "box": {"x1": d.x1, "y1": d.y1, "x2": d.x2, "y2": d.y2}} for d in detections]})
    assert found == [["stop 94%", "solid"], ["← stopLeft 61%", "dashed"],
                     ["← goLeft 55%", "dashed"], ["go 52%", "solid"],
                     ["← warningLeft 40%", "dashed"]]
    _assert_apart_and_inside(await _label_rects(page, "#results .stage"))
    await page.locator("#results .result").last.screenshot(
        path=str(Path(os.environ.get("SCREENSHOT_DIR", "/tmp")) / "look-arrows-page.png"))
    # The record page's image is drawn by the server with the same rules.
    await page.goto(str(client.make_url(f"/detections/{rec.id}")))
    shown = page.locator(".record-image img")
    await page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                 arg=await shown.element_handle())
    colours = await page.locator("#detections tbody tr").evaluate_all(
        "rows => rows.map((r) => getComputedStyle(r).getPropertyValue('--c').trim())")
    from model.draw import label_style
    assert colours == [label_style(d.label, d.class_id).color for d in detections]
    await screenshot(page, "look-arrows-record")


async def test_large_view_on_a_phone_in_dark_mode(client: Any, page_factory: Any) -> None:
    page = await page_factory(width=360, height=740)
    await page.emulate_media(color_scheme="dark")
    await page.goto(str(client.make_url("/")))
    await page.fill("#conf-input", "0.27")
    await page.set_input_files("#image-input", str(BUS))
    await page.wait_for_function(PAGE_DONE, arg=1)
    await page.locator("#results .stage__open").first.click()
    viewer = page.locator("#viewer")
    await viewer.wait_for(state="visible")
    await page.wait_for_timeout(200)
    frame = await viewer.bounding_box()
    assert frame["x"] >= 0 and frame["x"] + frame["width"] <= 360
    _assert_apart_and_inside(await _label_rects(page, "#viewer .stage"))
    await page.screenshot(path=str(Path(os.environ.get("SCREENSHOT_DIR", "/tmp"))
                                   / "look-phone-dark-large.png"))
    await page.locator("#viewer .viewer__close").click()
    await viewer.wait_for(state="hidden")
