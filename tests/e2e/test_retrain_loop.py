"""The loop a user runs to improve a model from the history, end to end on a few
records and a tiny network: detect (POST /detect), review (PUT .../review), export
(GET /api/export, Darknet layout), retrain (``python -m model.train --data``, the real
training code on tests/data/tiny.cfg), and serve the new checkpoint (a warm worker of
it answers POST /detect). Real PostgreSQL, real worker processes, real photos (CINTA,
tests/data/real/CREDITS.md)."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from main import init_app
from service.workers.pool import DetectorPool
from settings import BASE_DIR, load_config
from tests.helpers import form
from tests.service.conftest import TINY_CFG, shared_pool, two_models
from tests.paths import DATA_DIR, TEST_CONFIG

PHOTOS = sorted((DATA_DIR / "real").glob("cinta-*.jpg"))[:6]
CINTA = {0: "green", 1: "red"}  # CINTA's classes; yellow (2) is not a class of tiny.cfg


def truth(photo: Path, width: int, height: int) -> list[dict[str, Any]]:
    """The photo's CINTA labels as review boxes, in its pixels."""
    boxes = []
    for line in photo.with_suffix(".txt").read_text().splitlines():
        cls, cx, cy, w, h = line.split()
        if int(cls) not in CINTA:
            continue
        cx, cy, w, h = float(cx) * width, float(cy) * height, float(w) * width, float(h) * height
        boxes.append({"label": CINTA[int(cls)], "box": {
            "x1": max(0.0, cx - w / 2), "y1": max(0.0, cy - h / 2),
            "x2": min(width, cx + w / 2), "y2": min(height, cy + h / 2)}})
    return boxes


async def test_history_to_reviewed_export_to_new_checkpoint_to_served_model(
        two_model_client: Any, make_config: Any, model_weights: Path, tiny_weights: Path,
        detector_pool: DetectorPool, aiohttp_client: Any, tmp_path: Path) -> None:
    client = two_model_client
    # 1. The model's output, kept in the history.
    reviewed = 0
    for photo in PHOTOS:
        response = await client.post("/detect?model=colours&conf=0.05",
                                     data=form((photo.name, photo.read_bytes(), "image/jpeg")))
        assert response.status == 200, await response.text()
        record = await response.json()
        # 2. A person's truth for it.
        boxes = truth(photo, record["width"], record["height"])
        response = await client.put(f"/api/detections/{record['id']}/review",
                                    json={"boxes": boxes})
        assert response.status == 200, await response.text()
        reviewed += 1

    # 3. The reviewed records, exported in Darknet's layout.
    response = await client.get("/api/export?format=yolo&model=colours&reviewed=yes")
    assert response.status == 200, await response.text()
    export = tmp_path / "export"
    zipfile.ZipFile(io.BytesIO(await response.read())).extractall(export)
    assert (export / "obj.names").read_text().split() == ["red", "green"]  # tiny.names' order
    listed = (export / "train.txt").read_text().split() + (export / "valid.txt").read_text().split()
    assert len(listed) == reviewed

    # 4. A new checkpoint from it: the real training code, two short epochs.
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "model.train", "--cfg", str(TINY_CFG), "--data", str(export),
         "--out", str(run), "--init", str(tiny_weights), "--epochs", "2", "--batch", "3",
         "--img-size", "64", "--workers", "0", "--threads", "1", "--warmup", "2"],
        cwd=BASE_DIR, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{len(listed) - len((export / 'valid.txt').read_text().split())} training images" \
        in result.stderr
    assert result.stderr.count("data mAP50") == 2
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()

    # 5. Served: the checkpoint with the export's names, as a model of the service.
    overrides = two_models(model_weights, tiny_weights)
    overrides["models"]["retrained"] = {"cfg": str(TINY_CFG), "weights": str(run / "best.pt"),
                                        "names": str(export / "obj.names"), "img_size": 64,
                                        "conf_thres": 0.01}
    pool_config = load_config(TEST_CONFIG, env={}, overrides=overrides)
    async for pool in shared_pool(pool_config, model=pool_config.model("retrained")):
        # A second app beside the first: its own spool directory.
        overrides["storage"] = {"spool_dir": str(tmp_path / "spool-served")}
        app = await init_app(make_config(overrides),
                             model_pools={"service-6cls": detector_pool, "retrained": pool})
        served = await aiohttp_client(app)
        response = await served.post("/detect?model=retrained",
                                     data=form((PHOTOS[0].name, PHOTOS[0].read_bytes(),
                                                "image/jpeg")))
        assert response.status == 200, await response.text()
        answer = await response.json()
        assert answer["model"] == "retrained"
        assert {d["label"] for d in answer["detections"]} <= {"red", "green"}
        await served.close()
