"""The load benchmark's pure helpers: percentiles, level summaries, config overrides.

No timing assertions: the benchmark itself is run by hand (``python -m bench.load``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from bench._service import parse_assignment, set_dotted, write_config
from bench.common import generated_images, percentile
from bench.load import (EngineStats, Sample, _layouts, _levels, derived, format_layouts,
                        format_phases, format_table, parse_server_timing, summarize,
                        unique_jpeg)


@pytest.mark.parametrize("values", [[5.0], [3.0, 1.0], [7.0, 1.0, 4.0, 9.0, 2.0],
                                    list(np.random.default_rng(0).random(101) * 100)])
@pytest.mark.parametrize("q", [0, 1, 50, 95, 99, 100])
def test_percentile_matches_numpy_linear(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_nan_and_range_is_checked() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_counts_the_window_and_splits_errors() -> None:
    samples = [
        Sample(0.5, 1.5, "200"),    # started in warm-up, completed in the window: throughput only
        Sample(1.0, 1.2, "200"),    # started at the window's start: counted, 200 ms
        Sample(1.2, 1.6, "200"),    # 400 ms
        Sample(1.6, 1.7, "503"),
        Sample(1.7, 1.7, "timeout"),
        Sample(2.5, 3.5, "200"),    # started in the window, completed after it: latency only
        Sample(3.0, 3.1, "200"),    # started after the window: ignored
    ]
    stats = summarize(4, samples, window_start=1.0, window_end=3.0)
    assert stats.concurrency == 4
    assert stats.requests == 5
    assert stats.ok == 3
    assert stats.errors == {"503": 1, "timeout": 1}
    assert stats.window_s == pytest.approx(2.0)
    assert stats.images_per_s == pytest.approx(3 / 2.0)  # ends at 1.2, 1.5, 1.6
    assert sorted(stats.latencies_ms) == pytest.approx([200.0, 400.0, 1000.0])
    assert stats.p50_ms == pytest.approx(400.0)


def test_summarize_without_successes_has_nan_latencies() -> None:
    stats = summarize(1, [Sample(0.0, 0.1, "503")], 0.0, 1.0)
    assert stats.ok == 0 and stats.images_per_s == 0.0
    assert math.isnan(stats.p50_ms) and math.isnan(stats.mean_ms)
    assert "-" in format_table([stats]) and "503x1" in format_table([stats])
    with pytest.raises(ValueError):
        summarize(1, [], 1.0, 1.0)


def test_derived_efficiency_and_added_latency() -> None:
    levels = [summarize(c, [Sample(0.0, latency, "200")] * n, 0.0, 1.0)
              for c, n, latency in ((1, 4, 0.25), (2, 6, 0.30), (4, 5, 0.8))]
    engine = EngineStats(backend="torch", device="cpu", threads=2, images=10,
                         images_per_s=5.0, p50_ms=240.0, p95_ms=260.0, latencies_ms=[])
    numbers = derived(engine, levels)
    assert numbers["best_concurrency"] == 2
    assert numbers["efficiency"] == pytest.approx(6 / 5.0)
    assert numbers["added_latency_c1_ms"] == pytest.approx(10.0)
    assert "efficiency" not in derived(None, levels)


def test_levels_argument() -> None:
    assert _levels("1,2,4") == [1, 2, 4]
    for bad in ("", "0,1", "a"):
        with pytest.raises(argparse.ArgumentTypeError):
            _levels(bad)


def test_layouts_argument_and_table() -> None:
    assert _layouts("1x2, 2X1") == [(1, 2), (2, 1)]
    for bad in ("2", "0x1", "ax2", "1x2,"):
        with pytest.raises(argparse.ArgumentTypeError):
            _layouts(bad)
    levels = [summarize(c, [Sample(0.0, 0.1 * c, "200")] * 4 * c, 0.0, 1.0) for c in (1, 2)]
    engine = EngineStats(backend="onnxruntime", device="cpu", threads=2, images=10,
                         images_per_s=4.0, p50_ms=90.0, p95_ms=95.0, latencies_ms=[])
    table = format_layouts([{"layout": (2, 1), "levels": levels,
                             "derived": derived(engine, levels)}])
    assert table.splitlines()[1].split() == ["2x1", "100.0", "8.00", "2", "2.000", "+10.0"]


def test_config_overrides(tmp_path: Path) -> None:
    assert parse_assignment("workers.max_queue=64") == ("workers.max_queue", 64)
    assert parse_assignment("workers.device=cpu") == ("workers.device", "cpu")
    with pytest.raises(ValueError):
        parse_assignment("no-equals")
    data: dict[str, object] = {"workers": {"img_size": 512}}
    set_dotted(data, "workers.model_path.cfg", "x.cfg")
    assert data == {"workers": {"img_size": 512, "model_path": {"cfg": "x.cfg"}}}

    base = tmp_path / "base.yaml"
    base.write_text("server: {port: 8080}\npostgres: {embedded: false, database: yolo}\n")
    written = write_config(base, tmp_path / "out.yaml", tmp_path / "work",
                           {"server.port": 1234})
    assert yaml.safe_load((tmp_path / "out.yaml").read_text()) == written
    assert written["server"] == {"port": 1234}
    assert written["postgres"]["embedded"] is True
    assert written["postgres"]["database"] == "yolo"
    assert written["postgres"]["data_dir"] == str(tmp_path / "work" / "pgdata")


def test_generated_images_are_deterministic_jpegs() -> None:
    first, second = generated_images(), generated_images()
    assert [i.data for i in first] == [i.data for i in second]
    assert all(i.data[:2] == b"\xff\xd8" for i in first)


def test_unique_jpeg_changes_the_bytes_not_the_pixels() -> None:
    """Tagged copies are new images to the service (another sha256) with the same pixels."""
    original = generated_images()[1].data
    first, second = unique_jpeg(original, "bench 1"), unique_jpeg(original, "bench 2")
    assert len({original, first, second}) == 3
    pixels = cv2.imdecode(np.frombuffer(original, np.uint8), cv2.IMREAD_COLOR)
    for tagged in (first, second):
        assert np.array_equal(cv2.imdecode(np.frombuffer(tagged, np.uint8), cv2.IMREAD_COLOR),
                              pixels)
    png = cv2.imencode(".png", pixels)[1].tobytes()
    with pytest.raises(ValueError):
        unique_jpeg(png, "bench 3")


def test_parse_server_timing() -> None:
    """Durations by metric name; other parameters are skipped, metrics without one left out."""
    assert parse_server_timing('a;dur=1.5, b;desc="x";dur=2, c') == {"a": 1.5, "b": 2.0}
    assert parse_server_timing(None) == {} and parse_server_timing("") == {}


def test_format_phases_derives_transfer_and_outside() -> None:
    """Per request: transfer = detect - decode - infer, outside = latency - upload -
    detect - store; then the median of each phase."""
    timings = [{"upload": 2.0, "detect": 50.0, "decode": 5.0, "infer": 40.0, "store": 3.0},
               {"upload": 4.0, "detect": 60.0, "decode": 7.0, "infer": 41.0, "store": 5.0},
               {"upload": 9.0, "detect": 90.0, "decode": 9.0, "infer": 70.0, "store": 8.0}]
    samples = [Sample(0.0, latency, "200", timing)
               for latency, timing in zip((0.08, 0.1, 0.2), timings, strict=True)]
    stats = summarize(1, samples + [Sample(0.1, 0.2, "503")], 0.0, 1.0)
    # transfer per request 5, 12, 11; outside 25, 31, 93
    assert stats.phases_p50_ms == {**timings[1], "transfer": 11.0, "outside": 31.0}
    assert format_phases(stats) == (
        "where the time goes at concurrency 1 (medians, ms): upload 4.0, transfer 11.0, "
        "decode 7.0, infer 41.0, store 5.0, outside 31.0")
