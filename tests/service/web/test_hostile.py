"""Hostile input: never a 5xx, never a dead worker, never a half-stored record.

Property-based (hypothesis, bounded and derandomised) over raw bodies, multipart bodies
and query parameters, plus the first requests of the reliability script's corpus and
explicit cases (huge claimed dimensions, escaping in pages). Everything goes through
real HTTP to the real app, model worker and database.
"""

from __future__ import annotations

import hashlib
import io
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from service.web import keys
from bench.reliability import corpus
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
