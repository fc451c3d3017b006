"""Slow clients cannot take the service: trickled bodies, idle and half-sent connections,
forms of countless parts.

Everything runs against the real app on a real socket (``aiohttp_client`` serves it on
127.0.0.1 with ``main.server_options``, as ``main.py`` does); the slow clients are raw
asyncio sockets, so nothing in a client library smooths what they send.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from main import init_app, server_options
from service.web import keys
from service.web.uploads import max_parts
from service.workers.pool import DetectorPool

TRICKLERS = 16
IDLE_S = 1.0  # idle_timeout for the connection tests (the default is 15 s)


@pytest.fixture
async def serve(make_config: Callable[..., Any], detector_pool: DetectorPool,
                aiohttp_client: Any) -> Callable[..., Any]:
    async def build(overrides: dict[str, Any] | None = None) -> Any:
        config = make_config(overrides)
        server = TestServer(await init_app(config, detector_pool=detector_pool))
        await server.start_server(**server_options(config))  # TestServer(**kw) drops them
        return await aiohttp_client(server)

    return build


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: status, headers, body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the server closes the connection (reads what it sends meanwhile)."""
    started = time.monotonic()
    async with asyncio.timeout(limit):
        while await reader.read(65536):
            pass
    return time.monotonic() - started


@dataclass
class Trickler:
    """An upload that sends its body 1 byte per second, and again when refused."""

    host: str
    port: int
    path: str = "/detect"
    content_type: str = "image/jpeg"
    length: int = 100_000
    statuses: list[int] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                writer.write(f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             f"Content-Type: {self.content_type}\r\n"
                             f"Content-Length: {self.length}\r\n\r\n".encode())
                answer = asyncio.ensure_future(read_response(reader))
                while not answer.done() and not stop.is_set():
                    writer.write(b"\xff")
                    await writer.drain()
                    await asyncio.wait([answer], timeout=1.0)
                if answer.done():
                    status, _, body = answer.result()
                    self.statuses.append(status)
                    self.bodies.append(json.loads(body))
                else:
                    answer.cancel()
            except ConnectionError:
                pass
            finally:
                writer.close()


async def test_normal_requests_are_served_while_16_uploads_trickle(
        serve: Callable[..., Any], portrait_jpeg: bytes) -> None:
    # 16 places in progress: as many as there are tricklers.
    client = await serve({"workers": {"max_queue": 15}})
    admission = client.server.app[keys.servers_key].default.admission
    receiving = client.server.app[keys.receiving_key]
    assert admission.limit == TRICKLERS
    stop = asyncio.Event()
    tricklers = [Trickler(client.host, client.port) for _ in range(TRICKLERS)]
    tasks = [asyncio.create_task(t.run(stop)) for t in tricklers]
    try:
        deadline = time.monotonic() + 10
        while receiving.receiving < TRICKLERS:
            assert time.monotonic() < deadline, "the tricklers never all connected"
            await asyncio.sleep(0.05)
        # Requests for the next 7 s: past the tricklers' first refusal and reconnection.
        latencies = []
        for _ in range(6):
            started = time.monotonic()
            response = await client.post("/detect", data=portrait_jpeg,
                                         headers={"Content-Type": "image/jpeg"})
            latencies.append(time.monotonic() - started)
            assert response.status == 200, await response.text()
            assert receiving.receiving >= TRICKLERS - 1 or any(t.statuses for t in tricklers)
            await asyncio.sleep(1.2)
        assert max(latencies) < 5.0, latencies
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    # Each trickler was cut off with a JSON 408, and none held a model place.
    assert all(408 in t.statuses for t in tricklers), [t.statuses for t in tricklers]
    assert all(set(s) == {408} for s in (t.statuses for t in tricklers))
    assert tricklers[0].bodies[0]["error"]["code"] == "request_timeout"
    assert "too slowly" in tricklers[0].bodies[0]["error"]["message"]
    assert admission.in_progress == 0
    deadline = time.monotonic() + 5  # the tricklers have just hung up: noticed at once
    while receiving.receiving:
        assert time.monotonic() < deadline, receiving.snapshot()
        await asyncio.sleep(0.05)


