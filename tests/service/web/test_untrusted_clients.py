"""What an attacker on the same network can do (issue 25's table), each row against the
real app on a real socket: header credentials judged before any body, small forms,
anonymous DeepStack bodies in a budget of their own, hosts and origins, sessions, Expect,
the connection cap. The memory rows (RSS of a real ``main.py``) are in
``test_upload_memory.py``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from main import init_app, server_options
from service.web import keys
from service.web.auth import COOKIE_NAME
from service.web.connections import listen
from service.web.sessions import token_sessions
from service.web.tokens import create_token, revoke_token, token_hash
from service.workers.pool import DetectorPool
from tests.service.web.test_slow_clients import read_response

JPEG = {"Content-Type": "image/jpeg"}
HUGE_FORM_BYTES = 19 * 1024 * 1024


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


@pytest.fixture
async def serve(make_config: Callable[..., Any], detector_pool: DetectorPool,
                aiohttp_client: Any, tmp_path: Path) -> Callable[..., Any]:
    """A client of the real app on 127.0.0.1 (``host``: another address), served with
    ``main.server_options``; each instance its own spool, all on the test's database."""
    built: list[Any] = []

    async def build(overrides: dict[str, Any] | None = None, host: str = "127.0.0.1") -> Any:
        spool = {"storage": {"spool_dir": str(tmp_path / f"spool-{len(built)}")}}
        config = make_config({**(overrides or {}), **spool})
        server = TestServer(await init_app(config, detector_pool=detector_pool), host=host)
        await server.start_server(**server_options(config))
        built.append(server)
        return await aiohttp_client(server)

    return build


@pytest.fixture
async def secured(serve: Callable[..., Any], tokens_file: Path) -> tuple[Any, str]:
    token = create_token(tokens_file, "ci")
    return await serve({"auth": {"tokens_file": str(tokens_file)}}), token


async def records(client: Any) -> int:
    return int(await client.server.app[keys.db_key].fetchval("SELECT count(*) FROM detections"))


