"""The HTTP API end to end: real app, real PostgreSQL, real worker process, real model."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

import db
from model.detection import Detection
from model.formats import NOT_AN_IMAGE
from service.web import keys
from main import init_app
from service.workers.pool import DetectorPool
from settings import BASE_DIR, Config
from tests.helpers import alive, encode, form, webp_bytes

CONF = 0.2  # random weights: low enough to get boxes, high enough to keep the list short


async def assert_error(response: aiohttp.ClientResponse, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) >= {"error"}
    extra = {"known_labels"} if body["error"]["code"] == "unknown_label" else set()
    assert set(body["error"]) == {"code", "message"} | extra
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body


def server_timing(header: str) -> list[tuple[str, float]]:
    """``a;dur=1.5, b;dur=2, n;desc="3"`` -> ``[("a", 1.5), ("b", 2.0)]``: the phases (the
    service's own format; counts, given as ``desc``, are :func:`server_counts`')."""
    phases = []
    for metric in header.split(","):
        name, _, duration = metric.strip().partition(";dur=")
        if duration:
            phases.append((name, float(duration)))
    return phases


def server_counts(header: str) -> dict[str, int]:
    """The ``name;desc="N"`` entries of a Server-Timing header (``passes``)."""
    counts = {}
    for metric in header.split(","):
        name, _, desc = metric.strip().partition(";desc=")
        if desc:
            counts[name] = int(desc.strip('"'))
    return counts


@pytest.fixture
def small_bgr(portrait_jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(portrait_jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.resize(image, (200, 160))


# ---------------------------------------------------------------- POST /detect

async def test_detect_multipart_returns_stored_record(client: Any, portrait_jpeg: bytes,
                                                      test_config: Config) -> None:
    response = await client.post(f"/detect?conf={CONF}", data=form(("bus.jpg", portrait_jpeg, "image/jpeg")))
    assert response.status == 200, await response.text()
    record = await response.json()
    assert set(record) == {"id", "created_at", "filename", "sha256", "width", "height", "model",
                           "inference_ms", "detections", "api", "model_version", "source",
                           "passes"}
    assert record["api"] == "native"
    # The version: SHA-256 over the cfg, weights and names (each after its size and a NUL).
    model = test_config.default_model
    digest = hashlib.sha256()
    for path in (model.cfg, model.weights, model.names):
        digest.update(b"%d\0" % path.stat().st_size + path.read_bytes())
    assert record["model_version"] == digest.hexdigest()[:16]
    assert record["filename"] == "bus.jpg"
    assert (record["width"], record["height"]) == (810, 1080)
    assert record["model"] == "service-6cls"  # the model's name: its cfg's, by default
    assert record["inference_ms"] > 0
    assert record["sha256"] == hashlib.sha256(portrait_jpeg).hexdigest()
    assert record["detections"], "random weights at conf 0.2 should give boxes"
    names = (test_config.default_model.names.read_text().split())
    for det in record["detections"]:
        assert set(det) == {"label", "class_id", "confidence", "box"}
        assert det["label"] == names[det["class_id"]]
        assert det["confidence"] >= CONF
        box = det["box"]
        assert 0 <= box["x1"] <= box["x2"] <= 810 and 0 <= box["y1"] <= box["y2"] <= 1080

    # Committed before the response: readable through the API and the database.
    stored = await client.get(f"/api/detections/{record['id']}")
    assert stored.status == 200
    assert await stored.json() == {**record, "review": None}  # not reviewed yet
    pool = client.server.app[keys.db_key]
    assert await pool.fetchval("SELECT count(*) FROM detections") == 1


async def test_detections_match_the_engine_in_process(client: Any, landscape_jpeg: bytes,
                                                      test_config: Config) -> None:
    """What comes back through the pool equals running the workers' pipeline here."""
    from model.inference import Detector
    from model.preprocess import decode_for_network

    paths = test_config.default_model
    img_size = test_config.workers.img_size
    detector = Detector.load(paths.cfg, paths.weights, paths.names, img_size=img_size,
                             device="cpu")
    decoded = decode_for_network(landscape_jpeg, None, img_size)
    assert decoded.scale_x > 1  # 1280x720 at 128: the reduced decode is what runs
    want = [d.to_json() for d in
            detector.detect_decoded([decoded], conf_thres=CONF, iou_thres=0.45)[0]]
    response = await client.post(f"/detect?conf={CONF}&iou=0.45", data=landscape_jpeg,
                                 headers={"Content-Type": "image/jpeg"})
    assert response.status == 200
    got = (await response.json())["detections"]
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g["label"] == w["label"] and g["class_id"] == w["class_id"]
        assert g["confidence"] == pytest.approx(w["confidence"], abs=1e-3)
        for k in ("x1", "y1", "x2", "y2"):
            assert g["box"][k] == pytest.approx(w["box"][k], abs=0.05)