async def test_uploads_beyond_max_uploads_are_refused_at_once(
        serve: Callable[..., Any], portrait_jpeg: bytes) -> None:
    client = await serve({"server": {"max_uploads": 2}})
    admission = client.server.app[keys.receiving_key]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(Trickler(client.host, client.port).run(stop))
             for _ in range(2)]
    try:
        deadline = time.monotonic() + 10
        while admission.receiving < 2:
            assert time.monotonic() < deadline, "the tricklers never connected"
            await asyncio.sleep(0.05)
        response = await client.post("/detect", data=portrait_jpeg,
                                     headers={"Content-Type": "image/jpeg"})
        assert response.status == 503 and response.headers["Retry-After"] == "1"
        assert (await response.json())["error"]["code"] == "overloaded"
        assert admission.snapshot()["receive_limit"] == 2
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_a_trickled_small_form_gets_408(serve: Callable[..., Any]) -> None:
    """request.post() (DeepStack's model list, the sign-in form) is paced too."""
    client = await serve({"server": {"upload_grace": 0.5}})
    trickler = Trickler(client.host, client.port, path="/v1/vision/custom/list",
                        content_type="multipart/form-data; boundary=b", length=10_000)
    stop = asyncio.Event()
    task = asyncio.create_task(trickler.run(stop))
    deadline = time.monotonic() + 10
    while not trickler.statuses:
        assert time.monotonic() < deadline, "no answer to the trickled form"
        await asyncio.sleep(0.05)
    stop.set()
    await task
    assert trickler.statuses[0] == 408
    assert trickler.bodies[0]["success"] is False  # DeepStack's error shape


async def test_too_many_parts_are_refused_at_the_first_part_too_many(
        serve: Callable[..., Any], portrait_jpeg: bytes) -> None:
    """The body claims more than it sends: the parts, then a part that never ends. The
    server answers 413 once the first part too many has arrived, without waiting for the
    rest (the client sends no more). aiohttp's part reader reads ahead, hence the filler
    after the parts."""
    client = await serve()
    config = client.server.app[keys.config_key]
    most = max_parts(config.server.max_files)
    part = b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\nv\r\n"
    body = part * (most + 2) + b"--b\r\nContent-Disposition: form-data; name=y\r\n\r\n" \
        + b"y" * 300_000
    for path, code in (("/detect", "too_many_parts"), ("/v1/vision/custom/list", None)):
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Content-Type: multipart/form-data; boundary=b\r\n"
                     f"Content-Length: {len(body) + 500_000}\r\n\r\n".encode() + body)
        await writer.drain()
        async with asyncio.timeout(10):  # the rest never comes: no answer would hang
            status, _, answer = await read_response(reader)
        writer.close()
        assert status == 413, (path, answer)
        if code is not None:
            assert json.loads(answer)["error"]["code"] == code
            assert f"more than {most} parts" in json.loads(answer)["error"]["message"]
    # A form of exactly the most parts is still read (and answered on its merits).
    fields = b"".join(b"--b\r\nContent-Disposition: form-data; name=f%d\r\n\r\nv\r\n" % i
                      for i in range(most - 1))
    image = (b"--b\r\nContent-Disposition: form-data; name=image; filename=a.jpg\r\n"
             b"Content-Type: image/jpeg\r\n\r\n" + portrait_jpeg + b"\r\n--b--\r\n")
    response = await client.post("/detect", data=fields + image,
                                 headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status == 200, await response.text()


async def test_idle_and_half_sent_connections_are_closed(serve: Callable[..., Any]) -> None:
    client = await serve({"server": {"idle_timeout": IDLE_S}})

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(client.host, client.port)

    # Nothing sent at all.
    reader, writer = await connect()
    assert IDLE_S * 0.8 <= await closed_after(reader, IDLE_S + 5) <= IDLE_S + 2
    writer.close()

    # Idle after a response on a kept-alive connection.
    reader, writer = await connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers.get("connection", "").lower() != "close"
    assert IDLE_S * 0.8 <= await closed_after(reader, IDLE_S + 5) <= IDLE_S + 2
    writer.close()

    # Half a request head, then silence.
    reader, writer = await connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0")
    assert IDLE_S * 0.8 <= await closed_after(reader, IDLE_S + 5) <= IDLE_S + 2
    writer.close()

    # A head trickled a byte at a time: the bytes do not move the deadline on.
    reader, writer = await connect()
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000

    async def trickle() -> None:
        for byte in head:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)

    sending = asyncio.create_task(trickle())
    try:
        assert await closed_after(reader, IDLE_S + 5) <= IDLE_S + 2
    finally:
        sending.cancel()
        writer.close()

    # Connections that do their work are unaffected.
    response = await client.get("/healthz")
    assert response.status == 200