async def raw_request(client: Any, head: str, body: bytes = b"",
                      limit: float = 10.0) -> tuple[int, dict[str, str], bytes, float]:
    """Send a request head (and the start of a body) on a raw socket; the answer and
    the seconds it took. The rest of a declared body is never sent."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    started = time.monotonic()
    try:
        writer.write(head.encode() + body)
        await writer.drain()
        async with asyncio.timeout(limit):
            status, headers, answer = await read_response(reader)
        return status, headers, answer, time.monotonic() - started
    finally:
        writer.close()


# ---------------------------------------------------------------- bodies without credentials

@pytest.mark.parametrize("path", ["/login", "/v1/vision/custom/list"])
async def test_a_huge_anonymous_form_is_refused_before_its_body(
        secured: tuple[Any, str], path: str) -> None:
    """Row 1 and 2: a 19 MB urlencoded form gets 413 as soon as its head is in (only 64 KiB
    of it is ever sent), and the connection is closed rather than drained."""
    client, _ = secured
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {HUGE_FORM_BYTES}\r\n\r\n")
    status, headers, body, _ = await raw_request(client, head, b"token=" + b"a" * 65536)
    assert status == 413, body
    assert headers.get("connection") == "close"
    # Undeclared length (chunked): refused once 16 KiB are in.
    chunk = b"a" * 32768
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    status, _, body, _ = await raw_request(
        client, head, b"%x\r\n" % len(chunk) + chunk + b"\r\n")
    assert status == 413, body


async def test_a_small_sign_in_form_still_works(secured: tuple[Any, str]) -> None:
    client, token = secured
    response = await client.post("/login", data={"token": token, "next": "/history"},
                                 allow_redirects=False)
    assert response.status == 303 and COOKIE_NAME in response.cookies


async def test_anonymous_deepstack_uploads_take_no_place_a_signed_in_user_needs(
        secured: tuple[Any, str], portrait_jpeg: bytes) -> None:
    """Row 3: 64 anonymous DeepStack uploads trickling 32 KiB every 0.5 s (fast enough
    for the pace) fill only the anonymous budget (8 places; the rest 503 at once); a
    signed-in /detect is served meanwhile, and so is a DeepStack upload with a header
    token."""
    client, token = secured
    app = client.server.app
    anonymous = app[keys.anonymous_receiving_key]
    statuses: list[int] = []
    stop = asyncio.Event()

    async def trickle() -> None:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(b"POST /v1/vision/detection HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 1900000\r\n\r\n--b\r\nContent-Disposition: form-data; "
                     b'name="image"; filename="a.jpg"\r\n\r\n')
        answer = asyncio.ensure_future(read_response(reader))
        try:
            while not answer.done() and not stop.is_set():
                writer.write(b"\xff" * 32768)
                await writer.drain()
                await asyncio.wait([answer], timeout=0.5)
            if answer.done():
                statuses.append(answer.result()[0])
        except ConnectionError:
            pass
        finally:
            answer.cancel()
            writer.close()

    tasks = [asyncio.create_task(trickle()) for _ in range(64)]
    try:
        deadline = time.monotonic() + 20
        while anonymous.receiving < 8 or len(statuses) < 56:
            assert time.monotonic() < deadline, (anonymous.snapshot(), statuses)
            await asyncio.sleep(0.05)
        assert statuses == [503] * 56 and anonymous.receiving == 8
        assert app[keys.receiving_key].receiving == 0
        bearer = {"Authorization": f"Bearer {token}"}
        response = await client.post("/detect", data=portrait_jpeg, headers={**JPEG, **bearer})
        assert response.status == 200, await response.text()
        data = aiohttp.FormData()
        data.add_field("image", portrait_jpeg, filename="a.jpg", content_type="image/jpeg")
        response = await client.post("/v1/vision/detection", data=data, headers=bearer)
        assert response.status == 200, await response.text()
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_a_wrong_api_key_ends_the_read_at_once(secured: tuple[Any, str]) -> None:
    """An anonymous DeepStack form whose api_key comes first (as deepstack-python sends
    it) is refused when that field is in, not after the image."""
    client, _ = secured
    start = (b'--b\r\nContent-Disposition: form-data; name="api_key"\r\n\r\nyolo_wrong\r\n'
             b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
             + b"\xff" * 200_000)
    head = ("POST /v1/vision/detection HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 1900000\r\n\r\n")
    status, _, body, _ = await raw_request(client, head, start)
    assert status == 401, body


@pytest.mark.parametrize("bad", ["wrong", "revoked"])
async def test_deepstack_judges_a_bearer_header_alone(
        secured: tuple[Any, str], tokens_file: Path, portrait_jpeg: bytes, bad: str) -> None:
    """Row 11: a valid api_key with a wrong (or revoked) bearer header: 401, before the
    body is read."""
    client, token = secured
    header = "yolo_wrong"
    if bad == "revoked":
        header = create_token(tokens_file, "old")
        revoke_token(tokens_file, "old")
    data = aiohttp.FormData()
    data.add_field("api_key", token)
    data.add_field("image", portrait_jpeg, filename="a.jpg", content_type="image/jpeg")
    response = await client.post("/v1/vision/detection", data=data,
                                 headers={"Authorization": f"Bearer {header}"})
    assert response.status == 401
    assert (await response.json())["success"] is False
    assert await records(client) == 0


# ---------------------------------------------------------------- hosts and origins

async def test_dns_rebinding_is_refused_by_the_host_allowlist(
        serve: Callable[..., Any]) -> None:
    """Row 4, default config (access control off): Host: evil.example gets 421; the
    loopback names and the address served answer; a malformed Host gets 400."""
    client = await serve()
    for host, status in (("evil.example", 421), ("evil.example:8080", 421),
                         (f"localhost:{client.port}", 200), (f"127.0.0.1:{client.port}", 200),
                         ("[::1]", 200), ("bad host", 400), ("[zz]", 400)):
        response = await client.get("/api/detections", headers={"Host": host})
        assert response.status == status, host
        if status != 200:
            assert (await response.json())["error"]["code"] in ("misdirected_request",
                                                                "bad_host")
    allowing = await serve({"server": {"allowed_hosts": ["detect.example.org"]}})
    assert (await allowing.get("/api/detections",
                               headers={"Host": "detect.example.org"})).status == 200
    assert (await allowing.get("/api/detections",
                               headers={"Host": "127.0.0.1"})).status == 421


async def test_cross_site_posts_are_refused_without_access_control(
        serve: Callable[..., Any], portrait_jpeg: bytes) -> None:
    """Row 5, default config: a page of another site posting a raw JPEG as text/plain (no
    CORS preflight) is refused, nothing stored; curl (no Origin) is served."""
    client = await serve()
    here = f"http://127.0.0.1:{client.port}"
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}, {"Origin": "null"},
                    {"Origin": f"http://127.0.0.1:{client.port + 1}"}):
        response = await client.post("/detect", data=portrait_jpeg,
                                     headers={"Content-Type": "text/plain", **headers})
        assert response.status == 403, headers
        assert (await response.json())["error"]["code"] == "cross_origin"
    assert await records(client) == 0
    for headers in ({}, {"Origin": here, "Sec-Fetch-Site": "same-origin"}):
        response = await client.post("/detect", data=portrait_jpeg, headers={**JPEG, **headers})
        assert response.status == 200, headers
    assert await records(client) == 2


async def test_a_session_cookie_needs_the_same_origin(
        secured: tuple[Any, str], portrait_jpeg: bytes) -> None:
    """Row 6: signed in by cookie, a POST from another origin (another port of the same
    site included) is refused on /detect and DeepStack; the same origin works."""
    client, token = secured
    assert (await client.post("/login", data={"token": token},
                              allow_redirects=False)).status == 303
    for origin in ("http://evil.example", f"http://127.0.0.1:{client.port + 1}"):
        response = await client.post("/detect", data=portrait_jpeg,
                                     headers={**JPEG, "Origin": origin})
        assert response.status == 403, origin
        data = aiohttp.FormData()
        data.add_field("image", portrait_jpeg, filename="a.jpg", content_type="image/jpeg")
        response = await client.post("/v1/vision/detection", data=data,
                                     headers={"Origin": origin})
        assert response.status == 403, origin
    assert await records(client) == 0
    response = await client.post("/detect", data=portrait_jpeg,
                                 headers={**JPEG, "Origin": f"http://127.0.0.1:{client.port}"})
    assert response.status == 200
    assert await records(client) == 1


@pytest.mark.parametrize("origin", ["http://[", "http://127.0.0.1:99999", "http://a b",
                                    "javascript:x", "http://[::1", "\u00ff"])
async def test_malformed_origins_get_403_not_500(secured: tuple[Any, str], origin: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Row 7."""
    client, token = secured
    headers = {"Origin": origin.encode("utf-8").decode("latin-1")}
    response = await client.post("/login", data={"token": token}, headers=headers,
                                 allow_redirects=False)
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "cross_origin"
    assert "Traceback" not in caplog.text


