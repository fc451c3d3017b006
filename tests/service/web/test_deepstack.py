"""The DeepStack-compatible API, driven by the real clients people run: deepstack-python,
deepstack-sdk (both from PyPI) and a client that does exactly what Frigate's DeepStack
detector does. They are synchronous (requests), so they run in a thread against the test
server's real TCP port."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests
from deepstack.core import DeepstackException, DeepstackObject
from deepstack_sdk import Detection, ServerConfig
from PIL import Image

from main import init_app
from service.web import keys
from service.web.tokens import create_token
from tests.helpers import form

KEYS = {"label", "confidence", "x_min", "y_min", "x_max", "y_max"}


def _port(client: Any) -> int:
    return int(client.server.port)


async def _history(client: Any, **query: str) -> list[dict[str, Any]]:
    response = await client.get("/api/detections", params=query)
    return (await response.json())["items"]


def _check_predictions(predictions: list[dict[str, Any]], width: int, height: int) -> None:
    assert predictions
    for p in predictions:
        assert set(p) == KEYS
        assert all(isinstance(p[k], int) for k in ("x_min", "y_min", "x_max", "y_max"))
        assert 0 <= p["x_min"] <= p["x_max"] <= width and 0 <= p["y_min"] <= p["y_max"] <= height
    confidences = [p["confidence"] for p in predictions]
    assert confidences == sorted(confidences, reverse=True)


async def test_deepstack_python_default_and_custom_model(two_model_client: Any,
                                                         portrait_jpeg: bytes) -> None:
    port = _port(two_model_client)
    default = DeepstackObject(ip="127.0.0.1", port=port, min_confidence=0.05)
    predictions = await asyncio.to_thread(default.detect, portrait_jpeg)
    _check_predictions(predictions, 810, 1080)
    assert all(p["confidence"] >= 0.05 for p in predictions)

    custom = DeepstackObject(ip="127.0.0.1", port=port, min_confidence=0.05,
                             custom_model="colours")
    coloured = await asyncio.to_thread(custom.detect, portrait_jpeg)
    _check_predictions(coloured, 810, 1080)
    assert {p["label"] for p in coloured} <= {"red", "green"}

    # Every answer is a record, marked with the API and the model it came through.
    records = await _history(two_model_client)
    assert [(r["api"], r["model"]) for r in records] == [("deepstack", "colours"),
                                                         ("deepstack", "service-6cls")]
    assert len(records[0]["detections"]) == len(coloured)
    assert [d["confidence"] for d in records[1]["detections"]] \
        == [p["confidence"] for p in predictions]

    unknown = DeepstackObject(ip="127.0.0.1", port=port, custom_model="nosuch")
    with pytest.raises(DeepstackException, match="404"):
        await asyncio.to_thread(unknown.detect, portrait_jpeg)


async def test_deepstack_sdk_detect_object(two_model_client: Any, landscape_jpeg: bytes) -> None:
    url = f"http://127.0.0.1:{_port(two_model_client)}"
    response = await asyncio.to_thread(
        Detection(ServerConfig(url)).detectObject, landscape_jpeg, min_confidence=0.05)
    assert len(response) > 0
    for item in response:
        assert item.label and 0 < item.confidence <= 1
        assert 0 <= item.x_min <= item.x_max <= 1280 and 0 <= item.y_min <= item.y_max <= 720
    named = await asyncio.to_thread(
        Detection(ServerConfig(url), name="colours").detectObject, landscape_jpeg,
        min_confidence=0.05)
    assert {item.label for item in named} <= {"red", "green"} and len(named) > 0


async def test_custom_list(two_model_client: Any) -> None:
    response = await asyncio.to_thread(
        requests.post, f"http://127.0.0.1:{_port(two_model_client)}/v1/vision/custom/list",
        timeout=5)
    assert response.status_code == 200
    assert response.json()["success"] is True
    assert response.json()["models"] == ["service-6cls", "colours"]


async def test_codeproject_fields(two_model_client: Any, portrait_jpeg: bytes) -> None:
    response = await two_model_client.post("/v1/vision/detection", data=form(
        ("x.jpg", portrait_jpeg, "image/jpeg")))
    body = await response.json()
    assert body["success"] is True and body["code"] == 200
    assert body["count"] == len(body["predictions"])
    assert isinstance(body["inferenceMs"], int) and isinstance(body["processMs"], int)
    assert body["processMs"] >= body["inferenceMs"] >= 0
    assert body["moduleId"] and body["command"] == "detect"
    record = await (await two_model_client.get(f"/api/detections/{body['requestId']}")).json()
    assert record["api"] == "deepstack"


async def test_min_confidence_zero_means_every_detection(two_model_client: Any,
                                                         portrait_jpeg: bytes) -> None:
    async def count(min_confidence: str) -> int:
        data = form(("x.jpg", portrait_jpeg, "image/jpeg"))
        data.add_field("min_confidence", min_confidence)
        async with asyncio.timeout(60):  # DeepStack hangs here; we must not
            response = await two_model_client.post("/v1/vision/custom/colours", data=data)
        assert response.status == 200, await response.text()
        return len((await response.json())["predictions"])

    everything, some = await count("0"), await count("0.3")
    assert everything > some


@pytest.mark.parametrize("fields,status,needle", [
    ({}, 400, "no file in multipart field 'image'"),
    ({"image": b"not an image"}, 415, "not an image we can read"),
    ({"image": "PHOTO", "min_confidence": "high"}, 400, "min_confidence"),
    ({"image": "PHOTO", "min_confidence": "1.5"}, 400, "min_confidence"),
    ({"image": "PHOTO", "min_confidence": "nan"}, 400, "min_confidence"),
])
async def test_errors_in_deepstack_shape(two_model_client: Any, portrait_jpeg: bytes,
                                         fields: dict[str, Any], status: int,
                                         needle: str) -> None:
    from aiohttp import FormData

    data = FormData()
    data.add_field("other", "x")
    for name, value in fields.items():
        if name == "image":
            content = portrait_jpeg if value == "PHOTO" else value
            data.add_field("image", content, filename="x.jpg")
        else:
            data.add_field(name, value)
    response = await two_model_client.post("/v1/vision/detection", data=data)
    assert response.status == status
    body = await response.json()
    assert body["success"] is False and body["code"] == status
    assert needle in body["error"]


async def test_unknown_model_and_wrong_method_in_deepstack_shape(two_model_client: Any,
                                                                 portrait_jpeg: bytes) -> None:
    response = await two_model_client.post("/v1/vision/custom/nosuch",
                                           data=form(("x.jpg", portrait_jpeg, "image/jpeg")))
    assert response.status == 404
    body = await response.json()
    assert body == {"success": False, "error": body["error"], "code": 404}
    assert "nosuch" in body["error"] and "colours" in body["error"]
    wrong = await two_model_client.get("/v1/vision/detection")
    assert wrong.status == 405 and (await wrong.json())["success"] is False


async def test_too_large_unsupported_and_not_ready(two_model_client: Any,
                                                   two_model_config: Any) -> None:
    from aiohttp import FormData

    big = FormData()
    big.add_field("image", io.BytesIO(b"\xff\xd8\xff" + b"\0" * (
        two_model_config.server.max_upload_bytes + 10)), filename="x.jpg",
        content_type="image/jpeg")
    response = await two_model_client.post("/v1/vision/detection", data=big)
    assert response.status == 413 and (await response.json())["success"] is False
    pdf = form(("x.pdf", b"%PDF-1.7\n....", "image/gif"))
    response = await two_model_client.post("/v1/vision/detection", data=pdf)
    assert response.status == 415 and (await response.json())["success"] is False


async def test_not_ready_is_503(make_config: Any, detector_pool: Any, two_model_config: Any,
                                portrait_jpeg: bytes, aiohttp_client: Any) -> None:
    from service.workers.pool import DetectorPool

    cold = DetectorPool(two_model_config.workers, model=two_model_config.model("colours"),
                        max_pixels=1000)  # never started
    pools = {"service-6cls": detector_pool, "colours": cold}
    client = await aiohttp_client(await init_app(two_model_config, model_pools=pools))
    response = await client.post("/v1/vision/custom/colours",
                                 data=form(("x.jpg", portrait_jpeg, "image/jpeg")))
    assert response.status == 503 and response.headers["Retry-After"]
    assert (await response.json())["success"] is False


# ---------------------------------------------------------------- access control, Frigate

@pytest.fixture
async def guarded(two_model_config: Any, make_config: Any, model_weights: Path,
                  tiny_weights: Path, detector_pool: Any, colours_pool: Any, tmp_path: Path,
                  aiohttp_client: Any) -> tuple[Any, str]:
    from tests.service.conftest import two_models

    tokens = tmp_path / "tokens.json"
    token = create_token(tokens, "frigate")
    config = make_config({**two_models(model_weights, tiny_weights),
                          "auth": {"tokens_file": str(tokens)}})
    pools = {"service-6cls": detector_pool, "colours": colours_pool}
    client = await aiohttp_client(await init_app(config, model_pools=pools))
    assert keys.auth_key in client.server.app
    return client, token


async def test_api_key_in_the_form(guarded: tuple[Any, str], portrait_jpeg: bytes) -> None:
    client, token = guarded
    port = _port(client)
    with pytest.raises(DeepstackException, match="401"):
        await asyncio.to_thread(DeepstackObject(ip="127.0.0.1", port=port).detect, portrait_jpeg)
    with pytest.raises(DeepstackException, match="401"):
        await asyncio.to_thread(DeepstackObject(ip="127.0.0.1", port=port,
                                                api_key="wrong").detect, portrait_jpeg)
    found = await asyncio.to_thread(DeepstackObject(ip="127.0.0.1", port=port, api_key=token,
                                                    min_confidence=0.05).detect, portrait_jpeg)
    assert found
    listed = await asyncio.to_thread(requests.post,
                                     f"http://127.0.0.1:{port}/v1/vision/custom/list",
                                     data={"api_key": token}, timeout=5)
    assert listed.status_code == 200
    refused = await asyncio.to_thread(requests.post,
                                      f"http://127.0.0.1:{port}/v1/vision/custom/list", timeout=5)
    assert refused.status_code == 401 and refused.json()["success"] is False
    # The rest of the service still wants its bearer token.
    assert (await client.get("/api/detections")).status == 401


def _frigate_detect(url: str, api_key: str, frame: np.ndarray,
                    labels: list[str]) -> np.ndarray:
    """What Frigate's DeepStack detector plugin does with one frame: the model-sized RGB
    tensor as a JPEG (PIL), api_key in the form, a 0.1 s timeout, and a loop over the
    predictions that stops at the first one below 0.4 (they must come sorted)."""
    image = Image.fromarray(frame)
    width, height = image.size
    with io.BytesIO() as output:
        image.save(output, format="JPEG")
        image_bytes = output.getvalue()
    response = requests.post(url, data={"api_key": api_key}, files={"image": image_bytes},
                             timeout=0.1)
    detections = np.zeros((20, 6), np.float32)
    predictions = response.json().get("predictions")
    if predictions is None:
        return detections
    for i, detection in enumerate(predictions):
        if detection["confidence"] < 0.4 or i == 20:
            break
        label = labels.index(detection["label"]) if detection["label"] in labels else -1
        if label < 0:
            break
        detections[i] = [label, float(detection["confidence"]),
                         detection["y_min"] / height, detection["x_min"] / width,
                         detection["y_max"] / height, detection["x_max"] / width]
    return detections


async def test_frigate_deepstack_detector(guarded: tuple[Any, str], portrait_jpeg: bytes,
                                          test_config: Any) -> None:
    client, token = guarded
    size = test_config.default_model.img_size  # Frigate sends frames at the model's size
    frame = cv2.cvtColor(cv2.resize(cv2.imdecode(np.frombuffer(portrait_jpeg, np.uint8),
                                                 cv2.IMREAD_COLOR), (size, size)),
                         cv2.COLOR_BGR2RGB)
    url = f"http://127.0.0.1:{_port(client)}/v1/vision/detection"
    labels = test_config.default_model.names.read_text().split()
    await asyncio.to_thread(_frigate_detect, url, token, frame, labels)  # warm the path
    for _ in range(5):
        detections = await asyncio.to_thread(_frigate_detect, url, token, frame, labels)
        assert detections.shape == (20, 6)
        found = detections[detections[:, 1] > 0]
        assert (found[:, 1] >= 0.4).all()
        assert ((found[:, 2:] >= 0) & (found[:, 2:] <= 1)).all()
    records = await (await client.get("/api/detections",
                                      headers={"Authorization": f"Bearer {token}"})).json()
    assert len(records["items"]) == 6 and {r["api"] for r in records["items"]} == {"deepstack"}


# ---------------------------------------------------------------- credentials (issue 25)

def _post(url: str, **kwargs: Any) -> requests.Response:
    return requests.post(url, timeout=10, **kwargs)


async def test_an_authorization_header_is_judged_alone(guarded: tuple[Any, str],
                                                       portrait_jpeg: bytes,
                                                       tmp_path: Path) -> None:
    """A valid api_key does not save a wrong bearer header; a revoked key is refused."""
    client, token = guarded
    url = f"http://127.0.0.1:{_port(client)}/v1/vision/detection"
    files = {"image": ("a.jpg", portrait_jpeg, "image/jpeg")}
    wrong_header = await asyncio.to_thread(
        _post, url, data={"api_key": token}, files=files,
        headers={"Authorization": "Bearer wrong"})
    assert wrong_header.status_code == 401 and wrong_header.json()["success"] is False
    right_header = await asyncio.to_thread(
        _post, url, files=files, headers={"Authorization": f"Bearer {token}"})
    assert right_header.status_code == 200, right_header.text

    from service.web.tokens import revoke_token

    revoke_token(tmp_path / "tokens.json", "frigate")
    revoked = await asyncio.to_thread(_post, url, data={"api_key": token}, files=files)
    assert revoked.status_code == 401 and revoked.json()["error"]


async def test_anonymous_callers_learn_no_model_names(guarded: tuple[Any, str],
                                                      portrait_jpeg: bytes) -> None:
    client, token = guarded
    base = f"http://127.0.0.1:{_port(client)}/v1/vision/custom"
    files = {"image": ("a.jpg", portrait_jpeg, "image/jpeg")}
    anonymous = await asyncio.to_thread(_post, f"{base}/nosuch", files=files)
    assert anonymous.status_code == 401
    assert "colours" not in anonymous.text and "service-6cls" not in anonymous.text
    wrong_key = await asyncio.to_thread(_post, f"{base}/nosuch", files=files,
                                        data={"api_key": "yolo_wrong"})
    assert wrong_key.status_code == 401 and "colours" not in wrong_key.text
    known = await asyncio.to_thread(_post, f"{base}/nosuch", files=files,
                                    data={"api_key": token})
    assert known.status_code == 404 and "colours" in known.json()["error"]


@pytest.mark.parametrize("value", ["abc", "1" * 2000, "1.5", "-0.1", "nan", "inf"])
async def test_a_malformed_min_confidence_is_a_400(two_model_client: Any, portrait_jpeg: bytes,
                                                   value: str) -> None:
    url = f"http://127.0.0.1:{_port(two_model_client)}/v1/vision/detection"
    response = await asyncio.to_thread(
        _post, url, data={"min_confidence": value},
        files={"image": ("a.jpg", portrait_jpeg, "image/jpeg")})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["success"] is False and "min_confidence" in body["error"]
    assert len(body["error"]) < 200
