"""GET /api/export and ``python -m service.export``: a zip streamed from the history, in
Darknet's layout (checked against Darknet's own rules: obj.data keys, the images ->
labels path rule, ``class cx cy w h`` relative) and in COCO (loaded by pycocotools):
real app, real PostgreSQL."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

import db
from service.export.__main__ import main as export_main
from service.web import keys
from tests.helpers import webp_bytes
from tests.service.web.test_api import assert_error
from tests.service.web.test_review import PHOTO, review_body, save

NAMES = ["go", "stop", "stopLeft", "goLeft", "warning", "warningLeft"]  # service-6cls.names


async def history(client: Any) -> dict[str, db.Record]:
    """Four records: reviewed (a relabel and a drawn box), unreviewed (0.9 and 0.4
    boxes), unreviewed whose image was not kept, and one sent as WebP."""
    app = client.server.app
    reviewed, unreviewed = await save(app, [[0.9, 0.8], [0.9, 0.4]])
    gone, = await save(app, [[0.95]], store=False)
    gone = await _with_sha(app, gone, "0" * 64)
    webp = await _webp_record(app)
    await client.put(f"/api/detections/{reviewed.id}/review",
                     json=review_body(("go", 100, 200, 140, 300), ("warning", 400, 500, 500, 700)))
    return {"reviewed": reviewed, "unreviewed": unreviewed, "gone": gone, "webp": webp}


async def _with_sha(app: Any, record: db.Record, sha: str) -> db.Record:
    await app[keys.db_key].execute("UPDATE detections SET sha256 = $1 WHERE id = $2", sha,
                                   record.id)
    return record


async def _webp_record(app: Any) -> db.Record:
    import hashlib
    from datetime import datetime, timezone

    from model.detection import Detection

    image = cv2.imdecode(np.frombuffer(PHOTO, np.uint8), cv2.IMREAD_COLOR)
    data = webp_bytes(cv2.resize(image, (300, 400)))
    sha = hashlib.sha256(data).hexdigest()
    record = db.Record(id=uuid.uuid4(), created_at=datetime.now(timezone.utc), filename="w.webp",
                       sha256=sha, width=300, height=400, model=app[keys.config_key]
                       .default_model.name, inference_ms=3.0,
                       detections=[Detection("stop", 1, 0.7, 30, 40, 90, 200)])
    await db.save_records(app[keys.db_key], [record], [db.StoredImage(sha, "image/webp", data)])
    return record


async def download(client: Any, query: str) -> zipfile.ZipFile:
    response = await client.get(f"/api/export?{query}")
    assert response.status == 200, await response.text()
    assert response.content_type == "application/zip"
    assert "attachment" in response.headers["Content-Disposition"]
    assert "Content-Length" not in response.headers  # streamed, not built first
    return zipfile.ZipFile(io.BytesIO(await response.read()))


def manifest(archive: zipfile.ZipFile) -> dict[str, dict[str, Any]]:
    lines = archive.read("manifest.jsonl").decode().splitlines()
    return {line["id"]: line for line in map(json.loads, lines)}


def darknet_labels(archive: zipfile.ZipFile, image_path: str) -> list[float]:
    # Darknet (src/utils.c replace_image_to_label): "images" -> "labels", ext -> ".txt".
    label_path = image_path.replace("images/", "labels/").rsplit(".", 1)[0] + ".txt"
    return [float(v) for line in archive.read(label_path).decode().splitlines()
            for v in line.split()]


async def test_yolo_export_is_darknet_layout(client: Any) -> None:
    recs = await history(client)
    archive = await download(client, "format=yolo&min_confidence=0.5")
    names = archive.read("obj.names").decode().splitlines()
    assert names == NAMES  # the model's classes, in its order
    data = dict(line.split(" = ") for line in archive.read("obj.data").decode().splitlines())
    assert data == {"classes": "6", "train": "train.txt", "valid": "valid.txt",
                    "names": "obj.names", "backup": "backup/"}
    listed = archive.read("train.txt").decode().split() + archive.read("valid.txt").decode().split()
    entries = manifest(archive)
    assert sorted(listed) == sorted(e["file"] for e in entries.values() if "file" in e)
    assert len(listed) == 3 and all(name in archive.namelist() for name in listed)

    # Reviewed: the review's boxes (relabelled, drawn), relative to the 810x1080 image.
    review = entries[str(recs["reviewed"].id)]
    assert (review["source"], review["boxes"], review["reviewer"]) == ("review", 2, None)
    rows = darknet_labels(archive, review["file"])
    assert rows == pytest.approx([0, 120 / 810, 250 / 1080, 40 / 810, 100 / 1080,
                                  4, 450 / 810, 600 / 1080, 100 / 810, 200 / 1080], abs=1e-6)
    # Unreviewed: the model's boxes at or above min_confidence, marked as model output.
    model = entries[str(recs["unreviewed"].id)]
    assert (model["source"], model["boxes"]) == ("model", 1)
    assert darknet_labels(archive, model["file"]) == \
        pytest.approx([1, 120 / 810, 250 / 1080, 40 / 810, 100 / 1080], abs=1e-6)
    assert archive.read(model["file"]) == PHOTO  # an upright JPEG goes as stored
    # Not kept: listed, left out.
    gone = entries[str(recs["gone"].id)]
    assert "file" not in gone and "not kept" in gone["left_out"]
    # WebP: written as a JPEG that Darknet reads, of the record's size.
    webp = entries[str(recs["webp"].id)]
    assert webp["file"].endswith(".jpg")
    pixels = cv2.imdecode(np.frombuffer(archive.read(webp["file"]), np.uint8), cv2.IMREAD_COLOR)
    assert pixels.shape[:2] == (400, 300)
    summary = json.loads(archive.read("export.json"))
    assert (summary["records"], summary["images"], summary["reviewed"], summary["left_out"]) == \
        (4, 3, 1, 1)


async def test_coco_export_loads_in_pycocotools(client: Any, tmp_path: Path) -> None:
    recs = await history(client)
    archive = await download(client, "format=coco")
    archive.extractall(tmp_path)
    coco = COCO(str(tmp_path / "annotations" / "instances.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == NAMES
    images = {img["record_id"]: img for img in coco.loadImgs(coco.getImgIds())}
    assert set(images) == {str(recs[k].id) for k in ("reviewed", "unreviewed", "webp")}
    for img in images.values():
        assert (tmp_path / "images" / img["file_name"]).is_file()
    reviewed = images[str(recs["reviewed"].id)]
    assert reviewed["source"] == "review"
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[reviewed["id"]]))
    assert [(coco.loadCats(a["category_id"])[0]["name"], a["bbox"]) for a in anns] == \
        [("go", [100, 200, 40, 100]), ("warning", [400, 500, 100, 200])]
    assert all("score" not in a for a in anns)
    model = images[str(recs["unreviewed"].id)]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[model["id"]]))
    # No min_confidence: every detection the model kept, with its score.
    assert sorted(a["score"] for a in anns) == pytest.approx([0.4, 0.9])


async def test_export_takes_the_history_filters(client: Any) -> None:
    recs = await history(client)
    archive = await download(client, "format=yolo&reviewed=yes")
    assert list(manifest(archive)) == [str(recs["reviewed"].id)]
    archive = await download(client, "format=yolo&reviewed=no&label=stop&min_confidence=0.75")
    assert set(manifest(archive)) == {str(recs["unreviewed"].id), str(recs["gone"].id)}
    # min_confidence leaves no reviewed record out: the review is the truth.
    archive = await download(client, "format=coco&min_confidence=0.99")
    assert list(manifest(archive)) == [str(recs["reviewed"].id)]
    empty = await download(client, "format=yolo&since=2001-01-01&until=2001-01-02")
    assert empty.read("train.txt") == b"" and empty.read("manifest.jsonl") == b""

    await assert_error(await client.get("/api/export?format=voc"), 400, "bad_parameter")
    await assert_error(await client.get("/api/export?label=nosuch"), 400, "unknown_label")
    await assert_error(await client.get("/api/export?reviewed=maybe"), 400, "bad_parameter")


async def test_export_command_writes_the_same_zip(client: Any, test_config: Any,
                                                  tmp_path: Path) -> None:
    recs = await history(client)
    config_file = tmp_path / "config.yaml"
    postgres = test_config.postgres
    config_file.write_text(json.dumps({  # YAML reads JSON
        "postgres": {"embedded": False, "host": postgres.host, "port": postgres.port,
                     "database": postgres.database, "user": postgres.user},
        "workers": {"model_path": {"cfg": "tests/data/service-6cls.cfg",
                                   "weights": str(test_config.default_model.weights),
                                   "data": "tests/data/service-6cls.names"}}}))
    out = tmp_path / "reviewed.zip"
    code = await _run_cli(["--config", str(config_file), "--format", "yolo",
                           "--reviewed", "yes", "--out", str(out), "--quiet"])
    assert code == 0
    with zipfile.ZipFile(out) as archive:
        assert list(manifest(archive)) == [str(recs["reviewed"].id)]
        assert archive.read("obj.names").decode().splitlines() == NAMES
    assert await _run_cli(["--config", str(config_file), "--reviewed", "maybe",
                           "--out", str(out)]) == 2


async def _run_cli(argv: list[str]) -> int:
    import asyncio

    # The command runs its own event loop: in a thread, as from a shell.
    return await asyncio.to_thread(export_main, argv)


async def test_the_zip_goes_out_as_it_is_made(client: Any) -> None:
    from service.export import run

    app = client.server.app
    await save(app, [[0.9]] * 6)
    chunks: list[bytes] = []

    async def write(chunk: bytes) -> None:
        chunks.append(chunk)

    async with app[keys.db_key].acquire() as conn, \
            conn.transaction(isolation="repeatable_read", readonly=True):
        plan = await run.plan(conn, db.HistoryFilter(), NAMES)
        await run.write_export(conn, db.HistoryFilter(), "yolo", plan, write)
    # Each image leaves on its own: no chunk holds more than one (and its label file).
    assert sum(len(c) >= len(PHOTO) for c in chunks) == 6
    assert max(len(c) for c in chunks) < len(PHOTO) + 4096
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert archive.testzip() is None and len(archive.read("train.txt").split()) + \
        len(archive.read("valid.txt").split()) == 6