async def test_sign_in_on_an_ipv6_literal_host(serve: Callable[..., Any],
                                               tokens_file: Path) -> None:
    """Row 8: served on [::1], the browser's Origin http://[::1]:port is this origin."""
    token = create_token(tokens_file, "v6")
    client = await serve({"auth": {"tokens_file": str(tokens_file)}, "server": {"host": "::1"}},
                         host="::1")
    here = f"http://[::1]:{client.port}"
    response = await client.post("/login", data={"token": token},
                                 headers={"Origin": here, "Sec-Fetch-Site": "same-origin"},
                                 allow_redirects=False)
    assert response.status == 303, await response.text()
    assert (await client.get("/api/stats")).status == 200


# ---------------------------------------------------------------- sessions

async def test_one_token_signing_in_again_and_again_ends_only_its_own_sessions(
        serve: Callable[..., Any], tokens_file: Path) -> None:
    """Row 9 (per-token limit 5, 40 sign-ins): the other user's session lives on."""
    mine, theirs = create_token(tokens_file, "mine"), create_token(tokens_file, "theirs")
    config = {"auth": {"tokens_file": str(tokens_file), "max_sessions_per_token": 5}}
    victim, attacker = await serve(config), await serve(config)
    assert (await victim.post("/login", data={"token": theirs},
                              allow_redirects=False)).status == 303
    first = None
    for _ in range(40):
        response = await attacker.post("/login", data={"token": mine}, allow_redirects=False)
        assert response.status == 303
        first = first or response.cookies[COOKIE_NAME].value
    assert (await victim.get("/api/stats")).status == 200
    pool = victim.server.app[keys.db_key]
    assert await token_sessions(pool, token_hash(mine)) == 5
    assert await token_sessions(pool, token_hash(theirs)) == 1
    # The attacker's own first session was the one ended.
    response = await attacker.get("/api/stats", cookies={COOKIE_NAME: first})
    assert response.status == 401


