"""Prometheus metrics at GET /metrics: HTTP counters with bounded labels, pool, spool and
admission figures read at scrape time, the pool's histograms, access control.

Expositions are parsed with prometheus_client's own parser; counts are compared as
differences between two scrapes (the detector pool is shared by every test)."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.web import keys
from main import init_app
from service.workers.pool import DetectorPool
from service.database_health import DatabaseHealth
from service.recorder import RecordWriter
from settings import Config
from service.metrics import BATCH_BUCKETS, MetricSources, ServiceMetrics
from service.workers.stats import PoolMetrics
from utils.spool import Spool
from service.web.tokens import create_token

JPEG = {"Content-Type": "image/jpeg"}
REQUESTS = "yolo_http_requests_total"
MODEL = {"model": "service-6cls"}  # the pool's series carry their model's name

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and every family's type by name."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in types, f"{family.name} exposed twice"
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled series not seen yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: Any, **kwargs: Any) -> Samples:
    response = await client.get("/metrics", **kwargs)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return parse(await response.text())[0]


def exposition(metrics: ServiceMetrics) -> tuple[Samples, dict[str, str]]:
    body = metrics.exposition()
    assert isinstance(body, bytes)
    return parse(body.decode("utf-8"))


# ---------------------------------------------------------------- HTTP metrics

async def test_detect_is_counted_once_with_its_duration(client: Any, portrait_jpeg: bytes) -> None:
    before = await scrape(client)
    response = await client.post("/detect", data=portrait_jpeg, headers=JPEG)
    assert response.status == 200, await response.text()
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(REQUESTS, endpoint="/detect", method="POST", status="200") == 1
    route = {"endpoint": "/detect", "method": "POST"}
    assert delta("yolo_http_request_duration_seconds_count", **route) == 1
    assert delta("yolo_http_request_duration_seconds_sum", **route) > 0
    # The scrape itself is counted, once finished, and is the one request in flight.
    assert value(before, REQUESTS, endpoint="/metrics", method="GET", status="200") == 0
    assert value(after, REQUESTS, endpoint="/metrics", method="GET", status="200") == 1
    assert value(before, "yolo_http_requests_in_flight") == 1
    assert value(after, "yolo_http_requests_in_flight") == 1
    # The pool timed that one image: one job queued, one image through a forward batch.
    assert delta("yolo_queue_seconds_count", **MODEL) == 1
    assert delta("yolo_batch_size_sum", **MODEL) == 1
    assert delta("yolo_inference_seconds_count", **MODEL) \
        == delta("yolo_batch_size_count", **MODEL) >= 1


async def test_errors_are_counted_with_the_status_sent(client: Any) -> None:
    record_id = uuid.uuid4()
    assert (await client.post("/detect", data=b"not an image", headers=JPEG)).status == 415
    assert (await client.get(f"/detections/{record_id}")).status == 404
    assert (await client.get(f"/detections/{record_id}/image")).status == 404
    assert (await client.get(f"/api/detections/{record_id}")).status == 404
    assert (await client.get("/no/such/page/123")).status == 404
    assert (await client.delete("/healthz")).status == 405
    assert (await client.request("PROPFIND", "/api/stats")).status == 405  # WebDAV

    response = await client.get("/metrics")
    text = await response.text()
    samples = parse(text)[0]
    for endpoint, method, status in [
            ("/detect", "POST", "415"),
            ("/detections/{id}", "GET", "404"),
            ("/detections/{id}/image", "GET", "404"),
            ("/api/detections/{id}", "GET", "404"),
            ("unmatched", "GET", "404"),
            ("unmatched", "DELETE", "405"),
            ("unmatched", "other", "405")]:
        assert value(samples, REQUESTS, endpoint=endpoint, method=method, status=status) == 1, \
            (endpoint, method, status)
    assert str(record_id) not in text  # ids never become label values
    assert "/no/such" not in text and "PROPFIND" not in text


async def test_unhandled_errors_and_abandoned_requests(test_config: Config,
                                                       detector_pool: DetectorPool,
                                                       aiohttp_client: Any) -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    async def abandoned(request: web.Request) -> web.Response:
        raise asyncio.CancelledError  # what aiohttp does to a handler whose client left

    app = await init_app(test_config, detector_pool=detector_pool)
    app.router.add_get("/boom/{n}", boom)
    app.router.add_get("/gone", abandoned)
    client = await aiohttp_client(app)
    assert (await client.get("/boom/1")).status == 500
    with pytest.raises(aiohttp.ClientError):
        await client.get("/gone")
    samples = await scrape(client)
    assert value(samples, REQUESTS, endpoint="/boom/{n}", method="GET", status="500") == 1
    assert value(samples, REQUESTS, endpoint="/gone", method="GET", status="499") == 1
    assert value(samples, "yolo_http_requests_in_flight") == 1  # only the scrape


# ---------------------------------------------------------------- scrape-time figures

async def test_pool_spool_and_admission_figures(client: Any, detector_pool: DetectorPool,
                                                test_config: Config) -> None:
    response = await client.get("/metrics")
    samples, types = parse(await response.text())
    stats = detector_pool.stats
    for name, expected in [("yolo_worker_deaths", stats.worker_deaths),
                           ("yolo_worker_restarts", stats.restarts),
                           ("yolo_retried_jobs", stats.retried_jobs),
                           ("yolo_refused_images", stats.refused_images)]:
        assert types[name] == "counter"
        assert value(samples, f"{name}_total", **MODEL) == expected, name
    pool_gauges = {"yolo_workers", "yolo_workers_busy", "yolo_queued_jobs", "yolo_pool_ready",
                   "yolo_admission_in_progress", "yolo_admission_limit"}
    expected_gauges = {
        "yolo_workers": test_config.workers.max_workers, "yolo_workers_busy": 0,
        "yolo_queued_jobs": 0, "yolo_pool_ready": 1,
        "yolo_spool_records": 0, "yolo_spool_bytes": 0,
        "yolo_spool_capacity_bytes": test_config.storage.spool_max_bytes,
        "yolo_admission_in_progress": 0,
        "yolo_admission_limit": client.server.app[keys.servers_key].default.admission.limit,
        "yolo_http_requests_in_flight": 1,
        "yolo_database_up": 1,
    }
    for name, expected in expected_gauges.items():
        assert types[name] == "gauge", name
        labels = MODEL if name in pool_gauges else {}
        assert value(samples, name, **labels) == expected, name
    assert value(samples, "yolo_spooled_records_total") == 0
    assert value(samples, "yolo_admission_rejected_total", **MODEL) == 0
    assert value(samples, "yolo_database_restarts_total") == 0
    for name in ("yolo_queue_seconds", "yolo_batch_size", "yolo_inference_seconds",
                 "yolo_http_request_duration_seconds"):
        assert types[name] == "histogram", name


async def test_the_database_figures_are_the_one_health_objects() -> None:
    """/metrics, /readyz and the record writer read one DatabaseHealth."""
    health = DatabaseHealth(embedded=True)
    metrics = ServiceMetrics(lambda: MetricSources(database=health))
    assert value(exposition(metrics)[0], "yolo_database_up") == 1
    assert health.lost(ConnectionRefusedError("refused")) is True
    assert health.lost(ConnectionRefusedError("refused")) is False  # not news
    samples, _ = exposition(metrics)
    assert value(samples, "yolo_database_up") == 0
    assert health.snapshot()["detail"] == "ConnectionRefusedError: refused"
    health.set("restarting")
    assert health.answered() is False  # the watcher owns a restart
    health.restarts += 1
    health.set("ok")
    samples, _ = exposition(metrics)
    assert value(samples, "yolo_database_up") == 1
    assert value(samples, "yolo_database_restarts_total") == 1


async def test_spool_depth_counts_records_and_bytes(db_pool: Any, tmp_path: Path) -> None:
    spool = await asyncio.to_thread(Spool.open, tmp_path / "spool", max_bytes=1 << 20)
    try:
        writer = RecordWriter(db_pool, spool, write_timeout=1.0)
        metrics = ServiceMetrics(lambda: MetricSources(records=writer))
        payload = b'{"records": [], "images": []}'
        await spool.append(payload, 3)  # one entry holding three records
        await spool.append(payload, 2)
        samples, _ = exposition(metrics)
        assert value(samples, "yolo_spool_records") == 5
        assert value(samples, "yolo_spool_bytes") == 2 * (16 + len(payload))  # 16-byte headers
        assert value(samples, "yolo_spool_capacity_bytes") == 1 << 20
        # The room left: its limit less what it holds (the disk has more free than that).
        assert value(samples, "yolo_spool_room_bytes") == (1 << 20) - 2 * (16 + len(payload))
    finally:
        spool.close()


async def test_scrapes_survive_missing_stopped_and_broken_resources(
        test_config: Config, caplog: pytest.LogCaptureFixture) -> None:
    samples, types = exposition(ServiceMetrics())  # nothing started yet
    assert "yolo_http_requests" in types and "yolo_workers" not in types

    pool = DetectorPool(test_config.workers, max_pixels=test_config.server.max_pixels,
                        model=test_config.default_model)
    metrics = ServiceMetrics(lambda: MetricSources(pool=pool))
    samples, types = exposition(metrics)  # never started
    assert types["yolo_workers"] == "gauge"
    assert value(samples, "yolo_workers", **MODEL) == 0
    assert value(samples, "yolo_pool_ready", **MODEL) == 0
    await pool.close()
    samples, _ = exposition(metrics)  # closed
    assert value(samples, "yolo_workers", **MODEL) == 0
    assert value(samples, "yolo_pool_ready", **MODEL) == 0

    class BrokenPool:
        def collect(self) -> Any:
            raise RuntimeError("torn down")

    from utils.admission import Receiving

    broken = ServiceMetrics(lambda: MetricSources(pool=BrokenPool(),  # type: ignore[arg-type]
                                                  admission=Receiving(7)))
    with caplog.at_level(logging.WARNING, logger="service.metrics"):
        samples, types = exposition(broken)
    assert "yolo_worker_deaths" not in types and "yolo_workers" not in types  # none of it
    assert value(samples, "yolo_admission_receiving") == 0  # the rest is still there
    assert "cannot read the model servers" in caplog.text

    def no_sources() -> MetricSources:
        raise KeyError("app gone")

    samples, types = exposition(ServiceMetrics(no_sources))
    assert "yolo_http_requests_in_flight" in types


# ---------------------------------------------------------------- pool histograms

def test_pool_metrics_buckets() -> None:
    metrics = PoolMetrics("m")
    for seconds in (0.003, 0.2, 45.0):
        metrics.observe_queue(seconds)
    metrics.observe_batch(5, 0.04, [1, 1, 5, 1, 9])  # two images in tiles
    metrics.observe_batch(1, 0.002, [1])
    samples, types = parse(generate_latest(metrics).decode("utf-8"))
    assert {name: kind for name, kind in types.items() if not name.endswith("_created")} \
        == {"yolo_queue_seconds": "histogram", "yolo_batch_size": "histogram",
            "yolo_inference_seconds": "histogram", "yolo_passes": "histogram"}

    def bucket(name: str, le: str) -> float:
        return value(samples, f"{name}_bucket", le=le, model="m")

    assert [bucket("yolo_queue_seconds", le) for le in ("0.001", "0.005", "0.25", "30.0", "+Inf")] \
        == [0, 1, 2, 2, 3]
    assert value(samples, "yolo_queue_seconds_sum", model="m") == pytest.approx(45.203)
    assert [bucket("yolo_batch_size", le) for le in ("1.0", "4.0", "6.0", "+Inf")] == [1, 1, 2, 2]
    assert value(samples, "yolo_batch_size_sum", model="m") == 6
    assert [bucket("yolo_inference_seconds", le) for le in ("0.001", "0.0025", "0.05")] == [0, 1, 2]
    assert [bucket("yolo_passes", le) for le in ("1.0", "5.0", "7.0", "9.0")] == [4, 5, 5, 6]
    assert value(samples, "yolo_passes_sum", model="m") == 18
    les = {dict(labels)["le"] for name, labels in samples if name == "yolo_batch_size_bucket"}
    assert les == {str(float(b)) for b in BATCH_BUCKETS} | {"+Inf"}


def test_pool_metrics_from_several_threads() -> None:
    metrics = PoolMetrics("m")

    def observe() -> None:
        for _ in range(2000):
            metrics.observe_queue(0.01)
            metrics.observe_batch(2, 0.01)

    threads = [threading.Thread(target=observe) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    samples, _ = parse(generate_latest(metrics).decode("utf-8"))
    assert value(samples, "yolo_queue_seconds_count", model="m") == 8000
    assert value(samples, "yolo_batch_size_sum", model="m") == 16000


async def test_app_forwards_the_pool_metrics(client: Any, detector_pool: DetectorPool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = PoolMetrics(detector_pool.model.name)
    fresh.observe_batch(24, 7.5)
    monkeypatch.setattr(detector_pool, "metrics", fresh)
    samples = await scrape(client)
    assert value(samples, "yolo_batch_size_count", **MODEL) == 1
    assert value(samples, "yolo_batch_size_sum", **MODEL) == 24
    assert value(samples, "yolo_inference_seconds_sum", **MODEL) == 7.5
    assert value(samples, "yolo_queue_seconds_count", **MODEL) == 0


# ---------------------------------------------------------------- access control

async def test_metrics_need_a_token_when_auth_is_on(make_config: Any, detector_pool: DetectorPool,
                                                    tmp_path: Path, aiohttp_client: Any) -> None:
    tokens_file = tmp_path / "tokens.json"
    token = create_token(tokens_file, "prometheus")
    config = make_config({"auth": {"tokens_file": str(tokens_file)}})
    client = await aiohttp_client(await init_app(config, detector_pool=detector_pool))
    refused = await client.get("/metrics")
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    browser = await client.get("/metrics", headers={"Accept": "text/html"},
                               allow_redirects=False)
    assert browser.status == 303  # to the sign-in form
    samples = await scrape(client, headers={"Authorization": f"Bearer {token}"})
    for status in ("401", "303"):
        assert value(samples, REQUESTS, endpoint="/metrics", method="GET", status=status) == 1