async def test_conf_threshold_is_applied(client: Any, portrait_jpeg: bytes) -> None:
    low = await (await client.post("/detect?conf=0.05", data=portrait_jpeg,
                                   headers={"Content-Type": "image/jpeg"})).json()
    high = await (await client.post("/detect?conf=0.99", data=portrait_jpeg,
                                    headers={"Content-Type": "image/jpeg"})).json()
    assert len(low["detections"]) > len(high["detections"])
    assert all(d["confidence"] >= 0.99 for d in high["detections"])


@pytest.mark.parametrize("kind", ["png", "bmp", "webp", "jpeg"])
async def test_raw_body_formats(client: Any, small_bgr: np.ndarray, kind: str) -> None:
    data = webp_bytes(small_bgr) if kind == "webp" else encode(small_bgr, f".{kind.replace('jpeg', 'jpg')}")
    response = await client.post("/detect?filename=cam%2F..%2Fshot.x", data=data,
                                 headers={"Content-Type": f"image/{kind}"})
    assert response.status == 200, await response.text()
    record = await response.json()
    assert (record["width"], record["height"]) == (200, 160)
    assert record["filename"] == "shot.x"  # path components dropped
    image = await client.get(f"/detections/{record['id']}/image")
    assert image.status == 200
    assert image.content_type == f"image/{kind}"
    assert await image.read() == data


async def test_several_images_give_results(client: Any, portrait_jpeg: bytes, small_bgr: np.ndarray) -> None:
    png = encode(small_bgr, ".png")
    response = await client.post("/detect", data=form(("a.jpg", portrait_jpeg, "image/jpeg"),
                                                      ("b.png", png, "image/png"),
                                                      ("c.jpg", portrait_jpeg, "application/octet-stream")))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == {"results"}
    results = body["results"]
    assert [r["filename"] for r in results] == ["a.jpg", "b.png", "c.jpg"]
    assert len({r["id"] for r in results}) == 3
    assert results[0]["sha256"] == results[2]["sha256"] != results[1]["sha256"]
    pool = client.server.app[keys.db_key]
    assert await pool.fetchval("SELECT count(*) FROM detections") == 3
    assert await pool.fetchval("SELECT count(*) FROM images") == 2  # deduplicated by sha256

    # Posted again in a request of its own (its write-ahead finds the image stored): a new
    # record, still one row per image, and the record's image is the original.
    again = await client.post("/detect", data=portrait_jpeg, headers={"Content-Type": "image/jpeg"})
    assert again.status == 200, await again.text()
    record = await again.json()
    assert record["sha256"] == results[0]["sha256"] and record["id"] not in {r["id"] for r in results}
    assert await pool.fetchval("SELECT count(*) FROM detections") == 4
    assert await pool.fetchval("SELECT count(*) FROM images") == 2
    assert await (await client.get(f"/detections/{record['id']}/image")).read() == portrait_jpeg


