"""Several models at once: ?model= on /detect, /api/models, history and stats by model,
/readyz per model, and the config's models: section."""

from __future__ import annotations

from typing import Any

import pytest

from settings import ConfigError
from tests.configs import load_test_config
from tests.helpers import form

JPEG = {"Content-Type": "image/jpeg"}


async def test_api_models_lists_both_with_their_settings(two_model_client: Any) -> None:
    response = await two_model_client.get("/api/models")
    assert response.status == 200
    body = await response.json()
    assert body["default"] == "service-6cls"
    by_name = {m["name"]: m for m in body["models"]}
    assert list(by_name) == ["service-6cls", "colours"]
    colours = by_name["colours"]
    assert colours["classes"] == ["red", "green"] and colours["img_size"] == 64
    assert colours["agnostic_nms"] is True and colours["default"] is False
    assert colours["ready"] is True and colours["workers"] == 1
    assert colours["backend"] == "torch" and colours["cfg"] == "tiny.cfg"
    assert colours["precision"] == "fp32"
    assert len(by_name["service-6cls"]["classes"]) == 6


async def test_detect_picks_the_model_and_records_carry_it(two_model_client: Any,
                                                           portrait_jpeg: bytes) -> None:
    default = await (await two_model_client.post("/detect?conf=0.05", data=portrait_jpeg,
                                                 headers=JPEG)).json()
    colours = await two_model_client.post("/detect?model=colours", data=portrait_jpeg,
                                          headers=JPEG)
    assert colours.status == 200, await colours.text()
    colours_record = await colours.json()
    assert default["model"] == "service-6cls" and colours_record["model"] == "colours"
    assert {d["label"] for d in colours_record["detections"]} <= {"red", "green"}
    assert colours_record["detections"], "random weights at conf 0.05 give boxes"

    listed = await (await two_model_client.get("/api/detections?model=colours")).json()
    assert [item["id"] for item in listed["items"]] == [colours_record["id"]]
    stats = await (await two_model_client.get("/api/stats?model=colours")).json()
    assert stats["records"] == 1
    assert stats["boxes"] == len(colours_record["detections"])
    assert {label["label"] for label in stats["labels"]} <= {"red", "green"}
    everything = await (await two_model_client.get("/api/stats")).json()
    assert everything["records"] == 2


async def test_agnostic_nms_and_max_det_reach_the_engine(two_model_client: Any,
                                                         landscape_jpeg: bytes,
                                                         test_config: Any) -> None:
    from model.inference import Detector
    from model.preprocess import decode_for_network

    model = test_config.default_model
    detector = Detector.load(model.cfg, model.weights, model.names, img_size=model.img_size,
                             device="cpu")
    decoded = decode_for_network(landscape_jpeg, None, model.img_size)

    async def check(agnostic: bool, max_det: int) -> list[dict[str, Any]]:
        response = await two_model_client.post(
            f"/detect?conf=0.01&iou=0.05&agnostic={int(agnostic)}&max_det={max_det}",
            data=landscape_jpeg, headers=JPEG)
        assert response.status == 200, await response.text()
        got = (await response.json())["detections"]
        want = detector.detect_decoded([decoded], 0.01, 0.05, agnostic=agnostic,
                                       max_det=max_det)[0]
        assert [(d["label"], d["confidence"]) for d in got] \
            == [(d.label, d.confidence) for d in want]
        return got

    per_class = await check(False, 10_000)
    agnostic = await check(True, 10_000)
    assert len(agnostic) < len(per_class)  # overlapping boxes of different classes merged
    assert len(await check(False, 3)) == 3


@pytest.mark.parametrize("query,status,code", [
    ("model=nosuch", 404, "unknown_model"),
    ("max_det=0", 400, "bad_parameter"),
    ("agnostic=maybe", 400, "bad_parameter"),
])
async def test_bad_model_parameters(two_model_client: Any, portrait_jpeg: bytes, query: str,
                                    status: int, code: str) -> None:
    response = await two_model_client.post(f"/detect?{query}", data=form(
        ("a.jpg", portrait_jpeg, "image/jpeg")))
    assert response.status == status
    assert (await response.json())["error"]["code"] == code


