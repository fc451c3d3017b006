"""Hostile input: never a 5xx, never a dead worker, never a half-stored record.

Property-based (hypothesis, bounded and derandomised) over raw bodies, multipart bodies
and query parameters, plus the first requests of the reliability script's corpus and
explicit cases (huge claimed dimensions, escaping in pages). Everything goes through
real HTTP to the real app, model worker and database.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import random
import re
import urllib.parse
import uuid
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from bench.reliability import corpus
from main import init_app
from service.web import keys
from service.web.handlers import pages
from service.web.handlers.docs import load_openapi
from settings import BASE_DIR
from service.workers.pool import DetectorPool

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
IMAGES = corpus.valid_images(seed=5)
IMAGE_TYPES = [ct for _, ct in corpus.FORMATS.values()] + ["image/jpg", "image/x-ms-bmp"]
HOSTILE_TEXT = st.one_of(st.sampled_from(corpus.METACHARACTERS),
                         st.text(max_size=40),
                         st.text(alphabet="'\";<>&%_\\/.\x00\r\n\t -*=()", max_size=30))


async def send(client: Any, method: str, path_qs: str, headers: dict[str, str],
               body: bytes) -> Any:
    url = client.make_url("/").join(URL(path_qs, encoded=True))
    data = io.BytesIO(body) if len(body) > 1 << 20 else body  # large: streamed
    return await client.session.request(method, url, headers=headers, data=data)


async def check(client: Any, pool: DetectorPool, method: str, path_qs: str,
                headers: dict[str, str], body: bytes = b"") -> int:
    """Send one request and check every invariant; return its status."""
    database = client.server.app[keys.db_key]
    pids = [w.pid for w in pool.workers]
    before = await database.fetchval("SELECT count(*) FROM detections")
    response = await send(client, method, path_qs, headers, body)
    status = response.status
    text = await response.text()
    assert status < 500, (method, path_qs[:200], status, text[:300])
    after = await database.fetchval("SELECT count(*) FROM detections")
    if method == "POST":
        if status == 200:
            answer = await response.json()
            records = answer.get("results", [answer])
            assert after - before == len(records)
            for record in records:
                assert record["width"] > 0 and record["height"] > 0
        else:
            assert after == before, "a refused upload stored something"
    if status >= 400 and (method == "POST" or path_qs.startswith("/api")):
        assert response.content_type == "application/json", text[:200]
        error = (await response.json())["error"]
        assert {"code", "message"} <= set(error) <= {"code", "message", "known_labels"}
    assert [w.pid for w in pool.workers] == pids and pool.ready, "a worker died"
    return status


def mutate(data: bytes, rng: random.Random, how: str) -> bytes:
    buffer = bytearray(data)
    if how == "truncate":
        return bytes(buffer[: rng.randrange(0, len(buffer))])
    if how == "flip":
        for _ in range(rng.randint(1, 16)):
            buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
        return bytes(buffer)
    if how == "splice":
        at = rng.randrange(len(buffer))
        return bytes(buffer[:at]) + rng.randbytes(rng.randint(1, 300)) + bytes(buffer[at:])
    if how == "header":
        for _ in range(rng.randint(1, 6)):
            buffer[rng.randrange(min(48, len(buffer)))] = rng.randrange(256)
        return bytes(buffer)
    return rng.randbytes(rng.randint(0, 3000))


@FUZZ
@given(fmt=st.sampled_from(sorted(IMAGES)), how=st.sampled_from(
    ["truncate", "flip", "splice", "header", "noise"]), seed=st.integers(0, 2**32 - 1),
    content_type=st.sampled_from(IMAGE_TYPES))
async def test_fuzzed_image_bodies(client: Any, detector_pool: DetectorPool, fmt: str,
                                   how: str, seed: int, content_type: str) -> None:
    body = mutate(IMAGES[fmt], random.Random(seed), how)
    status = await check(client, detector_pool, "POST", "/detect",
                         {"Content-Type": content_type}, body)
    if how in ("truncate", "noise"):
        assert status in (400, 413, 415)  # never a (silently) half-decoded image


@FUZZ
@given(parts=st.lists(st.tuples(
    st.sampled_from(["image", "image", "file", "", "IMAGE", "conf"]),
    st.one_of(st.none(), HOSTILE_TEXT, st.text(min_size=250, max_size=600)),
    st.sampled_from([None, "image/jpeg", "image/png", "application/octet-stream", "text/html",
                     "multipart/mixed; boundary=q"]),
    st.sampled_from(["jpeg", "png", "webp", "bmp", "empty", "junk"])), min_size=0, max_size=6))
async def test_fuzzed_multipart_bodies(
        client: Any, detector_pool: DetectorPool,
        parts: list[tuple[str, str | None, str | None, str]]) -> None:
    contents = {**IMAGES, "empty": b"", "junk": b"\xff\xd8\xff" + b"\x00" * 50}
    body = corpus.multipart_body(
        [(corpus.part_headers(name, filename, ctype), contents[content])
         for name, filename, ctype, content in parts], b"fuzzboundary")
    status = await check(client, detector_pool, "POST", "/detect",
                         {"Content-Type": "multipart/form-data; boundary=fuzzboundary"}, body)
    if status == 200:  # stored filenames are single, clean path components
        rows = await client.server.app[keys.db_key].fetch("SELECT filename FROM detections")
        for row in rows:
            name = row["filename"]
            assert "/" not in name and "\\" not in name and name not in ("", ".", "..")
            assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in name)
            assert len(name) <= 255


@FUZZ
@given(endpoint=st.sampled_from(sorted(corpus.QUERY_ENDPOINTS)), data=st.data())
async def test_fuzzed_query_parameters(client: Any, detector_pool: DetectorPool,
                                       endpoint: str, data: st.DataObject) -> None:
    names = corpus.QUERY_ENDPOINTS[endpoint]
    values = data.draw(st.dictionaries(st.sampled_from(names), HOSTILE_TEXT, min_size=1))
    raw = data.draw(st.sampled_from(["", *corpus.RAW_PERCENT]))
    query = URL("/").with_query(values).raw_query_string + raw
    if endpoint == "/detect":
        await check(client, detector_pool, "POST", f"/detect?{query}",
                    {"Content-Type": "image/jpeg"}, IMAGES["jpeg"])
    else:
        await check(client, detector_pool, "GET", f"{endpoint}?{query}", {})


@FUZZ
@given(ident=HOSTILE_TEXT, template=st.sampled_from(corpus.ID_PATHS))
async def test_fuzzed_record_ids(client: Any, detector_pool: DetectorPool, ident: str,
                                 template: str) -> None:
    path = template.format(URL.build(path="/" + ident).raw_path.lstrip("/") or "%20")
    status = await check(client, detector_pool, "GET", path, {})
    assert status in (404, 400)


@pytest.mark.parametrize("fmt", sorted(corpus.HUGE_BUILDERS))
async def test_huge_claimed_dimensions_are_refused_before_decoding(
        client: Any, detector_pool: DetectorPool, fmt: str) -> None:
    side = min(corpus.HUGE_LIMITS[fmt], 65535)
    body = corpus.HUGE_BUILDERS[fmt](side, side)
    status = await check(client, detector_pool, "POST", "/detect",
                         {"Content-Type": corpus.FORMATS[fmt][1]}, body)
    assert status == 413


async def test_reliability_corpus_sample(client: Any, detector_pool: DetectorPool) -> None:
    """The script's generated corpus (its first 90 requests: every kind ten times)."""
    statuses = []
    for request in corpus.generate(90, seed=1):
        statuses.append(await check(client, detector_pool, request.method, request.path_qs,
                                    dict(request.headers), request.body))
    assert all(status < 500 for status in statuses)
    assert any(status == 200 for status in statuses) and any(s == 400 for s in statuses)