async def test_one_bad_image_fails_the_request_and_stores_nothing(client: Any, portrait_jpeg: bytes) -> None:
    response = await client.post("/detect", data=form(("good.jpg", portrait_jpeg, "image/jpeg"),
                                                      ("bad.jpg", portrait_jpeg[:5000], "image/jpeg")))
    body = await assert_error(response, 400, "invalid_image")
    assert "bad.jpg" in body["error"]["message"]
    assert await client.server.app[keys.db_key].fetchval("SELECT count(*) FROM detections") == 0


async def test_detect_reports_server_timing(client: Any, portrait_jpeg: bytes) -> None:
    """A detection's response says where its time went: upload, detect (the pool), the
    worker's decode and infer (parts of detect), store; in that order, in ms."""
    response = await client.post("/detect", data=form(("bus.jpg", portrait_jpeg, "image/jpeg")))
    assert response.status == 200, await response.text()
    phases = server_timing(response.headers["Server-Timing"])
    assert [name for name, _ in phases] == ["upload", "detect", "decode", "infer", "store"]
    ms = dict(phases)
    assert all(duration >= 0 for duration in ms.values())
    assert ms["decode"] > 0 and ms["infer"] > 0  # the worker's own figures came through
    assert ms["decode"] + ms["infer"] <= ms["detect"] + 0.02  # each rounded to 0.01 ms
    assert server_counts(response.headers["Server-Timing"]) == {"passes": 1}  # no tiles