async def test_readyz_reports_every_model(two_model_client: Any) -> None:
    body = await (await two_model_client.get("/readyz")).json()
    assert body["status"] == "ready" and body["model"] == "service-6cls"
    versions = {name: model.pop("version") for name, model in body["models"].items()}
    assert body["models"] == {"service-6cls": {"state": "ready", "ready": True, "error": None},
                              "colours": {"state": "ready", "ready": True, "error": None}}
    assert all(len(v) == 16 for v in versions.values()) and len(set(versions.values())) == 2


async def test_a_model_that_cannot_load_does_not_take_the_others_down(
        make_config: Any, model_weights: Any, tmp_path: Any, aiohttp_client: Any,
        portrait_jpeg: bytes) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    config = make_config(models={
        "good": {"cfg": "tests/data/service-6cls.cfg", "weights": str(model_weights),
                 "names": "tests/data/service-6cls.names"},
        "broken": {"cfg": "tests/data/service-6cls.cfg", "weights": str(broken),
                   "names": "tests/data/service-6cls.names"},
    })
    from main import init_app
    from service.web import keys

    client = await aiohttp_client(await init_app(config))
    await client.server.app[keys.warmup_task_key]
    ready = await (await client.get("/readyz")).json()
    assert ready["status"] == "degraded"
    assert ready["models"]["good"]["ready"] is True
    assert ready["models"]["broken"]["state"] == "failed"
    assert "broken.pt" in ready["models"]["broken"]["error"]
    ok = await client.post("/detect?model=good", data=portrait_jpeg, headers=JPEG)
    assert ok.status == 200
    refused = await client.post("/detect?model=broken", data=portrait_jpeg, headers=JPEG)
    assert refused.status == 503
    assert (await refused.json())["error"]["code"] == "not_ready"
    listed = {m["name"]: m for m in (await (await client.get("/api/models")).json())["models"]}
    assert listed["broken"]["ready"] is False and listed["broken"]["error"]


def test_models_section_validation(model_weights: Any) -> None:
    entry = {"cfg": "tests/data/tiny.cfg", "weights": str(model_weights),
             "names": "tests/data/tiny.names"}

    def load(models: Any, **workers: Any) -> Any:
        return load_test_config({"workers": workers}, models=models)

    config = load({"a": entry, "b": {**entry, "default": True, "workers": 3}}, max_workers=2)
    assert [m.name for m in config.models] == ["b", "a"]  # the default first
    assert config.default_model.name == "b" and config.model("a").workers == 2
    assert config.running_capacity == 5 * config.workers.max_batch_size
    with pytest.raises(ConfigError, match="models.list: a model name"):
        load({"list": entry})
    with pytest.raises(ConfigError, match="models: more than one model says default"):
        load({"a": {**entry, "default": True}, "b": {**entry, "default": True}})
    with pytest.raises(ConfigError, match="models.a.weights: is required"):
        load({"a": {"cfg": entry["cfg"], "names": entry["names"]}})
    with pytest.raises(ConfigError, match="models.a.colour: unknown key"):
        load({"a": {**entry, "colour": "red"}})


async def test_one_model_has_nothing_to_pick(client: Any) -> None:
    assert 'id="model-select"' not in await (await client.get("/")).text()


async def test_pages_offer_the_models(two_model_client: Any, portrait_jpeg: bytes) -> None:
    page = await (await two_model_client.get("/")).text()
    assert 'id="model-select"' in page
    assert '<option value="service-6cls" selected>' in page and 'value="colours"' in page

    for model in ("service-6cls", "colours", "colours"):
        response = await two_model_client.post(f"/detect?model={model}&conf=0.05",
                                               data=portrait_jpeg, headers=JPEG)
        assert response.status == 200
    history = await (await two_model_client.get("/history?model=colours")).text()
    assert '<option value="colours" selected>' in history
    assert history.count('class="record-card__name"') == 2
    assert "service-6cls" not in history.split('id="f-model"')[1].split("</select>")[1]
