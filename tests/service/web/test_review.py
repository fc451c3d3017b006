"""Reviews by API (PUT/DELETE /api/detections/{id}/review, the review in GET
/api/detections/{id}), the history's reviewed filter and least-confident order, and
counts of reviewed labels (/api/stats?source=review): real app, real PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import db
from main import init_app
from model.detection import Detection
from service.web import keys
from service.web.tokens import create_token
from service.workers.pool import DetectorPool
from tests.paths import PHOTOS_DIR
from tests.service.web.test_api import assert_error

PHOTO = (PHOTOS_DIR / "portrait.jpg").read_bytes()  # 810 x 1080
NOW = datetime.now(timezone.utc).replace(microsecond=0)


async def save(app: Any, confidences: list[list[float]], *, store: bool = True,
               labels: tuple[str, ...] = ("stop", "go")) -> list[db.Record]:
    """Records of the test model (its config name), one per list of box confidences,
    newest last."""
    sha = hashlib.sha256(PHOTO).hexdigest()
    model = app[keys.config_key].default_model.name
    records = [db.Record(
        id=uuid.uuid4(), created_at=NOW - timedelta(minutes=len(confidences) - i),
        filename=f"cam/{i}.jpg", sha256=sha, width=810, height=1080, model=model,
        inference_ms=5.0,
        detections=[Detection(labels[j % len(labels)], j % len(labels), c,
                              100 + 50 * j, 200, 140 + 50 * j, 300)
                    for j, c in enumerate(confs)]) for i, confs in enumerate(confidences)]
    images = [db.StoredImage(sha, "image/jpeg", PHOTO)] if store else []
    await db.save_records(app[keys.db_key], records, images)
    return records


def review_body(*boxes: tuple[str, float, float, float, float]) -> dict[str, Any]:
    return {"boxes": [{"label": label, "box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}}
                      for label, x1, y1, x2, y2 in boxes]}


async def test_review_is_stored_beside_the_model_output(client: Any) -> None:
    rec, = await save(client.server.app, [[0.9, 0.4]])
    before = await (await client.get(f"/api/detections/{rec.id}")).json()
    assert before["review"] is None

    # The false "stop" becomes a "go", the second box is confirmed, a missed one is drawn.
    body = {"boxes": [{"label": "go", "box": {"x1": 100, "y1": 200, "x2": 140, "y2": 300},
                       "detection": 0},
                      {"label": "go", "box": {"x1": 150, "y1": 200, "x2": 190, "y2": 300},
                       "detection": 1},
                      {"label": "stop", "box": {"x1": 600.5, "y1": 10, "x2": 810, "y2": 1080}}]}
    response = await client.put(f"/api/detections/{rec.id}/review", json=body)
    assert response.status == 200, await response.text()
    saved = await response.json()
    assert saved["boxes"] == [{**b, "box": {k: float(v) for k, v in b["box"].items()}}
                              for b in body["boxes"]]
    assert saved["reviewer"] is None  # access control off
    assert abs(datetime.fromisoformat(saved["reviewed_at"]) - datetime.now(timezone.utc)) \
        < timedelta(minutes=1)

    after = await (await client.get(f"/api/detections/{rec.id}")).json()
    assert after["review"] == saved
    # The model's own output is untouched.
    assert after["detections"] == before["detections"]
    assert [d["label"] for d in after["detections"]] == ["stop", "go"]

    # Reviewing again replaces the review: "nothing there".
    response = await client.put(f"/api/detections/{rec.id}/review", json={"boxes": []})
    assert (await response.json())["boxes"] == []
    assert (await (await client.get(f"/api/detections/{rec.id}")).json())["review"]["boxes"] == []

    # And it can be withdrawn.
    assert (await client.delete(f"/api/detections/{rec.id}/review")).status == 204
    assert (await (await client.get(f"/api/detections/{rec.id}")).json())["review"] is None
    await assert_error(await client.delete(f"/api/detections/{rec.id}/review"), 404, "not_found")


@pytest.mark.parametrize("body, words", [
    (review_body(("nosuch", 1, 1, 5, 5)), ["unknown label", "nosuch", "go, stop"]),
    (review_body(("stop", 700, 10, 811, 50)), ["boxes[0].box", "inside the 810x1080 image"]),
    (review_body(("stop", -1, 10, 20, 50)), ["boxes[0].box"]),
    (review_body(("stop", 50, 10, 20, 50)), ["boxes[0].box"]),  # x2 < x1
    (review_body(("stop", 1, 1, 5, 5), ("go", 10, 10, 10, 20)), ["boxes[1].box"]),  # empty
    ({"boxes": [{"label": "stop", "box": {"x1": "1", "y1": 1, "x2": 5, "y2": 5}}]},
     ["boxes[0].box.x1", "number"]),
    ({"boxes": [{"label": "stop", "box": {"x1": 1, "y1": 1, "x2": 5}}]}, ["boxes[0].box"]),
    ({"boxes": [{"label": "stop"}]}, ["boxes[0]"]),
    ({"boxes": [{"label": "stop", "box": {"x1": 1, "y1": 1, "x2": 5, "y2": 5},
                 "detection": 7}]}, ["detection", "2 detections"]),
    ({"boxes": {"label": "stop"}}, ["boxes", "list"]),
    ({"box": []}, ["boxes"]),
    ([], ["boxes"]),
])
async def test_bad_reviews_get_400_with_a_clear_message(client: Any, body: Any,
                                                        words: list[str]) -> None:
    rec, = await save(client.server.app, [[0.9, 0.4]])
    error = await assert_error(await client.put(f"/api/detections/{rec.id}/review", json=body),
                               400, "invalid_review")
    for word in words:
        assert word in error["error"]["message"], error
    assert (await (await client.get(f"/api/detections/{rec.id}")).json())["review"] is None


async def test_malformed_bodies_and_unknown_records(client: Any) -> None:
    rec, = await save(client.server.app, [[0.9]])
    url = f"/api/detections/{rec.id}/review"
    await assert_error(await client.put(url, data=b"{not json",
                                        headers={"Content-Type": "application/json"}),
                       400, "invalid_json")
    await assert_error(await client.put(url, data=b'{"boxes": []}',
                                        headers={"Content-Type": "text/plain"}),
                       415, "unsupported_media_type")
    await assert_error(await client.put(url, data=io.BytesIO(b'{"boxes": [' + b" " * (1 << 20)
                                                             + b"]}"),
                                        headers={"Content-Type": "application/json"}),
                       413, "payload_too_large")
    await assert_error(await client.put(f"/api/detections/{uuid.uuid4()}/review",
                                        json={"boxes": []}), 404, "not_found")
    await assert_error(await client.put("/api/detections/nope/review", json={"boxes": []}),
                       404, "not_found")


async def test_reviewing_needs_a_token_when_access_control_is_on(
        make_config: Any, detector_pool: DetectorPool, tmp_path: Path,
        aiohttp_client: Any) -> None:
    tokens = tmp_path / "tokens.json"
    token = create_token(tokens, "labeller-1")
    client = await aiohttp_client(await init_app(
        make_config({"auth": {"tokens_file": str(tokens)}}), detector_pool=detector_pool))
    rec, = await save(client.server.app, [[0.9]])
    url = f"/api/detections/{rec.id}/review"
    body = review_body(("go", 1, 1, 50, 50))
    await assert_error(await client.put(url, json=body), 401, "unauthorized")
    await assert_error(await client.put(url, json=body,
                                        headers={"Authorization": "Bearer yolo_wrong"}),
                       401, "unauthorized")
    await assert_error(await client.delete(url), 401, "unauthorized")
    await assert_error(await client.get("/api/export?reviewed=yes"), 401, "unauthorized")
    response = await client.put(url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    assert (await response.json())["reviewer"] == "labeller-1"
    # A signed-in session reviews too, as the browser does.
    login = await client.post("/login", data={"token": token}, allow_redirects=False)
    assert login.status == 303
    response = await client.put(url, json={"boxes": []})
    assert response.status == 200 and (await response.json())["reviewer"] == "labeller-1"


async def test_reviewed_filter_and_least_confident_order(client: Any) -> None:
    app = client.server.app
    recs = await save(app, [[0.9], [0.3, 0.8], [], [0.55], [0.31]])
    await client.put(f"/api/detections/{recs[0].id}/review", json={"boxes": []})

    async def ids(query: str) -> list[uuid.UUID]:
        out, url = [], f"/api/detections?{query}"
        while url:
            response = await client.get(url)
            assert response.status == 200, await response.text()
            page = await response.json()
            out += [uuid.UUID(item["id"]) for item in page["items"]]
            url = page["next"]
        return out

    assert await ids("reviewed=yes") == [recs[0].id]
    assert await ids("reviewed=no") == [r.id for r in reversed(recs[1:])]
    # Least sure first (the best box's confidence), paged two at a time; no boxes: last.
    want = [recs[4].id, recs[3].id, recs[1].id, recs[0].id, recs[2].id]
    assert await ids("order=least_confident&limit=2") == want
    assert await ids("order=least_confident&reviewed=no&limit=1") == \
        [recs[4].id, recs[3].id, recs[1].id, recs[2].id]
    # With a label: that label's best box (record 1's stop is 0.3, its go 0.8).
    assert await ids("order=least_confident&label=stop") == [recs[1].id, recs[4].id,
                                                             recs[3].id, recs[0].id]
    await assert_error(await client.get("/api/detections?reviewed=maybe"), 400, "bad_parameter")
    await assert_error(await client.get("/api/detections?order=random"), 400, "bad_parameter")
    newest = await (await client.get("/api/detections?limit=1")).json()
    await assert_error(await client.get(
        f"/api/detections?order=least_confident&cursor={newest['next_cursor']}"),
        400, "bad_parameter")


async def test_stats_count_reviewed_labels(client: Any) -> None:
    app = client.server.app
    recs = await save(app, [[0.9, 0.8], [0.7], [0.6]])  # stop+go, stop, stop
    await client.put(f"/api/detections/{recs[0].id}/review",
                     json=review_body(("go", 1, 1, 9, 9), ("go", 20, 1, 29, 9),
                                      ("stop", 40, 1, 49, 9)))
    await client.put(f"/api/detections/{recs[1].id}/review", json={"boxes": []})

    model = await (await client.get("/api/stats")).json()
    assert (model["records"], model["boxes"]) == (3, 4)
    assert {c["label"]: (c["records"], c["boxes"]) for c in model["labels"]} == \
        {"stop": (3, 3), "go": (1, 1)}
    reviewed = await (await client.get("/api/stats?source=review")).json()
    assert (reviewed["records"], reviewed["boxes"]) == (2, 3)
    assert {c["label"]: (c["records"], c["boxes"]) for c in reviewed["labels"]} == \
        {"go": (1, 2), "stop": (1, 1)}
    assert sum(d["records"] for d in reviewed["days"]) == 2
    by_label = await (await client.get("/api/stats?source=review&label=go")).json()
    assert by_label["records"] == 1
    assert (await (await client.get("/api/stats?reviewed=no")).json())["records"] == 1
    assert (await (await client.get("/api/stats?source=review&reviewed=no")).json()) \
        ["records"] == 0
    await assert_error(await client.get("/api/stats?source=people"), 400, "bad_parameter")


async def test_history_page_needs_review_view(client: Any) -> None:
    import re

    recs = await save(client.server.app, [[0.9], [0.35], [0.6]])
    await client.put(f"/api/detections/{recs[1].id}/review", json={"boxes": []})
    html = await (await client.get("/history")).text()
    cards = re.findall(r'<li class="record-card card" data-record-id="([^"]+)">(.*?)</li>\s*(?=<li class="record-card|</ol>)',
                       html, re.S)
    assert [c[0] for c in cards] == [str(r.id) for r in reversed(recs)]
    assert ["✓ Reviewed" in body for _, body in cards] == [False, True, False]
    link = re.search(r'<a [^>]*id="needs-review" href="([^"]+)"', html).group(1)
    assert link == "/history?reviewed=no&amp;order=least_confident"

    html = await (await client.get("/history?reviewed=no&order=least_confident")).text()
    ids = re.findall(r'class="record-card card" data-record-id="([^"]+)"', html)
    assert ids == [str(recs[2].id), str(recs[0].id)]  # 0.6, then 0.9; the reviewed one gone
    assert re.search(r'id="needs-review"[^>]*aria-current="page"', html)
    assert '<option value="least_confident" selected>' in html

    html = await (await client.get("/history?source=review")).text()
    assert "Reviewed objects per label" in html and "Reviewed images per day" in html
    response = await client.get("/history?order=sideways")
    assert response.status == 400 and "order: must be one of" in await response.text()
