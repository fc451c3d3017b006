"""The peer benchmark's pure parts: what LitServe is given, how turns are pooled and
compared. No timing assertions: ``python -m bench.peers`` is run by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from bench._service import PROJECT_ROOT
from bench.common import percentile
from bench.load import Sample
from bench.peers import OURS, THEIRS, Turn, format_report, model_settings, pooled


def test_litserve_gets_the_shipped_models_settings(tmp_path: Path) -> None:
    base = yaml.safe_load((PROJECT_ROOT / "config" / "config.yaml").read_text())
    settings = model_settings(base, tmp_path)
    entry = next(iter(base["models"].values()))
    assert settings.model.cfg == PROJECT_ROOT / entry["cfg"]
    assert settings.model.weights == PROJECT_ROOT / entry["weights"]
    assert settings.workers == base["workers"]["max_workers"]
    assert settings.max_batch_size == base["workers"]["max_batch_size"]
    assert settings.batch_timeout_s == base["workers"]["max_queue_delay_ms"] / 1000
    assert settings.agnostic is entry.get("agnostic_nms", base["workers"]["agnostic_nms"])
    assert settings.conf_thres == base["workers"]["conf_thres"]


def turn(server: str, round_: int, latencies_ms: list[float], window_s: float) -> Turn:
    t = Turn(server, round_)
    t.levels[4] = [Sample(0.0, ms / 1e3, "200") for ms in latencies_ms] + [Sample(0, 1, "503")]
    t.windows[4] = window_s
    t.images_per_s[4] = len(latencies_ms) / window_s
    t.idle_cpu_pct = {"server": 1.5}
    return t


def test_turns_are_pooled_and_compared() -> None:
    rng = np.random.default_rng(1)
    a1, a2 = list(rng.uniform(10, 20, 30)), list(rng.uniform(10, 30, 50))
    b1, b2 = list(rng.uniform(20, 40, 20)), list(rng.uniform(20, 40, 20))
    turns = [turn(OURS, 1, a1, 10), turn(THEIRS, 1, b1, 10),
             turn(OURS, 2, a2, 10), turn(THEIRS, 2, b2, 10)]
    ours = pooled([t for t in turns if t.server == OURS], 4)
    assert ours.images_per_s == pytest.approx(80 / 20)
    assert ours.p50_ms == pytest.approx(percentile(a1 + a2, 50))
    assert ours.p99_ms == pytest.approx(percentile(a1 + a2, 99))
    assert (ours.ok, ours.errors) == (80, 2)
    assert ours.per_turn == [pytest.approx(3.0), pytest.approx(5.0)]
    theirs = pooled([t for t in turns if t.server == THEIRS], 4)
    table = format_report(turns, [4])
    ratio = next(line for line in table.splitlines() if f"{OURS}/{THEIRS}" in line).split()
    assert float(ratio[2]) == pytest.approx(ours.images_per_s / theirs.images_per_s, abs=1e-3)
    assert float(ratio[3]) == pytest.approx(ours.p50_ms / theirs.p50_ms, abs=1e-3)
    assert table.count("round") == 4 and "server 1.50" in table