async def test_sessions_work_on_every_instance(serve: Callable[..., Any],
                                               tokens_file: Path) -> None:
    """Issue 22: two instances on one database (no sticky sessions): a session opened on
    one is honoured by the other, and signing out on the other ends it on both."""
    token = create_token(tokens_file, "web")
    config = {"auth": {"tokens_file": str(tokens_file)}}
    one, two = await serve(config), await serve(config)
    response = await one.post("/login", data={"token": token}, allow_redirects=False)
    cookie = {COOKIE_NAME: response.cookies[COOKIE_NAME].value}
    assert (await two.get("/api/stats", cookies=cookie)).status == 200
    assert (await two.post("/logout", cookies=cookie, allow_redirects=False)).status == 303
    for client in (one, two):
        assert (await client.get("/api/stats", cookies=cookie)).status == 401


# ---------------------------------------------------------------- Expect: 100-continue

@pytest.mark.parametrize(("path", "auth", "status"), [
    ("/detect", False, 401), ("/detect", True, 413), ("/login", False, 413),
    ("/v1/vision/detection", True, 413)])
async def test_expect_100_continue_is_refused_without_a_100(
        secured: tuple[Any, str], path: str, auth: bool, status: int) -> None:
    """Row 10: Content-Length 100 MiB with Expect: 100-continue gets its 413 or 401 at once
    (no 100 first, no body sent); a body that will be read gets its 100."""
    client, token = secured
    credentials = f"Authorization: Bearer {token}\r\n" if auth else ""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{credentials}"
            "Content-Type: multipart/form-data; boundary=b\r\nExpect: 100-continue\r\n"
            f"Content-Length: {100 * 1024 * 1024}\r\n\r\n")
    answer, _, body, _ = await raw_request(client, head)
    assert answer == status, body


async def test_expect_100_continue_is_sent_when_the_body_is_wanted(
        secured: tuple[Any, str], portrait_jpeg: bytes) -> None:
    client, token = secured
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(f"POST /detect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: Bearer {token}\r\nContent-Type: image/jpeg\r\n"
                     f"Expect: 100-continue\r\nContent-Length: {len(portrait_jpeg)}\r\n"
                     "\r\n".encode())
        async with asyncio.timeout(10):
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100 Continue")
            writer.write(portrait_jpeg)
            status, _, _ = await read_response(reader)
        assert status == 200
    finally:
        writer.close()


# ---------------------------------------------------------------- connections

async def test_connections_beyond_the_cap_are_refused_and_logged(
        make_config: Callable[..., Any], detector_pool: DetectorPool,
        caplog: pytest.LogCaptureFixture) -> None:
    """Item 7: with server.max_connections 20, the 21st connection gets a 503 and is
    closed; once some close, new ones are served again."""
    config = make_config({"server": {"max_connections": 20}})
    runner = web.AppRunner(await init_app(config, detector_pool=detector_pool),
                           **server_options(config))
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    listener = await listen(runner, sock, config.server.max_connections)
    port = sock.getsockname()[1]
    held = []
    try:
        for _ in range(20):
            held.append(await asyncio.open_connection("127.0.0.1", port))
        deadline = time.monotonic() + 10
        while len(runner.server.connections) < 20:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(10):
            status, headers, _ = await read_response(reader)
            assert status == 503 and headers["connection"] == "close"
            assert await reader.read() == b""  # closed
        writer.close()
        assert "connection limit reached: 20 connections open" in caplog.text
        for _, held_writer in held[:5]:
            held_writer.close()
        deadline = time.monotonic() + 10
        while len(runner.server.connections) > 15:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
    finally:
        for _, held_writer in held:
            held_writer.close()
        listener.close()
        await runner.cleanup()
        sock.close()
