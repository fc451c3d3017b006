"""Real counterparts for the event tests: an aiohttp webhook receiver on a real socket
that checks each signature with its own HMAC, and a Mosquitto broker process.

Mosquitto comes from Debian's package (``apt-get install mosquitto``; ``.ci/run``
installs it). Without the binary the MQTT tests skip, except under ``CI``, where they
fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import db
from model.detection import Detection


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until(condition: Callable[[], bool], timeout: float, what: str,
                step: float = 0.05) -> None:
    """Wait for ``condition`` (polled) up to a deadline; fail naming ``what``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(step)


class Receiver:
    """A webhook endpoint on 127.0.0.1:``port`` (``POST /hook``) recording every request
    in arrival order; answers ``status`` (200 unless told otherwise)."""

    def __init__(self, port: int, secret: str | None = None) -> None:
        self.port = port
        self.secret = secret
        self.status = 200
        self.delay = 0.0  # seconds before answering (a slow receiver)
        self.received: list[dict[str, Any]] = []  # bodies, in arrival order
        self.headers: list[dict[str, str]] = []
        self.bad_signatures = 0
        self.slow_requests = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay:
            self.slow_requests += 1
            await asyncio.sleep(self.delay)
            return web.Response(status=200)
        if self.secret is not None:
            expected = "sha256=" + hmac.new(self.secret.encode(), body,
                                            hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, request.headers.get("X-Signature-256", "")):
                self.bad_signatures += 1
                return web.Response(status=401)
        if self.status == 200:
            self.received.append(json.loads(body))
            self.headers.append(dict(request.headers))
        return web.Response(status=self.status)

    async def _moved(self, request: web.Request) -> web.Response:
        """``POST /moved``: a redirect to ``/hook`` (which a sender must not follow)."""
        await request.read()
        raise web.HTTPTemporaryRedirect("/hook")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_post("/moved", self._moved)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def ids(self) -> list[str]:
        return [body["id"] for body in self.received]


class Mosquitto:
    """A Mosquitto broker on 127.0.0.1:``port``, anonymous, its sessions kept in
    ``folder`` across restarts."""

    def __init__(self, folder: Path, port: int) -> None:
        self.port = port
        self.conf = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        # Persistence: a subscriber's session (its subscriptions and the QoS 1 messages
        # queued for it) outlives a restart. As root Mosquitto would switch to its own
        # user, who cannot write here; "user root" keeps it (no effect for others).
        self.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                             f"persistence true\npersistence_location {folder}/\n"
                             "user root\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = mosquitto_binary()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([binary, "-c", str(self.conf)], stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("mosquitto did not listen: " + self.log.read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
        None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed (apt-get install mosquitto); CI needs it")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    return found


def record(labels: Sequence[tuple[str, float]], *, model: str = "service-6cls",
           source: str | None = None) -> db.Record:
    """A record with one box per (label, confidence): made here, not by a model, so that
    which rules it matches is known."""
    names = ["go", "stop", "stopLeft", "goLeft", "warning", "warningLeft"]
    detections = [Detection(label, names.index(label) if label in names else 0, conf,
                            10.0, 10.0, 20.0, 20.0) for label, conf in labels]
    return db.Record(id=uuid.uuid4(), created_at=datetime.now(timezone.utc),
                     filename="made.jpg", sha256=uuid.uuid4().hex * 2, width=64, height=48,
                     model=model, inference_ms=1.0, detections=detections, source=source)
