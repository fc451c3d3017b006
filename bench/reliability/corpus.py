"""A generated corpus of hostile HTTP requests (deterministic for a given seed).

Every request here must get a 4xx with a JSON error, or — for a damaged image that still
decodes — a 200 with a complete record; never a 5xx, never a dead worker, never a
half-stored record. Kinds:

- ``truncated``, ``corrupted``: JPEG, PNG, WebP and BMP files cut short, with bytes
  flipped, spliced or zeroed;
- ``random_bytes``: noise (optionally behind a real magic number) sent as an image;
- ``huge_dimensions``: headers that claim up to 2^31 pixels a side;
- ``empty``: zero-byte bodies and parts;
- ``multipart``: missing, repeated, misnamed and mistyped fields, nested and broken
  bodies, oversized fields;
- ``filename``: path traversal, control characters, HTML and SQL in filenames, very long
  names (the image itself is valid);
- ``query``: SQL and HTML metacharacters, NULs, bad percent-encoding and huge values in
  every query parameter and path id of every endpoint;
- ``content_type``: images sent as text, JSON or forms.

The header builders are used by the test suite too.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

FORMATS = {"jpeg": (".jpg", "image/jpeg"), "png": (".png", "image/png"),
           "bmp": (".bmp", "image/bmp"), "webp": (".webp", "image/webp")}
METACHARACTERS = [
    "' OR '1'='1", "'; DROP TABLE detections; --", "\" OR 1=1 --", "1; SELECT pg_sleep(5)",
    "%' AND 1=0 UNION SELECT NULL --", "\\", "%", "_", "'", "\"", ";", "--", "/*", "*/",
    "<script>alert(1)</script>", "\"><img src=x onerror=alert(1)>", "<!--", "]]>",
    "{{7*7}}", "${7*7}", "{% raw %}", "&amp;&lt;", "javascript:alert(1)",
    "../../../../etc/passwd", "..\\..\\windows\\win.ini", "/dev/zero", "\x00", "\x1b[31m",
    "\r\nSet-Cookie: x=1", "\u202e\u0000", "😀" * 3, "ÿþ", "\ud800", "NaN", "-Infinity", "1e309",
    "9" * 400, "0x10", "-1", "2024-13-45", "2024-02-30T25:61:00", "", " ", "null",
]
RAW_PERCENT = ["%00", "%ff%fe", "%ED%A0%80", "%zz", "%", "%%32%35", "%C0%AF", "%E2%80%AE"]
QUERY_ENDPOINTS = {
    "/detect": ["conf", "iou", "filename"],
    "/api/detections": ["label", "since", "until", "min_confidence", "filename", "limit",
                        "cursor"],
    "/api/stats": ["since", "until"],
    "/history": ["label", "since", "until", "min_confidence", "filename", "cursor"],
    "/": ["x"],
}
ID_PATHS = ["/api/detections/{}", "/detections/{}", "/detections/{}/image"]


@dataclass(frozen=True)
class HostileRequest:
    """One request: ``path_qs`` is already percent-encoded as it goes on the wire."""

    kind: str
    method: str
    path_qs: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


# ---------------------------------------------------------------- valid images and headers

def valid_images(seed: int = 0, size: tuple[int, int] = (96, 72)) -> dict[str, bytes]:
    """A small textured image in each accepted format."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = cv2.resize(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8),
                       (width, height), interpolation=cv2.INTER_CUBIC)
    cv2.circle(image, (width // 2, height // 2), min(width, height) // 4, (0, 0, 255), -1)
    images = {}
    for name, (ext, _) in FORMATS.items():
        ok, data = cv2.imencode(ext, image)
        if not ok:
            raise RuntimeError(f"cannot encode a {name} image")
        images[name] = data.tobytes()
    return images


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def huge_png(width: int, height: int) -> bytes:
    """A PNG header (valid CRCs) claiming width x height, with a token IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def huge_bmp(width: int, height: int) -> bytes:
    """A BMP header claiming width x height (24 bit), with a few pixels of data."""
    pixels = b"\x00" * 64
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    header = struct.pack("<2sIHHI", b"BM", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return header + info + pixels


def huge_jpeg(width: int, height: int) -> bytes:
    """A baseline JPEG whose SOF0 claims width x height (up to 65535), no real scan."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    segment = b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof
    sos = b"\xff\xda" + struct.pack(">H", 12) + b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + segment + sos + b"\x00" * 32 + b"\xff\xd9"


def huge_webp(width: int, height: int) -> bytes:
    """An extended WebP (VP8X) whose canvas claims width x height (up to 2^24)."""
    vp8x = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") \
        + (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    body = b"WEBP" + chunk
    return b"RIFF" + struct.pack("<I", len(body)) + body


HUGE_BUILDERS: dict[str, Callable[[int, int], bytes]] = {
    "png": huge_png, "bmp": huge_bmp, "jpeg": huge_jpeg, "webp": huge_webp}
HUGE_LIMITS = {"png": 2**31 - 1, "bmp": 2**31 - 1, "jpeg": 65535, "webp": 2**24}


def multipart_body(parts: list[tuple[bytes, bytes]], boundary: bytes) -> bytes:
    """A multipart body from (raw header block, content) pairs, headers written verbatim."""
    out = b""
    for headers, content in parts:
        out += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def part_headers(name: str, filename: str | None, content_type: str | None) -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    lines = [disposition] + ([f"Content-Type: {content_type}"] if content_type else [])
    return "\r\n".join(lines).encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------- generators

def _raw(kind: str, body: bytes, content_type: str, query: str = "") -> HostileRequest:
    return HostileRequest(kind, "POST", "/detect" + (f"?{query}" if query else ""),
                          (("Content-Type", content_type),), body)


def _form(kind: str, parts: list[tuple[bytes, bytes]], rng: random.Random) -> HostileRequest:
    boundary = f"----hostile{rng.getrandbits(48):012x}".encode()
    return HostileRequest(kind, "POST", "/detect",
                          (("Content-Type", f"multipart/form-data; boundary={boundary.decode()}"),),
                          multipart_body(parts, boundary))


def _pick_format(rng: random.Random) -> str:
    return rng.choice(list(FORMATS))


def truncated(rng: random.Random, images: dict[str, bytes]) -> HostileRequest:
    fmt = _pick_format(rng)
    data = images[fmt]
    cut = rng.choice([1, 2, 3, 8, 16, 30, len(data) // 2, len(data) - 2, len(data) - 1,
                      rng.randrange(1, len(data))])
    return _raw("truncated", data[:cut], FORMATS[fmt][1])


def corrupted(rng: random.Random, images: dict[str, bytes]) -> HostileRequest:
    fmt = _pick_format(rng)
    data = bytearray(images[fmt])
    how = rng.choice(["flip", "zero", "splice", "header", "duplicate"])
    if how == "flip":
        for _ in range(rng.randint(1, 12)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif how == "zero":
        start = rng.randrange(len(data))
        data[start:start + rng.randint(1, 256)] = b"\x00" * min(256, len(data) - start)
    elif how == "splice":
        start = rng.randrange(len(data))
        data[start:start] = rng.randbytes(rng.randint(1, 512))
    elif how == "header":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(min(64, len(data)))] = rng.randrange(256)
    else:
        data = data + data  # two images back to back
    return _raw("corrupted", bytes(data), FORMATS[fmt][1])


def random_bytes(rng: random.Random, images: dict[str, bytes]) -> HostileRequest:
    magic = rng.choice([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM" + b"\x00" * 24,
                        b"RIFF\x10\x00\x00\x00WEBP", b"GIF89a", b"%PDF-1.4", b"\x00" * 16])
    content_type = rng.choice([ct for _, ct in FORMATS.values()] + ["image/jpg", "image/x-ms-bmp"])
    return _raw("random_bytes", magic + rng.randbytes(rng.choice([0, 1, 17, 600, 5000, 40000])),
                content_type)


def huge_dimensions(rng: random.Random, images: dict[str, bytes]) -> HostileRequest:
    fmt = _pick_format(rng)
    limit = HUGE_LIMITS[fmt]
    width = rng.choice([limit, 65535, 50000, 20000, rng.randint(5000, limit)])
    height = rng.choice([limit, 65535, 40000, rng.randint(5000, limit)])
    return _raw("huge_dimensions", HUGE_BUILDERS[fmt](min(width, limit), min(height, limit)),
                FORMATS[fmt][1])


def empty(rng: random.Random, images: dict[str, bytes]) -> HostileRequest:
    if rng.random() < 0.5:
        return _raw("empty", b"", rng.choice([ct for _, ct in FORMATS.values()]))
    return _form("empty", [(part_headers("image", "empty.jpg", "image/jpeg"), b"")], rng)


def multipart(rng: random.Random, images: dict[str, bytes]) -> HostileRequest:
    image = images[_pick_format(rng)]
    how = rng.choice(["missing", "renamed", "repeated", "too_many", "text_type", "nested",
                      "no_boundary", "bad_boundary", "no_disposition", "oversized_field",
                      "junk_preamble", "unterminated"])
    if how == "missing":
        return _form("multipart", [(part_headers("conf", None, None), b"0.5")], rng)
    if how == "renamed":
        name = rng.choice(["file", "images", "IMAGE", "", "image[]", "im\u0430ge"])
        return _form("multipart", [(part_headers(name, "a.jpg", "image/jpeg"), image)], rng)
    if how == "repeated":
        parts = [(part_headers("image", "a.jpg", "image/jpeg"), image),
                 (part_headers("image", "b.jpg", "image/jpeg"), image[: len(image) // 3]),
                 (part_headers("note", None, None), b"x")]
        return _form("multipart", parts, rng)
    if how == "too_many":
        parts = [(part_headers("image", f"{i}.jpg", "image/jpeg"), image) for i in range(40)]
        return _form("multipart", parts, rng)
    if how == "text_type":
        ctype = rng.choice(["text/html", "application/json", "image/gif", "image/svg+xml"])
        return _form("multipart", [(part_headers("image", "a.svg", ctype), image)], rng)
    if how == "nested":
        inner = multipart_body([(part_headers("image", "a.jpg", "image/jpeg"), image)], b"inner")
        headers = b"Content-Disposition: form-data; name=\"image\"\r\n" \
                  b"Content-Type: multipart/mixed; boundary=inner"
        return _form("multipart", [(headers, inner)], rng)
    if how == "no_boundary":
        return HostileRequest("multipart", "POST", "/detect",
                              (("Content-Type", "multipart/form-data"),), image)
    if how == "bad_boundary":
        body = multipart_body([(part_headers("image", "a.jpg", "image/jpeg"), image)], b"real")
        return HostileRequest("multipart", "POST", "/detect",
                              (("Content-Type", "multipart/form-data; boundary=other"),), body)
    if how == "no_disposition":
        return _form("multipart", [(b"Content-Type: image/jpeg", image)], rng)
    if how == "oversized_field":
        return _form("multipart", [(part_headers("comment", None, None),
                                    b"A" * rng.choice([3, 21]) * (1 << 20))], rng)
    if how == "junk_preamble":
        boundary = b"jj"
        body = rng.randbytes(200) + b"\r\n" + multipart_body(
            [(part_headers("image", "a.jpg", "image/jpeg"), image)], boundary)
        return HostileRequest("multipart", "POST", "/detect",
                              (("Content-Type", "multipart/form-data; boundary=jj"),), body)
    boundary = b"cut"
    body = multipart_body([(part_headers("image", "a.jpg", "image/jpeg"), image)], boundary)
    return HostileRequest("multipart", "POST", "/detect",
                          (("Content-Type", "multipart/form-data; boundary=cut"),),
                          body[: rng.randrange(10, len(body) - 10)])


def hostile_filename(rng: random.Random) -> str:
    pieces = ["../" * rng.randint(1, 8) + "etc/passwd", "..\\..\\boot.ini", "/abs/path.jpg",
              "C:\\x\\y.jpg", "a\x00b.jpg", "a\x01\x02\x7f.jpg", "tab\there.jpg",
              "<script>alert(1)</script>.jpg", "x' OR 1=1 --.jpg", "%00%2e%2e%2f.jpg",
              "😀.jpg", "\u202egpj.exe", "con.jpg", ".", "..", "", " ",
              "x" * rng.choice([256, 4096, 70000])]
    return rng.choice(pieces) + rng.choice(["", "", rng.choice(METACHARACTERS)])


def filename(rng: random.Random, images: dict[str, bytes]) -> HostileRequest:
    fmt = _pick_format(rng)
    name = hostile_filename(rng)
    if rng.random() < 0.5:
        return _form("filename", [(part_headers("image", name, FORMATS[fmt][1]), images[fmt])],
                     rng)
    encoded = "".join(ch if ch.isascii() and ch.isalnum() else "".join(f"%{b:02X}" for b in
                      ch.encode("utf-8", "surrogatepass")) for ch in name[:8000])
    return _raw("filename", images[fmt], FORMATS[fmt][1], f"filename={encoded}")


def _encode_value(value: str, rng: random.Random) -> str:
    encoded = "".join(ch if ch.isascii() and ch.isalnum() else "".join(
        f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")) for ch in value)
    return encoded + (rng.choice(RAW_PERCENT) if rng.random() < 0.2 else "")


def query(rng: random.Random, images: dict[str, bytes]) -> HostileRequest:
    if rng.random() < 0.25:
        ident = _encode_value(
            rng.choice([*METACHARACTERS, "0" * 36, "00000000-0000-0000-0000"]), rng)
        path = rng.choice(ID_PATHS).format(ident or "%20")
        if path.endswith("/image") and rng.random() < 0.5:
            path += "?annotated=" + _encode_value(rng.choice(METACHARACTERS), rng)
        return HostileRequest("query", "GET", path, (), b"")
    endpoint = rng.choice(list(QUERY_ENDPOINTS))
    names = QUERY_ENDPOINTS[endpoint]
    params = []
    for name in rng.sample(names, rng.randint(1, len(names))):
        value = rng.choice(METACHARACTERS)
        if rng.random() < 0.3:
            value += rng.choice(METACHARACTERS)
        params.append(f"{_encode_value(name, rng) if rng.random() < 0.1 else name}="
                      f"{_encode_value(value, rng)}")
    if rng.random() < 0.2:
        params.append(params[0])  # a repeated parameter
    path_qs = f"{endpoint}?{'&'.join(params)}"
    if endpoint == "/detect":
        fmt = _pick_format(rng)
        return HostileRequest("query", "POST", path_qs, (("Content-Type", FORMATS[fmt][1]),),
                              images[fmt])
    return HostileRequest("query", "GET", path_qs, (), b"")


def content_type(rng: random.Random, images: dict[str, bytes]) -> HostileRequest:
    ctype = rng.choice(["text/plain", "application/json", "application/x-www-form-urlencoded",
                        "text/html; charset=utf-8", "", "image", "image/", "*/*",
                        "multipart/mixed; boundary=x", "image/jpeg; boundary=\"q\""])
    return _raw("content_type", images[_pick_format(rng)], ctype)


GENERATORS: tuple[Callable[[random.Random, dict[str, bytes]], HostileRequest], ...] = (
    truncated, corrupted, random_bytes, huge_dimensions, empty, multipart, filename, query,
    content_type)


def generate(count: int, seed: int = 0) -> list[HostileRequest]:
    """``count`` hostile requests, the kinds in turn (same seed, same corpus)."""
    rng = random.Random(seed)
    images = valid_images(seed)
    return [GENERATORS[i % len(GENERATORS)](rng, images) for i in range(count)]
