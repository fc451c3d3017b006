"""``main.main``: a service that cannot start says why in one line and exits 1."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import yaml

import main
from settings import BASE_DIR


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


def test_unreachable_database_is_one_error_line_and_exit_1(
        model_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    raw = yaml.safe_load((BASE_DIR / "config" / "test.yaml").read_text())
    raw["models"]["service-6cls"]["weights"] = str(model_weights)
    raw["storage"] = {"spool_dir": str(tmp_path / "spool")}
    config = tmp_path / "service.yaml"
    config.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{closed_port()}/yolo")

    assert main.main(["--config", str(config), "--port", str(closed_port())]) == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].getMessage().startswith("cannot start: ")
    assert "Connect" in errors[0].getMessage() and errors[0].exc_info is None


def test_a_port_in_use_is_reported_before_anything_starts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # A config whose database and model would take seconds to start (or fail): the
        # port is checked first, so nothing else starts.
        caplog.set_level(logging.DEBUG)
        assert main.main(["--config", str(BASE_DIR / "config" / "config.yaml"),
                          "--host", "127.0.0.1", "--port", str(port)]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "Address already in use" in errors[0], errors
    started = [r.name for r in caplog.records
               if r.name.split(".")[0] in ("db", "service", "utils", "aiohttp")]
    assert not started, started


def test_main_refuses_bad_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = yaml.safe_load((BASE_DIR / "config" / "test.yaml").read_text())
    raw["workers"]["max_workers"] = -3
    raw["models"]["service-6cls"]["weights"] = str(BASE_DIR / "tests/data/service-6cls.cfg")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main.main(["--config", str(path)]) == 2
    assert "workers.max_workers: must be a positive integer" in caplog.text
