"""End to end with the shipped default model: generated traffic-light scenes go in
through HTTP, the right lights come out, and the records are found again in history."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from main import init_app
from model.train.scenes import make_scene
from service.workers.pool import DetectorPool
from settings import BASE_DIR, Config, load_config
from tests.helpers import encode
from tests.service.conftest import shared_pool
from tests.helpers import form

SCENE_SEED = 777_001  # held out: neither a training, validation nor evaluation seed
SCENES = 10


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def default_pool(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DetectorPool]:
    """One warm worker running the model that config/config.yaml ships with, on the
    backend it ships with (ONNX Runtime on a CPU); the export goes to a temp dir."""
    onnx_dir = tmp_path_factory.mktemp("onnx")
    config = load_config(BASE_DIR / "config" / "config.yaml", env={},
                         overrides={"workers": {"max_workers": 1,
                                                "onnx_cache_dir": str(onnx_dir)}})
    async for pool in shared_pool(config, model=config.default_model):
        yield pool


@pytest.fixture
async def default_client(make_config: Callable[..., Config], default_pool: DetectorPool,
                         aiohttp_client: Any) -> Any:
    """The test database, serving the shipped model (its pool) with its settings."""
    model = default_pool.model
    entry = {"cfg": str(model.cfg), "weights": str(model.weights), "names": str(model.names),
             "img_size": model.img_size, "conf_thres": model.conf_thres,
             "iou_thres": model.iou_thres, "agnostic_nms": model.agnostic_nms,
             "tiles": str(model.tiles)}
    app = await init_app(make_config(models={model.name: entry}), detector_pool=default_pool)
    return await aiohttp_client(app)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


async def test_shipped_model_finds_the_lights(default_client: Any) -> None:
    names = ["go", "stop", "stopLeft", "goLeft", "warning", "warningLeft"]
    found = total = false_positives = 0
    ids = []
    for index in range(SCENES):
        scene = make_scene(SCENE_SEED, index, 480, 640, light_px=(24.0, 120.0))
        resp = await default_client.post("/detect", data=form((f"scene{index}.jpg", encode(scene.image, ".jpg"), "image/jpeg")))
        assert resp.status == 200, await resp.text()
        record = await resp.json()
        ids.append(record["id"])
        boxes = [np.array([d["box"][k] for k in ("x1", "y1", "x2", "y2")])
                 for d in record["detections"]]
        matched = set()
        for cls, truth in zip(scene.classes.tolist(), scene.boxes):
            total += 1
            for j, det in enumerate(record["detections"]):
                if j not in matched and det["label"] == names[cls] and _iou(boxes[j], truth) >= 0.5:
                    matched.add(j)
                    found += 1
                    break
        false_positives += len(record["detections"]) - len(matched)
    assert total >= 10
    # A guard against a broken model or pipeline, not the accuracy target (that is
    # python -m model.train.evaluate, model/data/README.md). The shipped model, trained
    # on real photos too since 2026-12, finds 20 of these 31 generated lights at the
    # default conf 0.5 (the generated-only model before it: 25 or more); a broken
    # pipeline finds none.
    assert found / total >= 0.55, f"found {found} of {total} lights"
    assert false_positives <= total * 0.4, f"{false_positives} false positives for {total} lights"

    # Every answered record is in the history, and a label filter finds it.
    label = names[int(make_scene(SCENE_SEED, 0, 480, 640, light_px=(24.0, 120.0)).classes[0])]
    resp = await default_client.get("/api/detections", params={"label": label, "limit": 50})
    listed = {item["id"] for item in (await resp.json())["items"]}
    assert ids[0] in listed
    for record_id in ids:
        assert (await default_client.get(f"/api/detections/{record_id}")).status == 200