async def test_undecodable_image_written_ahead_is_deleted(client: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload that sniffs as JPEG is written ahead while the worker tries it; when it
    does not decode, the request fails and the image written ahead is deleted again."""
    data = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 20
    sha256 = hashlib.sha256(data).hexdigest()
    calls: dict[str, list[list[str]]] = {"stored": [], "deleted": []}
    store_images, delete_unreferenced = db.store_images, db.delete_unreferenced_images

    async def spy_store(pool: Any, images: Any) -> list[str]:
        calls["stored"].append(result := await store_images(pool, images))
        return result

    async def spy_delete(pool: Any, sha256s: Any) -> list[str]:
        calls["deleted"].append(result := await delete_unreferenced(pool, sha256s))
        return result

    monkeypatch.setattr(db, "store_images", spy_store)
    monkeypatch.setattr(db, "delete_unreferenced_images", spy_delete)
    response = await client.post("/detect", data=data, headers={"Content-Type": "image/jpeg"})
    await assert_error(response, 400, "invalid_image")
    assert calls == {"stored": [[sha256]], "deleted": [[sha256]]}  # written ahead, then undone
    pool = client.server.app[keys.db_key]
    assert await pool.fetchval("SELECT count(*) FROM images WHERE sha256 = $1", sha256) == 0
    assert await pool.fetchval("SELECT count(*) FROM detections WHERE sha256 = $1", sha256) == 0


# ---------------------------------------------------------------- POST /detect errors

def big_png(pixels_side: int) -> bytes:
    return encode(np.zeros((pixels_side, pixels_side, 3), np.uint8), ".png")


async def test_anything_not_an_image_gets_the_same_415_whatever_the_client(client: Any) -> None:
    """The bytes decide, not the Content-Type a client sends (curl -F with or without
    ;type=, a browser, curl --data-binary): the same status and sentence for each."""
    pdf = b"%PDF-1.7\n" + b"x" * 200
    bodies: list[dict[str, Any]] = [
        {"data": form(("a.pdf", pdf, "application/pdf"))},
        {"data": form(("a.pdf", pdf, "image/jpeg"))},  # a client that guesses wrongly
        {"data": form(("a.pdf", pdf, "application/octet-stream"))},
        {"data": b"--zz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.pdf\"\r\n"
                 b"\r\n" + pdf + b"\r\n--zz--\r\n",  # no Content-Type in the part at all
         "headers": {"Content-Type": "multipart/form-data; boundary=zz"}},
        {"data": pdf, "headers": {"Content-Type": "application/pdf"}},
        {"data": pdf, "headers": {"Content-Type": "image/png"}},
        {"data": pdf, "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
    ]
    messages = set()
    for kwargs in bodies:
        body = await assert_error(await client.post("/detect", **kwargs), 415,
                                  "unsupported_media_type")
        messages.add(body["error"]["message"].split(": ", 1)[-1])
    assert messages == {NOT_AN_IMAGE}


async def test_bad_input_errors_and_the_worker_survives(client: Any, portrait_jpeg: bytes,
                                                        detector_pool: DetectorPool) -> None:
    pids = [w.pid for w in detector_pool.workers]
    jpeg = {"Content-Type": "image/jpeg"}
    noise = random.Random(2026).randbytes(5000)  # fixed: random bytes may read as a header
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"data": form(("x.jpg", portrait_jpeg, "image/jpeg"), field="file")}, 400, "missing_field"),
        ({"data": form(("t.jpg", portrait_jpeg[: len(portrait_jpeg) // 2], "image/jpeg"))}, 400, "invalid_image"),
        ({"data": portrait_jpeg[:-200], "headers": jpeg}, 400, "invalid_image"),
        ({"data": b"\x00" + noise, "headers": jpeg}, 415, "unsupported_media_type"),
        ({"data": b"\xff\xd8\xff" + noise, "headers": jpeg}, 400, "invalid_image"),
        ({"data": b"GIF89a" + noise[:100], "headers": {"Content-Type": "image/png"}}, 400, "invalid_image"),
        ({"data": b"", "headers": jpeg}, 400, "empty_image"),
        ({"data": form(("empty.jpg", b"", "image/jpeg"))}, 400, "empty_image"),
        ({"data": big_png(2100), "headers": {"Content-Type": "image/png"}}, 413, "image_too_large"),
        ({"data": io.BytesIO(b"x" * (2 * 1024 * 1024 + 1)), "headers": jpeg}, 413,
         "payload_too_large"),
        ({"data": form(("a.jpg", io.BytesIO(b"\xff" * (2 * 1024 * 1024)), "image/jpeg"))}, 413,
         "payload_too_large"),
        ({"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"data": b"{}", "headers": {"Content-Type": "application/json"}}, 415, "unsupported_media_type"),
        ({"data": form(("a.txt", b"hello", "text/plain"))}, 415, "unsupported_media_type"),
        ({"data": form(*[("a.jpg", b"\xff\xd8\xff" * 9, "image/jpeg")] * 5)}, 400, "too_many_files"),
        ({"data": b"--xyz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc",
          "headers": {"Content-Type": "multipart/form-data; boundary=xyz"}}, 400, None),
        ({"data": b"abc", "headers": {"Content-Type": "multipart/form-data"}}, 400, "bad_multipart"),
        ({"data": b"abc", "headers": {"Content-Type": "multipart/form-data; boundary=zz"}}, 400,
         "bad_multipart"),
        ({"data": b"--zz\r\nContent-Type: multipart/mixed; boundary=yy\r\n\r\n--yy\r\n\r\nx"
                  b"\r\n--yy--\r\n--zz--\r\n",
          "headers": {"Content-Type": "multipart/form-data; boundary=zz"}}, 400, "bad_multipart"),
        ({"data": b"--zz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\x01\"\r\n"
                  b"\r\nabc\r\n--zz--\r\n",
          "headers": {"Content-Type": "multipart/form-data; boundary=zz"}}, 400, "bad_multipart"),
    ]
    for kwargs, status, code in cases:
        await assert_error(await client.post("/detect", **kwargs), status, code)
    for query in ("conf=0", "conf=1.5", "conf=abc", "iou=-1", "iou=nan", "conf="
                  "0.5&iou=2"):
        await assert_error(await client.post(f"/detect?{query}", data=portrait_jpeg, headers=jpeg),
                           400, "bad_parameter")

    # Nothing was stored, the same worker is alive and still answers.
    assert await client.server.app[keys.db_key].fetchval("SELECT count(*) FROM detections") == 0
    assert [w.pid for w in detector_pool.workers] == pids and all(alive(p) for p in pids)
    response = await client.post("/detect", data=portrait_jpeg, headers=jpeg)
    assert response.status == 200


async def test_chunked_upload_over_the_limit(client: Any) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"\xff" * 65536  # 2.5 MiB in total, no Content-Length

    response = await client.post("/detect", data=body(), headers={"Content-Type": "image/jpeg"})
    await assert_error(response, 413)


async def test_unknown_routes_and_methods_are_json(client: Any) -> None:
    await assert_error(await client.get("/nope"), 404, "not_found")
    response = await client.get("/detect")
    await assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    await assert_error(await client.delete("/api/detections"), 405)


# ---------------------------------------------------------------- history API

async def seed(pool: Any, n: int) -> list[db.Record]:
    t0 = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    labels = ["go", "stop", "warning"]
    records = []
    for i in range(n):
        dets = [Detection(labels[i % 3], i % 3, 0.3 + 0.05 * (i % 10), 0.0, 0.0, 5.0, 5.0)]
        records.append(db.Record(id=uuid.uuid4(),
                                 created_at=t0 + timedelta(hours=12 * i), filename=f"f{i}.jpg",
                                 sha256=f"{i:064x}", width=10, height=10, model="m",
                                 inference_ms=1.0, detections=dets))
    await db.save_records(pool, records)
    return records


async def test_history_filters_paging_and_next_link(client: Any) -> None:
    records = await seed(client.server.app[keys.db_key], 20)
    stops = [r for r in reversed(records) if r.detections[0].label == "stop"]
    url = "/api/detections?label=stop&limit=3"
    seen = []
    while url:
        response = await client.get(url)
        assert response.status == 200
        body = await response.json()
        assert set(body) == {"items", "limit", "next_cursor", "next"}
        assert len(body["items"]) <= 3
        seen += [item["id"] for item in body["items"]]
        url = body["next"]
        if url:
            assert "label=stop" in url and "limit=3" in url and "cursor=" in url
    assert seen == [str(r.id) for r in stops]

    response = await client.get("/api/detections?since=2024-05-03&until=2024-05-04"
                                "&min_confidence=0.5")
    items = (await response.json())["items"]
    want = [r for r in reversed(records)
            if datetime(2024, 5, 3, tzinfo=timezone.utc) <= r.created_at
            < datetime(2024, 5, 5, tzinfo=timezone.utc)
            and r.detections[0].confidence >= 0.5]
    assert [i["id"] for i in items] == [str(r.id) for r in want]

    response = await client.get("/api/detections?filename=F1")  # f1, f10..f19
    assert len((await response.json())["items"]) == 11

    response = await client.get("/api/detections?since=2024-05-02T00:00:00%2B02:00&limit=200")
    cut = datetime(2024, 5, 1, 22, tzinfo=timezone.utc)
    assert len((await response.json())["items"]) == sum(r.created_at >= cut for r in records)


@pytest.mark.parametrize("query", [
    "limit=0", "limit=201", "limit=x", "cursor=garbage", "since=yesterday", "until=2024-13-01",
    "min_confidence=2", "min_confidence=-0.1", "since=2024-05-02&until=2024-05-01",
    "label=" + "x" * 201,
])
async def test_history_bad_parameters(client: Any, query: str) -> None:
    await assert_error(await client.get(f"/api/detections?{query}"), 400, "bad_parameter")


async def test_stats(client: Any) -> None:
    await seed(client.server.app[keys.db_key], 9)
    body = await (await client.get("/api/stats")).json()
    assert body["records"] == 9 and body["boxes"] == 9
    assert {c["label"]: c["records"] for c in body["labels"]} == {"go": 3, "stop": 3, "warning": 3}
    assert [d["day"] for d in body["days"]] == ["2024-05-01", "2024-05-02", "2024-05-03",
                                                "2024-05-04", "2024-05-05"]
    assert [d["records"] for d in body["days"]] == [1, 2, 2, 2, 2]  # 12:00, then every 12 h
    body = await (await client.get("/api/stats?since=2024-05-03&until=2024-05-03")).json()
    assert body["records"] == 2
    # Every history filter applies; a time inside a day counts that part of the day.
    body = await (await client.get("/api/stats?label=go")).json()
    assert body["records"] == 3 and [c["label"] for c in body["labels"]] == ["go"]
    body = await (await client.get("/api/stats?since=2024-05-03T12:00:00Z")).json()
    assert body["records"] == sum(d["records"] for d in body["days"]) == 5
    await assert_error(await client.get("/api/stats?since=nope"), 400, "bad_parameter")


@pytest.mark.parametrize("path", ["/api/detections", "/api/stats"])
async def test_unknown_label_is_400_with_the_known_labels(client: Any, path: str) -> None:
    await seed(client.server.app[keys.db_key], 3)
    response = await client.get(f"{path}?label=nosuch")
    await assert_error(response, 400, "unknown_label")
    error = (await response.json())["error"]
    served = (BASE_DIR / "tests/data/service-6cls.names").read_text().split()
    assert error["known_labels"][:len(served)] == served
    assert "nosuch" in error["message"] and "go, stop" in error["message"]


async def test_unknown_ids_are_404(client: Any) -> None:
    for path in ("/api/detections/00000000-0000-0000-0000-000000000000",
                 "/api/detections/not-a-uuid",
                 "/detections/00000000-0000-0000-0000-000000000000/image",
                 "/detections/12345/image?annotated=1"):
        await assert_error(await client.get(path), 404, "not_found")


# ---------------------------------------------------------------- images

async def test_annotated_image(client: Any, portrait_jpeg: bytes) -> None:
    record = await (await client.post(f"/detect?conf={CONF}", data=portrait_jpeg,
                                      headers={"Content-Type": "image/jpeg"})).json()
    assert record["detections"]
    original = await client.get(f"/detections/{record['id']}/image")
    assert await original.read() == portrait_jpeg
    response = await client.get(f"/detections/{record['id']}/image?annotated=1")
    assert response.status == 200 and response.content_type == "image/jpeg"
    drawn = cv2.imdecode(np.frombuffer(await response.read(), np.uint8), cv2.IMREAD_COLOR)
    plain = cv2.imdecode(np.frombuffer(portrait_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == plain.shape
    # Boxes were drawn: the pixels along the first box's top edge changed a lot.
    box = record["detections"][0]["box"]
    y, x1, x2 = int(box["y1"]) + 1, int(box["x1"]) + 2, int(box["x2"]) - 2
    if x2 - x1 > 4 and 0 < y < plain.shape[0]:
        diff = np.abs(drawn[y, x1:x2].astype(int) - plain[y, x1:x2].astype(int)).mean()
        assert diff > 20
    await assert_error(await client.get(f"/detections/{record['id']}/image?annotated=maybe"), 400)


async def test_storing_images_can_be_switched_off(make_config: Any, detector_pool: DetectorPool,
                                                  portrait_jpeg: bytes, aiohttp_client: Any) -> None:
    config = make_config({"storage": {"store_images": False}})
    client = await aiohttp_client(await init_app(config, detector_pool=detector_pool))
    record = await (await client.post("/detect", data=portrait_jpeg,
                                      headers={"Content-Type": "image/jpeg"})).json()
    assert (await client.get(f"/api/detections/{record['id']}")).status == 200
    await assert_error(await client.get(f"/detections/{record['id']}/image"), 404, "not_found")
    assert await client.server.app[keys.db_key].fetchval("SELECT count(*) FROM images") == 0


# ---------------------------------------------------------------- health and lifecycle

async def test_health_and_readiness(client: Any, detector_pool: DetectorPool) -> None:
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    response = await client.get("/readyz")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ready"
    assert body["checks"] == {"workers": "ready", "database": "ok", "storage": "ok"}
    assert [w["pid"] for w in body["workers"]] == [w.pid for w in detector_pool.workers]


async def test_not_ready_until_workers_are_warm(test_config: Config, portrait_jpeg: bytes,
                                                aiohttp_client: Any) -> None:
    cold = DetectorPool(test_config.workers, max_pixels=test_config.server.max_pixels,
                        model=test_config.default_model)
    client = await aiohttp_client(await init_app(test_config, detector_pool=cold))
    response = await client.get("/readyz")
    body = await assert_error(response, 503, "not_ready")
    assert body["checks"] == {"workers": "new", "database": "ok", "storage": "ok"}
    assert response.headers["Retry-After"]
    response = await client.post("/detect", data=portrait_jpeg, headers={"Content-Type": "image/jpeg"})
    await assert_error(response, 503, "not_ready")
    assert response.headers["Retry-After"]
    assert (await client.get("/healthz")).status == 200


async def test_restart_keeps_history(test_config: Config, detector_pool: DetectorPool,
                                     portrait_jpeg: bytes, aiohttp_client: Any) -> None:
    first = await aiohttp_client(await init_app(test_config, detector_pool=detector_pool))
    record = await (await first.post("/detect", data=portrait_jpeg,
                                     headers={"Content-Type": "image/jpeg"})).json()
    await first.close()  # runs the app's cleanup: asyncpg pool closed
    second = await aiohttp_client(await init_app(test_config, detector_pool=detector_pool))
    response = await second.get(f"/api/detections/{record['id']}")
    assert response.status == 200
    assert await response.json() == {**record, "review": None}
    assert await (await second.get(f"/detections/{record['id']}/image")).read() == portrait_jpeg


@pytest.mark.parametrize("name", ["1x1", "gray", "rgba", "16bit", "wide"])
async def test_odd_but_valid_images(client: Any, name: str) -> None:
    rng = np.random.default_rng(0)
    image = {
        "1x1": np.full((1, 1, 3), 200, np.uint8),
        "gray": rng.integers(0, 255, (50, 70), dtype=np.uint8),
        "rgba": rng.integers(0, 255, (40, 30, 4), dtype=np.uint8),
        "16bit": rng.integers(0, 65535, (30, 40, 3), dtype=np.uint16),
        "wide": rng.integers(0, 255, (3, 900, 3), dtype=np.uint8),
    }[name]
    response = await client.post("/detect?conf=0.01", data=encode(image, ".png"),
                                 headers={"Content-Type": "image/png"})
    assert response.status == 200, await response.text()
    record = await response.json()
    assert (record["height"], record["width"]) == image.shape[:2]
    for det in record["detections"]:
        box = det["box"]
        assert 0 <= box["x1"] <= box["x2"] <= image.shape[1]
        assert 0 <= box["y1"] <= box["y2"] <= image.shape[0]


@pytest.mark.parametrize("query", [
    "since=9999-12-31T23:59:59-23:59",
    "until=0001-01-01T00:00:00%2B14:00",
    "until=9999-12-31",
    "since=0001-01-01T00:00:00%2B00:01",
])
@pytest.mark.parametrize("path", ["/api/detections", "/api/stats", "/history"])
async def test_timestamps_at_the_edges_of_their_range_are_400(client: Any, path: str,
                                                              query: str) -> None:
    response = await client.get(f"{path}?{query}")
    assert response.status == 400, await response.text()


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"])
async def test_cursors_at_the_edges_of_the_time_range_are_400(client: Any, stamp: str) -> None:
    token = base64.urlsafe_b64encode(f"{stamp}|{uuid.uuid4()}".encode()).decode().rstrip("=")
    for path in ("/api/detections", "/history"):
        response = await client.get(f"{path}?cursor={token}")
        assert response.status == 400, await response.text()


@pytest.mark.parametrize("value", ["²", "١٢", "1_0", "0x10", "-1"])
async def test_integers_are_ascii_digits_only(client: Any, value: str) -> None:
    """"²" is a digit to str.isdigit() but not to int(): it was a 500 (found by fuzzing)."""
    responses = [await client.get("/api/detections", params={"limit": value}),
                 await client.post("/detect", params={"max_det": value}, data=b"x",
                                   headers={"Content-Type": "image/jpeg"})]
    for response in responses:
        assert response.status == 400, await response.text()
        assert (await response.json())["error"]["code"] == "bad_parameter"