async def test_pages_escape_hostile_filenames_and_parameters(
        client: Any, detector_pool: DetectorPool) -> None:
    hostile = "<img src=x onerror=alert(1)>'\"&<b>.jpg"
    response = await client.post("/detect", data=IMAGES["png"],
                                 headers={"Content-Type": "image/png"},
                                 params={"filename": hostile})
    assert response.status == 200
    record = await response.json()
    assert record["filename"] == hostile  # one path component: stored as given
    stored = await client.server.app[keys.db_key].fetchval(
        "SELECT filename FROM detections WHERE id = $1::text::uuid", record["id"])
    assert stored == hostile

    pages = {url: await (await client.get(url)).text() for url in (
        "/history", f"/detections/{record['id']}", "/history?" + URL("/").with_query(
            filename=hostile, label="<b>x</b>").raw_query_string)}
    for url, html in pages.items():
        assert "<img src=x" not in html and "<b>" not in html, url
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages["/history"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[f"/detections/{record['id']}"]
    assert hashlib.sha256(IMAGES["png"]).hexdigest() == record["sha256"]


# ---------------------------------------------------------------- every parameter, 10,000 cases
# Every route of the OpenAPI document, with every query parameter the document names or the
# code reads (so a new one is fuzzed without a change here), and values at the edges of
# their types: dates (years 1 and 9999 and beyond, offsets up to +-23:59, leap seconds,
# garbage), cursors (well-formed base64 around extreme times, bad UUIDs, truncated) and
# numbers. Cases run in concurrent batches against one app; HOSTILE_CASES sets how many.

CASES = int(os.environ.get("HOSTILE_CASES", "10000"))
BATCH = 50
_CODE_PARAMETER = re.compile(r"""(?:query|request\.query)(?:\.get\(|,\s*)["']([a-z_]+)["']""")
_DETECT_ROUTES = {"/detect", "/v1/vision/detection", "/v1/vision/custom/{model}"}


def _routes() -> list[tuple[str, str, dict[str, dict[str, Any]]]]:
    """(method, path template, {query parameter: schema}) of every documented operation."""
    routes = []
    for path, item in load_openapi()["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post"):
                parameters = {p["name"]: p.get("schema", {})
                              for p in operation.get("parameters", []) if p["in"] == "query"}
                routes.append((method.upper(), path, parameters))
    return routes


def _code_parameters() -> set[str]:
    """Query parameter names the web code reads (``query.get("x")``, ``params.f(query, "x")``)."""
    names: set[str] = set()
    for source in (BASE_DIR / "service" / "web").rglob("*.py"):
        names.update(_CODE_PARAMETER.findall(source.read_text()))
    return names


ROUTES = _routes()
SCHEMAS: dict[str, dict[str, Any]] = {name: schema for _, _, parameters in ROUTES
                                      for name, schema in parameters.items()}
PARAMETERS = sorted(set(SCHEMAS) | _code_parameters() | set(pages.FILTER_NAMES))

# Plain ``random.Random`` generators (seeded per batch, so a failure is reproduced by
# its batch number): hypothesis's draws cost about 2 ms a case, a third of the run.
YEARS = ["0001", "0000", "9999", "10000", "1970", "2026", "-001", "99999", "0", "１９７０"]
DAYS = ["01-01", "12-31", "02-29", "02-30", "13-01", "00-10", "W01-1", "366", "1231", "06-15",
        "04-31", "1-1"]
TIMES = ["", "T00:00:00", "T23:59:59", "T23:59:60", "T24:00:00", "T23:59:59.999999",
         "T23:59:59.9999999", "T12", "T1200", "t12:00", " 12:00:00", "T12:00:00,5",
         "T25:61:61", "T12:00:00.000000001"]
OFFSETS = ["", "Z", "z", "+14:00", "-14:00", "+23:59", "-23:59", "+24:00", "-24:00", "+00:00",
           "-00:00", "+1400", "-2359", "+14", "+23:59:59", "-23:59:59.999999", "+99:99", "UTC"]
EDGE_DATES = ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00", "9999-12-31",
              "0001-01-01", "9999-12-31T23:59:59.999999-00:01", "2016-12-31T23:59:60Z",
              "1970-01-01T00:00:00+23:59", "20261202", "2026-12-02T", "T12:00"]
