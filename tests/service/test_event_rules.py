"""Event rules (config checks, matching, payload), the webhook signature against
GitHub's published example, MQTT topics and Home Assistant discovery; no service."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import db
from model.detection import Detection
from service.events.delivery import backoff
from service.events.mqtt import discovery_configs, topics
from service.events.rules import matching, payload
from service.events.webhook import signature
from settings import ConfigError, EventRule, ModelConfig, MqttConfig, parse_event_rule

MQTT = MqttConfig(host="127.0.0.1", port=1883, username=None, password=None, tls=False,
                  topic_prefix="yolo", discovery=True, discovery_prefix="homeassistant")


def test_the_signature_is_githubs() -> None:
    """The example of GitHub's "Validating webhook deliveries" page."""
    assert signature(b"Hello, World!", "It's a Secret to Everybody") == \
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


@pytest.mark.parametrize(("raw", "key", "message"), [
    ({}, "events.r", "needs one target"),
    ({"webhook": "http://h/x", "mqtt": "a/b"}, "events.r", "needs one target"),
    ({"webhook": "ftp://h/x"}, "events.r.webhook", "http:// or https://"),
    ({"mqtt": "a/#"}, "events.r.mqtt", "no wildcards"),
    ({"mqtt": "a/{camera}"}, "events.r.mqtt", "topic template"),
    ({"mqtt": "a/{model"}, "events.r.mqtt", "not a topic template"),
    ({"webhook": "http://h/x", "labels": "stop", "min_confidence": 2}, "events.r.min_confidence",
     "must be in"),
    ({"webhook": "http://h/x", "labels": [1]}, "events.r.labels", "list of non-empty"),
    ({"webhook": "http://h/x", "color": "red"}, "events.r.color", "unknown key"),
    ({"mqtt": "a/b", "secret": "x"}, "events.r.secret", "webhooks only"),
])
def test_bad_rules_are_refused_naming_the_key(raw: dict[str, Any], key: str,
                                              message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_event_rule("r", raw, mqtt=MQTT)
    assert caught.value.key == key


def test_a_rule_names_only_models_served() -> None:
    with pytest.raises(ConfigError, match="no model named lights; the models are: a, b"):
        parse_event_rule("r", {"webhook": "http://h/x", "models": ["a", "lights"]}, mqtt=None,
                         models=["a", "b"])


def test_an_mqtt_rule_needs_the_broker_section() -> None:
    with pytest.raises(ConfigError, match="no broker"):
        parse_event_rule("r", {"mqtt": True}, mqtt=None)


def test_mqtt_true_is_the_default_topic() -> None:
    rule = parse_event_rule("r", {"mqtt": True, "labels": "stop"}, mqtt=MQTT)
    assert rule.mqtt == "yolo/{model}/{label}" and rule.labels == ("stop",)


def made(*boxes: tuple[str, float], model: str = "m", source: str | None = "cam/1") -> db.Record:
    return db.Record(id=uuid.uuid4(), created_at=datetime(2026, 12, 6, tzinfo=timezone.utc),
                     filename="f.jpg", sha256="ab" * 32, width=10, height=10, model=model,
                     inference_ms=1.0, source=source,
                     detections=[Detection(label, 0, conf, 1, 2, 3, 4) for label, conf in boxes])


def test_matching_takes_the_rules_labels_above_its_confidence() -> None:
    rule = EventRule("r", "http://h/x", None, None, labels=("stop",), models=("m",),
                     min_confidence=0.5)
    record = made(("stop", 0.9), ("stop", 0.4), ("go", 0.99))
    assert [(d.label, d.confidence) for d in matching(rule, record)] == [("stop", 0.9)]
    assert matching(rule, made(("stop", 0.9), model="other")) is None
    assert matching(EventRule("r", "http://h/x", None, None), record) == record.detections


def test_payload_and_topics() -> None:
    rule = EventRule("r", None, "yolo/{model}/{label}/{source}", None)
    record = made(("stop", 0.9), ("go", 0.8), ("stop", 0.7))
    body = payload(rule, record, record.detections, base_url="http://svc:8080",
                   previous_labels=["warning"])
    assert body["labels"] == ["go", "stop"] and body["counts"] == {"stop": 2, "go": 1}
    assert body["image_url"] == f"http://svc:8080/detections/{record.id}/image?annotated=1"
    assert body["model_version"] is None and body["time"] == "2026-12-06T00:00:00+00:00"
    # One message per label; a gone label too; a slash in a value stays in its level.
    assert topics(rule, body) == ["yolo/m/go/cam_1", "yolo/m/stop/cam_1",
                                  "yolo/m/warning/cam_1"]


def test_discovery_makes_one_sensor_per_rule_model_and_label(tmp_path: Path) -> None:
    model = ModelConfig(name="lights", cfg=tmp_path, weights=tmp_path, names=tmp_path,
                        img_size=32, conf_thres=0.5, iou_thres=0.5, agnostic_nms=False,
                        max_det=10, workers=1)
    rules = [EventRule("red", None, "yolo/{model}/{label}", None, labels=("stop",)),
             EventRule("cams", None, "yolo/{source}/{label}", None)]  # sources unknown
    configs = discovery_configs(MQTT, rules, [(model, ["go", "stop"])])
    assert [(topic, body["state_topic"]) for topic, body in configs] == [
        ("homeassistant/sensor/yolo_red_lights_stop/config", "yolo/lights/stop")]
    assert configs[0][1]["value_template"] == "{{ value_json.counts.get('stop', 0) }}"


def test_backoff_doubles_up_to_the_longest_with_jitter() -> None:
    waits = [backoff(n, 8.0) for n in range(1, 10)]
    for n, wait in enumerate(waits, start=1):
        cap = min(8.0, 0.5 * 2 ** (n - 1))
        assert cap * 0.5 <= wait <= cap
