"""Image formats the engine decodes, told from an encoded image's first bytes."""

from __future__ import annotations

SUPPORTED_TYPES = ("image/jpeg", "image/png", "image/bmp", "image/webp")


def sniff_content_type(data: bytes) -> str | None:
    """The image type from the file's magic bytes; None unless JPEG, PNG, BMP or WebP."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:2] == b"BM" and len(data) >= 26:
        return "image/bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None