UUIDS = ["00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff",
         "00000000-0000-0000-0000", "{12345678-1234-5678-1234-567812345678}",
         "urn:uuid:12345678-1234-5678-1234-567812345678", "12345678123456781234567812345678",
         "not-a-uuid", "", "12345678-1234-5678-1234-56781234567g"]
NUMBERS = ["0", "-0", "1", "0.5", "1.0", "1.0000001", "200", "201", "10000", "10001", "9" * 400,
           "1e309", "-1e309", "1e-400", "nan", "NaN", "inf", "-inf", "0x10", "1_0", "١٢", "²",
           "½", " 5 ", "+5", "5\u00a0", "1e2", "-1", ""]
FLAGS = ["0", "1", "true", "false", "yes", "no", "on", "off", "TRUE", "2", "-1", "", " 1 ", "１"]
NAMES = ["traffic-lights", "stop", "a.jpg", "list"]
# Code points to build text from: ASCII, controls, separators, RTL marks, surrogates,
# non-characters, combining marks, emoji, full-width and other digits.
ALPHABET = ([chr(c) for c in range(32, 127)] + [chr(c) for c in range(0, 32)]
            + ["\x7f", "\x85", "\xa0", "\u2028", "\u202e", "\u200b", "\ufeff", "\ud800",
               "\udfff", "\uffff", "\U0010ffff", "\u0301", "😀", "é", "ß", "Ω", "１", "٣", "²"])


