"""Image formats the engine decodes: the one list (:data:`FORMATS`), told from an encoded
image's first bytes (:func:`sniff_content_type`), never from what a client says it sent.

The README's list of accepted formats and the upload page's are rendered from, or checked
against, :data:`FORMATS` (``tests/model/test_formats.py``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageFormat:
    """One accepted format: the name people know it by, the MIME type it is stored and
    served with, Pillow's names for it, and the usual file name extensions."""

    name: str
    content_type: str
    pillow: tuple[str, ...]
    extensions: tuple[str, ...]


FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("JPEG", "image/jpeg", ("JPEG",), (".jpg", ".jpeg")),
    ImageFormat("PNG", "image/png", ("PNG",), (".png",)),
    ImageFormat("WebP", "image/webp", ("WEBP",), (".webp",)),
    ImageFormat("GIF", "image/gif", ("GIF",), (".gif",)),
    ImageFormat("BMP", "image/bmp", ("BMP",), (".bmp",)),
    ImageFormat("TIFF", "image/tiff", ("TIFF",), (".tif", ".tiff")),
    ImageFormat("HEIC/HEIF", "image/heic", ("HEIF",), (".heic", ".heif")),
    ImageFormat("AVIF", "image/avif", ("AVIF",), (".avif",)),
)

SUPPORTED_TYPES = tuple(f.content_type for f in FORMATS)
# Pillow's names, in the order they are tried.
PILLOW_FORMATS = tuple(name for f in FORMATS for name in f.pillow)
# For people: "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF and AVIF".
ACCEPTED_TEXT = ", ".join(f.name for f in FORMATS[:-1]) + f" and {FORMATS[-1].name}"
# For <input type=file accept=...>: the types and the extensions (a browser may not
# know a type for .heic).
ACCEPT_ATTRIBUTE = ",".join([*SUPPORTED_TYPES, *(e for f in FORMATS for e in f.extensions)])
NOT_AN_IMAGE = f"This file is not an image we can read. Accepted: {ACCEPTED_TEXT}."

# ISO base media file brands (ftyp box) of HEIF still images and of AVIF.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1",
                          b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})


def sniff_content_type(data: bytes) -> str | None:
    """The image type from the file's magic bytes; None unless one of :data:`FORMATS`."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:2] == b"BM" and len(data) >= 26:
        return "image/bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[4:8] == b"ftyp":
        return _ftyp_type(data)
    return None


def _ftyp_type(data: bytes) -> str | None:
    """AVIF or HEIF from the ftyp box's major and compatible brands."""
    size = int.from_bytes(data[:4], "big")
    if size < 16 or size > len(data):
        return None
    brands = [data[8:12]] + [data[i:i + 4] for i in range(16, size - 3, 4)]
    if _AVIF_BRANDS.intersection(brands):  # AVIF files list "mif1" too
        return "image/avif"
    if _HEIF_BRANDS.intersection(brands):
        return "image/heic"
    return None
