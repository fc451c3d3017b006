"""The HTML pages: upload page, history (filters, paging, counts, chart), record, 404.

Records are written with ``db.save_records`` into the real test database, so every page
is rendered from real queries; one test goes through the real model via POST /detect.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import date, datetime, timedelta, timezone
from html import unescape
from typing import Any

import pytest
from aiohttp import FormData

import db
from service.web.chart import MAX_BAR_WIDTH
from model.formats import ACCEPT_ATTRIBUTE, ACCEPTED_TEXT
from model.detection import Detection
from service.web import keys
from service.web.handlers import pages
from settings import BASE_DIR

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
STATIC = BASE_DIR / "system" / "static"
HOSTILE = '<script>alert("x")</script>'


def det(label: str, class_id: int, confidence: float,
        box: tuple[float, float, float, float] = (10, 20, 110, 220)) -> Detection:
    return Detection(label, class_id, confidence, *box)


def record(created_at: datetime, detections: list[Detection], filename: str = "cam.jpg",
           width: int = 640, height: int = 480) -> db.Record:
    return db.Record(id=uuid.uuid4(), created_at=created_at, filename=filename,
                     sha256=hashlib.sha256(filename.encode()).hexdigest(), width=width,
                     height=height, model="test-model", inference_ms=12.5, detections=detections)


async def save(client: Any, *records: db.Record) -> list[db.Record]:
    await db.save_records(client.server.app[keys.db_key], records)
    return list(records)


async def get_html(client: Any, url: str, status: int = 200) -> str:
    response = await client.get(url)
    text = await response.text()
    assert response.status == status, text[:500]
    assert response.content_type == "text/html"
    return text


def record_ids(html: str) -> list[str]:
    return re.findall(r'data-record-id="([0-9a-f-]{36})"', html)


def no_external_assets(html: str) -> None:
    """Nothing is loaded from another origin (no CDN): every src and stylesheet is local."""
    for attr in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert not re.match(r"^(?:https?:)?//", attr), attr


# ---------------------------------------------------------------- upload page

async def test_index_page(client: Any) -> None:
    html = await get_html(client, "/")
    assert 'id="upload-form"' in html
    assert re.search(r'<input[^>]*name="image"[^>]*type="file"[^>]*multiple', html)
    assert f'accept="{ACCEPT_ATTRIBUTE}"' in html and ".heic" in ACCEPT_ATTRIBUTE
    assert f">{ACCEPTED_TEXT}" in html  # the same list as the README's
    assert 'for="image-input"' in html  # the drop zone is the file input's label
    assert 'id="conf-input"' in html
    assert 'role="status"' in html and 'aria-live="polite"' in html
    assert '<script type="module" src="/static/js/upload.js"></script>' in html
    assert 'aria-current="page">Detect' in html
    no_external_assets(html)


@pytest.mark.parametrize(("path", "content_type"), [
    ("/static/css/app.css", "text/css"),
    ("/static/js/upload.js", "text/javascript"),
    ("/static/js/images.js", "text/javascript"),
    ("/static/favicon.svg", "image/svg+xml"),
])
async def test_static_files(client: Any, path: str, content_type: str) -> None:
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type in (content_type, "application/javascript")
    body = (await response.text()).replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "http://" not in body and "https://" not in body  # nothing fetched from elsewhere


def test_scripts_never_insert_html() -> None:
    for script in (STATIC / "js").glob("*.js"):
        source = script.read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            assert sink not in source, f"{script.name} uses {sink}"


# ---------------------------------------------------------------- history

async def test_history_empty(client: Any) -> None:
    html = await get_html(client, "/history")
    assert "No detections yet." in html
    assert 'rel="next"' not in html
    assert "<svg class=\"chart\"" not in html
    # The model's own classes are offered even before anything was detected.
    for name in ("go", "stop", "stopLeft", "goLeft", "warning", "warningLeft"):
        assert f'<option value="{name}" >{name}</option>' in html


async def test_history_lists_records_with_thumbnails_counts_and_chart(client: Any) -> None:
    older, newer = await save(
        client,
        record(T0, [det("stop", 1, 0.9), det("stop", 1, 0.4), det("go", 0, 0.8)], "a.jpg"),
        record(T0 + timedelta(days=2), [det("go", 0, 0.7)], "b.jpg", width=800, height=600),
    )
    empty, = await save(client, record(T0 + timedelta(days=2, hours=1), [], "c.jpg"))
    html = await get_html(client, "/history")

    assert record_ids(html) == [str(empty.id), str(newer.id), str(older.id)]  # newest first
    thumb = f'src="/detections/{newer.id}/image?annotated=1&amp;size=thumb" loading="lazy"'
    assert thumb in html
    assert 'width="800" height="600"' in html
    assert f'href="/detections/{older.id}"' in html
    assert "Nothing detected" in html
    # Each card sums its boxes up per label: count and best confidence.
    assert '<span class="det__label">stop ×2</span><span class="det__conf">90%</span>' in html
    assert '<span class="det__label">go</span><span class="det__conf">70%</span>' in html

    # Per label: boxes, with the number of images in the title, linked to a filter.
    counts = re.findall(r'<a href="/history\?label=(\w+)" >\w+</a>\s*'
                        r'<span class="count" title="(\d+) images?">(\d+)</span>', html)
    assert sorted(counts) == [("go", "2", "2"), ("stop", "1", "2")]

    # Per day: 1 May (1 image), nothing on 2 May, 3 May (2 images), on a time axis of
    # at least two weeks that ends on the last day.
    wide = html[html.index('class="chart chart--wide"'):]
    wide = wide[:wide.index("</svg>")]
    bars = re.findall(r'<rect class="chart__bar" data-day="([\d-]+)" data-count="(\d+)" '
                      r'x="([\d.]+)" y="[\d.]+" width="([\d.]+)" height="([\d.]+)"', wide)
    assert [(day, int(n)) for day, n, _, _, _ in bars] == [("2024-05-01", 1), ("2024-05-03", 2)]
    heights = [float(h) for *_, h in bars]
    assert heights[1] == pytest.approx(2 * heights[0], rel=0.05)
    assert 'data-first="2024-04-20" data-last="2024-05-03"' in wide
    assert html.count('class="chart__bar"') == 4  # the same bars on the phone's chart
    xs, widths = [float(x) for _, _, x, _, _ in bars], [float(w) for *_, w, _ in bars]
    slot = (640 - 40 - 8) / 14
    assert xs[1] - xs[0] == pytest.approx(2 * slot, abs=0.05)  # two days apart
    assert max(widths) <= MAX_BAR_WIDTH
    assert "3 images from 2024-04-20 to 2024-05-03" in html
    totals = re.sub(r"\s+", " ", re.search(r'id="totals">(.*?)</p>', html, re.S).group(1))
    assert totals.strip() == "3 images · 4 objects"
    no_external_assets(html)


async def test_history_filters_reflect_in_the_form_and_the_results(client: Any) -> None:
    match, low_conf, other_label, too_early, other_name = await save(
        client,
        record(T0 + timedelta(days=1), [det("stop", 1, 0.9)], "cam-north.jpg"),
        record(T0 + timedelta(days=1), [det("stop", 1, 0.3)], "cam-north.jpg"),
        record(T0 + timedelta(days=1), [det("go", 0, 0.9)], "cam-north.jpg"),
        record(T0 - timedelta(days=3), [det("stop", 1, 0.9)], "cam-north.jpg"),
        record(T0 + timedelta(days=1), [det("stop", 1, 0.9)], "other.jpg"),
    )
    html = await get_html(client, "/history?label=stop&since=2024-05-01&until=2024-05-02"
                                  "&min_confidence=0.5&filename=NORTH")
    assert record_ids(html) == [str(match.id)]
    assert '<option value="stop" selected>stop</option>' in html
    assert 'name="since" type="date" value="2024-05-01"' in html
    assert 'name="until" type="date" value="2024-05-02"' in html
    assert 'value="0.5"' in html
    assert 'value="NORTH"' in html
    assert '<a class="button button--ghost" href="/history">Reset</a>' in html
    # The counts are those of the records the filters select: one image, one stop box.
    assert 'until=2024-05-02" aria-current="true">stop</a>' in html
    counts = re.findall(r'<a href="/history\?label=(\w+)[^"]*"[^>]*>\w+</a>\s*'
                        r'<span class="count" title="(\d+) images?">(\d+)</span>', html)
    assert counts == [("stop", "1", "1")]
    totals = re.sub(r"\s+", " ", re.search(r'id="totals">(.*?)</p>', html, re.S).group(1))
    assert totals.strip() == "1 image · 1 object match these filters"
    # Without the label the per-label links keep the date range.
    html = await get_html(client, "/history?since=2024-05-01&until=2024-05-02")
    assert 'href="/history?label=go&amp;since=2024-05-01&amp;until=2024-05-02" >go' in html

    # "until" is a whole day: records of 2 May are in, 3 May out.
    html = await get_html(client, "/history?until=2024-05-01")
    assert record_ids(html) == [str(too_early.id)]

    html = await get_html(client, "/history?label=warning")
    assert "No records match these filters." in html


async def test_history_paging_keeps_filters(client: Any) -> None:
    n = pages.PAGE_SIZE + 5
    saved = await save(client, *(record(T0 + timedelta(minutes=i), [det("go", 0, 0.8)])
                                 for i in range(n)))
    newest_first = [str(r.id) for r in reversed(saved)]

    html = await get_html(client, "/history?label=go")
    assert record_ids(html) == newest_first[:pages.PAGE_SIZE]
    assert "« Newest" not in html
    next_url = unescape(re.search(r'href="([^"]+)" rel="next"', html).group(1))
    assert next_url.startswith("/history?label=go&cursor=")

    html = await get_html(client, next_url)
    assert record_ids(html) == newest_first[pages.PAGE_SIZE:]
    assert 'rel="next"' not in html
    assert '<a class="button button--ghost" href="/history?label=go">« Newest</a>' in html


async def test_history_bad_filters_are_reported_on_the_page(client: Any) -> None:
    kept, = await save(client, record(T0, [det("stop", 1, 0.9)]))
    await save(client, record(T0, [det("go", 0, 0.9)]))
    html = await get_html(client, "/history?label=stop&since=yesterday&min_confidence=2"
                                  "&cursor=bogus", status=400)
    alert = re.search(r'<div class="alert alert--error" role="alert".*?</div>', html, re.S).group(0)
    assert "since: must be an ISO 8601 date" in unescape(alert)
    assert "min_confidence: must be within [0, 1]" in alert
    assert "cursor: is not a cursor" in alert
    # The good filter still applies, the bad ones are not echoed back.
    assert record_ids(html) == [str(kept.id)]
    assert 'name="since" type="date" value=""' in html

    html = await get_html(client, "/history?since=2024-05-02&until=2024-05-01", status=400)
    assert "until: must be later than since" in html
    assert 'name="since" type="date" value="2024-05-02"' in html
    assert 'name="until" type="date" value=""' in html


# ---------------------------------------------------------------- escaping

async def test_hostile_filename_and_label_are_escaped(client: Any) -> None:
    rec, = await save(client, record(T0, [det(HOSTILE, 7, 0.9)], filename=HOSTILE + ".jpg"))
    for url in ("/history", f"/detections/{rec.id}"):
        html = await get_html(client, url)
        assert HOSTILE not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
        assert html.count("<script") == html.count('<script type="module" src="/static/js/')


async def test_hostile_query_parameters_are_escaped(client: Any) -> None:
    payload = '"><script>alert(1)</script>'
    response = await client.get("/history", params={"filename": payload})
    html = await response.text()
    assert response.status == 200
    assert "<script>alert(1)</script>" not in html
    assert 'value="&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in html
    # An unknown label: the error page names it, escaped.
    response = await client.get("/history", params={"label": payload, "filename": payload},
                                headers={"Accept": "text/html"})
    html = await response.text()
    assert response.status == 400
    assert "<script>alert(1)</script>" not in html
    assert "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html

    html = await get_html(client, "/detections/<img src=x onerror=alert(1)>", status=404)
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


async def test_unknown_label_is_a_400_page_with_the_known_labels(client: Any) -> None:
    # "bicycle" is no class of the served model, but a record has it: known.
    await save(client, record(T0, [det("bicycle", 9, 0.9)]))
    html = await get_html(client, "/history?label=nosuch&since=2024-05-01", status=400)
    assert "Unknown label" in html and "nosuch" in html
    links = re.findall(r'<li><a href="([^"]+)">(\w+)</a></li>', html)
    served = (BASE_DIR / "tests/data/service-6cls.names").read_text().split()
    assert [text for _, text in links] == [*served, "bicycle"]
    assert unescape(links[0][0]) == f"/history?since=2024-05-01&label={served[0]}"
    html = await get_html(client, "/history?label=bicycle")  # known: a page
    assert "Unknown label" not in html


async def test_counts_follow_the_label_filter(client: Any) -> None:
    await save(client,
               record(T0, [det("stop", 1, 0.9), det("go", 0, 0.8), det("go", 0, 0.7)]),
               record(T0 + timedelta(days=1), [det("stop", 1, 0.9)]),
               record(T0 + timedelta(days=1), [det("go", 0, 0.9)]),
               record(T0 + timedelta(days=1), []))
    for url, images, boxes, per_label in (
            ("/history", 4, 5, [("go", "2", "3"), ("stop", "2", "2")]),
            ("/history?label=stop", 2, 4, [("go", "1", "2"), ("stop", "2", "2")]),
            ("/history?label=go&since=2024-05-02", 1, 1, [("go", "1", "1")])):
        html = await get_html(client, url)
        counts = re.findall(r'<a href="/history\?label=(\w+)[^"]*"[^>]*>\w+</a>\s*'
                            r'<span class="count" title="(\d+) images?">(\d+)</span>', html)
        assert sorted(counts) == per_label, url
        totals = re.sub(r"\s+", " ", re.search(r'id="totals">(.*?)</p>', html, re.S).group(1))
        assert totals.strip().startswith(f"{images} image{'s' if images > 1 else ''} · "
                                         f"{boxes} object{'s' if boxes > 1 else ''}"), url
        stats = await (await client.get("/api/stats" + url[len("/history"):])).json()
        assert (stats["records"], stats["boxes"]) == (images, boxes), url


# ---------------------------------------------------------------- record page

async def test_record_page(client: Any) -> None:
    rec, = await save(client, record(T0, [det("stop", 1, 0.91234, (1.4, 2.6, 101.2, 202.8)),
                                          det("goLeft", 3, 0.5)], filename="north.jpg"))
    html = await get_html(client, f"/detections/{rec.id}")
    assert '<h1 id="record-title">north.jpg</h1>' in html
    assert f'src="/detections/{rec.id}/image?annotated=1" width="640" height="480"' in html
    assert f'href="/detections/{rec.id}/image">original</a>' in html
    assert f'href="/api/detections/{rec.id}">JSON</a>' in html
    assert "2 objects detected" in html
    assert "2024-05-01 12:00:00 UTC" in html
    body = re.search(r"<tbody>(.*)</tbody>", html, re.S).group(1)
    rows = re.findall(r"<tr.*?</tr>", body, re.S)
    assert len(rows) == 2
    cells = [re.sub(r"<[^>]+>", "", cell).strip()
             for cell in re.findall(r"<td.*?</td>", rows[0], re.S)]
    assert cells == ["1", "stop (1)", "91.2%", "1", "3", "101", "203", "100 × 200",
                     "not reviewed"]
    assert pages.color_style(1, "stop") in rows[0] and "--c: #d62728" in rows[0]  # red
    no_external_assets(html)


async def test_record_page_without_detections(client: Any) -> None:
    rec, = await save(client, record(T0, []))
    html = await get_html(client, f"/detections/{rec.id}")
    assert "0 objects detected" in html
    assert "Nothing was detected in this image." in html


@pytest.mark.parametrize("record_id", [str(uuid.uuid4()), "not-a-uuid", "123"])
async def test_unknown_record_is_a_404_page(client: Any, record_id: str) -> None:
    html = await get_html(client, f"/detections/{record_id}", status=404)
    assert '<p class="error-page__code">404</p>' in html
    assert "Record not found" in html
    assert record_id in html


async def test_detect_then_record_and_history_pages(client: Any, portrait_jpeg: bytes) -> None:
    """A real detection (real model in the worker pool) appears on both pages."""
    form = FormData()
    form.add_field("image", portrait_jpeg, filename="bus.jpg", content_type="image/jpeg")
    response = await client.post("/detect?conf=0.05", data=form)
    assert response.status == 200
    body = await response.json()
    assert body["detections"], "the test model finds boxes at a low threshold"

    html = await get_html(client, f"/detections/{body['id']}")
    rows = re.findall(r"<tr style=", html)
    assert len(rows) == len(body["detections"])
    assert f"{len(body['detections'])} objects detected" in html

    image = await client.get(f"/detections/{body['id']}/image?annotated=1")
    assert image.status == 200 and image.content_type == "image/jpeg"

    html = await get_html(client, "/history")
    assert record_ids(html) == [body["id"]]


# ---------------------------------------------------------------- view helpers

def test_parse_filters_keeps_the_good_values() -> None:
    filters, kept, errors = pages.parse_filters(
        {"label": " stop ", "since": "2024-05-01", "until": "nope", "min_confidence": "0.25",
         "filename": ""})
    assert kept == {"label": "stop", "since": "2024-05-01", "min_confidence": "0.25"}
    assert filters == db.HistoryFilter(label="stop", since=T0.replace(hour=0),
                                       min_confidence=0.25)
    assert len(errors) == 1 and errors[0].startswith("until:")


def test_model_names_are_shown_once() -> None:
    assert pages.model_text("traffic-lights-tiny-spp:traffic-lights-tiny-spp") \
        == "traffic-lights-tiny-spp"
    assert pages.model_text("yolov3-spp:best_model_12") == "yolov3-spp · best_model_12"
    assert pages.model_text("traffic-lights") == "traffic-lights"


def test_class_id_for_unknown_labels_is_stable() -> None:
    names = ("go", "stop")
    assert pages.class_id_for("stop", names) == 1
    other = pages.class_id_for("bicycle", names)
    assert other >= 2 and other == pages.class_id_for("bicycle", names)


async def test_unknown_page_is_an_html_404_for_browsers_and_json_for_the_rest(
        client: Any) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    response = await client.get("/histroy?x=<b>", headers=browser)
    assert response.status == 404 and response.content_type == "text/html"
    html = await response.text()
    assert "Page not found" in html and "There is no page at /histroy." in html
    for path, headers in (("/histroy", {}), ("/api/nope", browser)):
        response = await client.get(path, headers=headers)
        assert response.status == 404 and response.content_type == "application/json", path
    css = await client.get("/static/nope.css", headers={"Accept": "text/css,*/*;q=0.1"})
    assert css.status == 404 and css.content_type != "text/html"
    response = await client.post("/histroy", headers=browser)
    assert response.status == 404 and response.content_type == "application/json"