def random_text(rng: random.Random, most: int = 40) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, most)))


def random_date(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.6:
        year = rng.choice(YEARS) if rng.random() < 0.5 else f"{rng.randint(0, 99999):04d}"
        return f"{year}-{rng.choice(DAYS)}{rng.choice(TIMES)}{rng.choice(OFFSETS)}"
    if roll < 0.8:
        return rng.choice(EDGE_DATES)
    if roll < 0.9:
        return "".join(rng.choice("0123456789-:+TZ. tW") for _ in range(rng.randint(0, 32)))
    return random_text(rng, 20)


def random_uuid(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.4:
        return str(uuid.UUID(int=rng.getrandbits(128)))
    if roll < 0.8:
        return rng.choice(UUIDS)
    return random_text(rng)


def random_cursor(rng: random.Random) -> str:
    """Mostly well-formed base64 of ``time|uuid`` around extreme times, or truncated,
    re-padded, in the other alphabet, of random bytes; sometimes not base64 at all."""
    roll = rng.random()
    if roll < 0.6:
        raw = f"{random_date(rng)}|{random_uuid(rng)}{rng.choice(['', '', '|', '|x', chr(0)])}"
        encode = base64.urlsafe_b64encode if rng.random() < 0.8 else base64.b64encode
        token = encode(raw.encode("utf-8", "surrogatepass")).decode()
        token = token if rng.random() < 0.3 else token.rstrip("=")
        return token[:rng.randint(0, len(token))] if rng.random() < 0.2 else token
    if roll < 0.8:
        return base64.urlsafe_b64encode(rng.randbytes(rng.randint(0, 80))).decode()
    if roll < 0.9:
        return "".join(rng.choice("ABCDEFabcdef0123456789-_=+/") for _ in range(rng.randint(0, 90)))
    return random_text(rng, 30)


def random_number(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.6:
        return rng.choice(NUMBERS)
    if roll < 0.8:
        return str(rng.randint(-10**30, 10**30))
    return f"{rng.uniform(-9.99, 9.99)!r}e{rng.randint(-330, 330)}"


def random_any(rng: random.Random) -> str:
    kind = rng.randrange(7)
    return [random_date, random_cursor, random_number, lambda r: r.choice(FLAGS),
            lambda r: r.choice(corpus.METACHARACTERS), random_text,
            lambda r: random_text(r, 260)][kind](rng)


def random_value(rng: random.Random, name: str) -> str:
    """A value at the edges of the parameter's type (two times in three), else any."""
    if rng.random() < 1 / 3:
        return random_any(rng)
    schema = SCHEMAS.get(name, {})
    if name in ("since", "until"):
        return random_date(rng)
    if name == "cursor":
        return random_cursor(rng)
    if schema.get("type") in ("integer", "number"):
        return random_number(rng)
    if "enum" in schema:
        return rng.choice([str(v) for v in schema["enum"]] + FLAGS)
    return rng.choice([*NAMES, *corpus.METACHARACTERS, random_text(rng)])


def _encode(text: str, raw: bool) -> str:
    data = text.encode("utf-8", "surrogatepass")
    return urllib.parse.quote_from_bytes(data, safe="+:" if raw else "")


def random_request(rng: random.Random) -> tuple[str, str]:
    """One (method, path_qs) for any route, with 0-5 query parameters."""
    method, template, _ = rng.choice(ROUTES)
    path = template
    for name in re.findall(r"{(\w+)}", template):
        segment = random_uuid(rng) if name == "id" or rng.random() < 0.5 else \
            rng.choice([*NAMES, random_text(rng)])
        path = path.replace("{" + name + "}", _encode(segment, False) or "%20")
    raw = rng.random() < 0.5
    query = "&".join(f"{_encode(name, False)}={_encode(random_value(rng, name), raw)}"
                     for name in (rng.choice(PARAMETERS) for _ in range(rng.randint(0, 5))))
    if rng.random() < 0.1:
        query += rng.choice(corpus.RAW_PERCENT)
    return method, f"{path}?{query}" if query else path


async def _send_case(client: Any, method: str, path_qs: str) -> tuple[str, int, int]:
    """Send one case; (path_qs, status, records the answer says were stored)."""
    headers: dict[str, str] = {}
    body = b""
    route = path_qs.split("?", 1)[0]
    if method == "POST" and route == "/detect":
        headers, body = {"Content-Type": "image/jpeg"}, IMAGES["jpeg"]
    elif method == "POST" and route.startswith("/v1/vision/") and route != "/v1/vision/custom/list":
        body = corpus.multipart_body([(corpus.part_headers("image", "a.jpg", "image/jpeg"),
                                       IMAGES["jpeg"])], b"fuzzboundary")
        headers = {"Content-Type": "multipart/form-data; boundary=fuzzboundary"}
    response = await send(client, method, path_qs, headers, body)
    async with response:
        # Bytes first: GET /api/export answers a zip.
        text = (await response.read()).decode("utf-8", "replace")
        stored = 0
        if response.status == 200 and method == "POST" and body:
            answer = json.loads(text)
            stored = len(answer.get("results", [answer]))
        elif response.status >= 400 and (method == "POST" or route.startswith("/api/")):
            assert response.content_type == "application/json", (path_qs, text[:200])
            error = json.loads(text)
            assert "error" in error and (route.startswith("/v1/vision/")
                                         or {"code", "message"} <= set(error["error"])
                                         <= {"code", "message", "known_labels"}), text
        return path_qs, response.status, stored


@pytest.fixture
async def roomy_client(make_config: Any, detector_pool: DetectorPool, aiohttp_client: Any) -> Any:
    """The app with room for a whole batch of detections at once (no 503 overloaded)."""
    config = make_config({"workers": {"max_queue": BATCH}})
    return await aiohttp_client(await init_app(config, detector_pool=detector_pool))


async def test_every_parameter_of_every_route_at_the_edges_of_its_type(
        roomy_client: Any, detector_pool: DetectorPool) -> None:
    """HOSTILE_CASES (default 10,000) requests, BATCH at a time, never a 5xx; each batch
    stores exactly the records its answers name, and no worker dies."""
    client = roomy_client
    database = client.server.app[keys.db_key]
    pids = [w.pid for w in detector_pool.workers]
    statuses: Counter[int] = Counter()
    for number in range(max(1, CASES // BATCH)):
        rng = random.Random(number)
        batch = [random_request(rng) for _ in range(BATCH)]
        before = await database.fetchval("SELECT count(*) FROM detections")
        results = await asyncio.gather(*(_send_case(client, method, path_qs)
                                         for method, path_qs in batch))
        failures = [(path_qs, status) for path_qs, status, _ in results if status >= 500]
        assert not failures, (f"batch {number}", failures)
        after = await database.fetchval("SELECT count(*) FROM detections")
        assert after - before == sum(stored for _, _, stored in results), f"batch {number}"
        assert [w.pid for w in detector_pool.workers] == pids and detector_pool.ready
        statuses.update(status for _, status, _ in results)
    # The cases reach the handlers: some are answered, many are refused as bad input.
    assert statuses[200] > 0 and statuses[400] > 0 and sum(statuses.values()) >= CASES, statuses


def test_the_fuzzed_parameters_include_every_one_the_code_reads() -> None:
    """The list is derived, not written out: a parameter added to a handler is in it."""
    assert {"since", "until", "cursor", "limit", "conf", "iou", "max_det", "agnostic",
            "annotated", "min_confidence", "label", "filename", "model"} <= set(PARAMETERS)
    assert {path for _, path, _ in ROUTES} >= {"/api/detections", "/api/stats", "/history",
                                                "/detect", "/detections/{id}/image"}
