"""Image pre-processing: safe decoding, letterboxing and batching into a tensor.

Everything here is a pure function of its arguments, so the service can run it in a
worker process and the tests can run it without a model.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, TiffImagePlugin

from model.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageError
from model.formats import NOT_AN_IMAGE, PILLOW_FORMATS, sniff_content_type
from model.tiles import TileSetting, decode_long_side

logger = logging.getLogger(__name__)

# Read by OpenCV (faster, and JPEGs at reduced scale) unless they carry transparency.
_OPENCV_FORMATS = frozenset({"JPEG", "PNG", "BMP", "WEBP"})
_ORIENTATION = 0x0112  # the EXIF tag
# What Pillow and its plugins raise on broken files (the AVIF and HEIF decoders:
# RuntimeError; seen by tests/model/test_preprocess.py's mutated files).
_PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error,
                  ZeroDivisionError, RuntimeError)

PAD_COLOR = (114, 114, 114)

_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk type followed by its (constant) CRC
# libjpeg decodes at 1/2, 1/4 or 1/8 scale in the DCT domain: cheaper than a full decode
# followed by a resize, and an area-like filter (no aliasing).
_JPEG_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image, possibly at a reduced scale, and the size of the original.

    ``width`` and ``height`` are those of the full-size upright (EXIF-oriented) image;
    boxes found on ``image`` map back with ``x * scale_x`` and ``y * scale_y``.
    """

    image: np.ndarray
    width: int
    height: int

    @property
    def scale_x(self) -> float:
        return self.width / self.image.shape[1]

    @property
    def scale_y(self) -> float:
        return self.height / self.image.shape[0]


def decode_image(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Decode an encoded image (one of :data:`model.formats.FORMATS`) into a BGR
    ``uint8`` HxWx3 array.

    The dimensions are read from the header first, so an image claiming more than
    ``max_pixels`` pixels is refused before any pixel data is decompressed.
    Grayscale, palette and 16-bit images come back as 8-bit BGR; an image with
    transparency is composited onto :data:`PAD_COLOR` (the letterbox grey: the
    network sees no edge between the image and its padding), so the upload page shows
    it on the same grey; a GIF or multi-page TIFF gives its first frame; the EXIF
    orientation is applied, so boxes refer to the upright image.

    Raises:
        ImageTooLargeError: width * height exceeds ``max_pixels`` (or Pillow's own
            decompression-bomb limit).
        UnsupportedImageError: not one of the accepted formats.
        ImageDecodeError: empty, truncated or corrupt data.
    """
    return decode_for_network(data, max_pixels).image


def decode_for_network(data: bytes, max_pixels: int | None = None,
                       input_size: int | None = None,
                       tiles: TileSetting | None = None) -> DecodedImage:
    """Like :func:`decode_image`, but a JPEG whose long side is at least twice
    ``input_size`` is decoded at 1/2, 1/4 or 1/8 scale, the smallest that keeps its long
    side at or above ``input_size``: the network sees it shrunk to ``input_size`` anyway,
    and the reduced decode costs less than a full one plus the resize. With ``tiles``
    (:mod:`model.tiles`), the long side kept is the one its windows need
    (:func:`model.tiles.decode_long_side`)."""
    if not data:
        raise ImageDecodeError("empty image data")
    fmt, width, height, needs_pillow = _read_header(data)
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, more than the "
            f"{max_pixels} allowed")
    _check_complete(data, fmt)
    if fmt not in _OPENCV_FORMATS or needs_pillow:
        return _decode_with_pillow(data, fmt)
    factor = 1
    if input_size is not None and tiles is not None:
        input_size = decode_long_side(width, height, input_size, tiles)
    if fmt == "JPEG" and input_size is not None:
        while factor < 8 and max(width, height) / (factor * 2) >= input_size:
            factor *= 2
    flags = _JPEG_REDUCED.get(factor, cv2.IMREAD_COLOR)
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as exc:
        raise ImageDecodeError(f"cannot decode {fmt} image: {exc}") from exc
    if img is None:
        raise ImageDecodeError(f"cannot decode {fmt} image: the data is corrupt")
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ImageDecodeError(f"cannot decode {fmt} image: unexpected pixel layout "
                               f"{img.shape} {img.dtype}")
    upright = (math.ceil(height / factor), math.ceil(width / factor))
    if img.shape[:2] == upright[::-1] != upright:  # EXIF orientation turned it by 90 degrees
        width, height = height, width
    elif img.shape[:2] != upright:
        raise ImageDecodeError(f"cannot decode {fmt} image: decoded size "
                               f"{img.shape[1]}x{img.shape[0]} differs from the header's "
                               f"{width}x{height}" + (f" at 1/{factor}" if factor > 1 else ""))
    return DecodedImage(img, width, height)


@functools.cache
def _pillow_formats() -> tuple[str, ...]:
    """Teach Pillow HEIF (pillow-heif), once per process, on first use, not on import;
    the accepted formats this Pillow reads (one built without AVIF reads the others)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    Image.init()
    available = tuple(name for name in PILLOW_FORMATS if name in Image.OPEN)
    if available != PILLOW_FORMATS:
        logger.warning("this Pillow cannot read %s", sorted(set(PILLOW_FORMATS) - set(available)))
    return available


def _read_header(data: bytes) -> tuple[str, int, int, bool]:
    """Return (format, width, height, whether Pillow must decode it) from the header
    alone; decodes no pixels. Pillow decodes images with transparency (to composite
    them) and those with an EXIF orientation OpenCV ignores (it applies JPEG's only)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        # Checked first: Pillow cannot even open an incomplete WebP.
        riff_size = struct.unpack_from("<I", data, 4)[0]
        if len(data) < 8 + riff_size:
            raise ImageDecodeError(
                f"truncated WebP: {len(data)} bytes, the header announces {8 + riff_size}")
    try:
        with Image.open(io.BytesIO(data), formats=_pillow_formats()) as im:
            fmt, (width, height) = str(im.format), im.size
            fmt = "JPEG" if fmt == "MPO" else fmt  # a JPEG with more pictures after it
            needs_pillow = _has_transparency(im) or (fmt != "JPEG" and _rotated(im))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning only arrives as an exception where warnings are errors.
        raise ImageTooLargeError(f"image is too large: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        sniffed = sniff_content_type(data)
        if sniffed is None:
            raise UnsupportedImageError(NOT_AN_IMAGE) from exc
        # It starts like an accepted format: a damaged file, not a foreign one.
        raise ImageDecodeError(f"cannot read the image header: the {sniffed} file is "
                               "damaged or truncated") from exc
    except _PILLOW_ERRORS as exc:
        raise ImageDecodeError(f"cannot read the image header: {exc}") from exc
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image header gives an empty size {width}x{height}")
    return fmt, width, height, needs_pillow


def _rotated(im: Image.Image) -> bool:
    """An EXIF orientation other than upright, from what the header gave (``getexif``
    could decode a PNG's pixels to find its EXIF, before the pixel limit is checked)."""
    raw = im.info.get("exif")
    if isinstance(im, TiffImagePlugin.TiffImageFile):
        return im.tag_v2.get(_ORIENTATION, 1) != 1
    if not isinstance(raw, bytes | bytearray):
        return False
    exif = Image.Exif()
    exif.load(bytes(raw))
    return exif.get(_ORIENTATION, 1) != 1


def _has_transparency(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info


def _decode_with_pillow(data: bytes, fmt: str) -> DecodedImage:
    """Formats OpenCV does not read (GIF, TIFF, HEIF, AVIF), and any image with
    transparency: the first frame, upright, composited onto :data:`PAD_COLOR`."""
    try:
        with Image.open(io.BytesIO(data), formats=_pillow_formats()) as im:
            im.load()
            upright = ImageOps.exif_transpose(im)
            if _has_transparency(upright):
                matte = Image.new("RGBA", upright.size, (*PAD_COLOR, 255))
                rgb = Image.alpha_composite(matte, upright.convert("RGBA")).convert("RGB")
                pixels = np.asarray(rgb)
            elif upright.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
                pixels = _to_8_bit(np.asarray(upright))
            else:
                pixels = np.asarray(upright.convert("RGB"))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image is too large: {exc}") from exc
    except _PILLOW_ERRORS as exc:
        raise ImageDecodeError(f"cannot decode {fmt} image: {exc}") from exc
    if pixels.ndim == 2:
        bgr = np.ascontiguousarray(np.repeat(pixels[..., None], 3, axis=2))
    else:
        bgr = np.ascontiguousarray(pixels[..., 2::-1])
    return DecodedImage(bgr, bgr.shape[1], bgr.shape[0])


def _to_8_bit(gray: np.ndarray) -> np.ndarray:
    """A 16-bit or float grey image as uint8: 16-bit by its top byte, others by range."""
    values = gray.astype(np.float64)
    top = float(values.max(initial=0.0))
    if gray.dtype.itemsize == 2 or top > 255:
        values = values / (65535.0 if top <= 65535 else top) * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _check_complete(data: bytes, fmt: str) -> None:
    """Refuse truncated files cheaply, by their structure, before decoding.

    Some OpenCV builds return a partially decoded (grey-filled) image for a truncated
    JPEG, so completeness is checked here rather than trusted to the decoder.
    """
    if fmt == "JPEG" and not _jpeg_complete(data):
        raise ImageDecodeError("truncated JPEG: no end-of-image marker after the scan data")
    if fmt == "PNG" and _PNG_IEND not in data:
        raise ImageDecodeError("truncated PNG: no IEND chunk")


def _jpeg_complete(data: bytes) -> bool:
    """True if an EOI marker (FFD9) follows the first start-of-scan segment.

    Marker segments before the first scan are skipped by their lengths, so an EOI inside
    an embedded EXIF thumbnail does not count. Entropy-coded data never contains FFD9
    (0xFF bytes there are stuffed as FF00 or are restart markers), so any FFD9 after the
    scan starts is a real end of image; trailing bytes after it are allowed.
    """
    pos = 2  # after SOI
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            # Not the segment structure we expect (some writers leave junk between
            # segments): settle for any end-of-image marker further on.
            return data.find(b"\xff\xd9", pos) != -1
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI before any scan: nothing to decode
            return False
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # standalone markers
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker == 0xDA:  # start of scan
            return data.find(b"\xff\xd9", pos + 2 + length) != -1
        pos += 2 + length
    return False


def letterbox(img: np.ndarray, new_shape: int | tuple[int, int], stride: int = 32,
              auto: bool = False, color: tuple[int, int, int] = PAD_COLOR,
              ) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize ``img`` keeping its aspect ratio and pad it to ``new_shape`` (h, w).

    The scale is ``r = min(new_h / h0, new_w / w0)`` (small images are enlarged). With
    ``auto=False`` the result is exactly ``new_shape``; with ``auto=True`` each side is
    padded only up to the next multiple of ``stride``. Padding is split evenly, the odd
    pixel going to the bottom/right.

    Returns:
        (image, r, (pad_left, pad_top)): map a letterboxed point back with
        ``x0 = (x - pad_left) / r`` and ``y0 = (y - pad_top) / r``.
    """
    if img.ndim < 2 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"letterbox needs a non-empty image, got shape {img.shape}")
    new_h, new_w = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    if new_h <= 0 or new_w <= 0:
        raise ValueError(f"new_shape must be positive, got {new_shape}")
    h0, w0 = img.shape[:2]
    r = min(new_h / h0, new_w / w0)
    resized_w, resized_h = max(1, round(w0 * r)), max(1, round(h0 * r))
    if (resized_w, resized_h) != (w0, h0):
        interpolation = cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR
        img = cv2.resize(img, (resized_w, resized_h), interpolation=interpolation)
    if auto:
        out_w = math.ceil(resized_w / stride) * stride
        out_h = math.ceil(resized_h / stride) * stride
    else:
        out_w, out_h = new_w, new_h
    pad_w, pad_h = out_w - resized_w, out_h - resized_h
    left, top = pad_w // 2, pad_h // 2
    if pad_w or pad_h:
        img = cv2.copyMakeBorder(img, top, pad_h - top, left, pad_w - left,
                                 cv2.BORDER_CONSTANT, value=color)
    return img, r, (float(left), float(top))


def to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack same-shape BGR ``uint8`` HxWx3 images into a float (N, 3, H, W) RGB tensor in 0..1."""
    if len(images) == 0:
        raise ValueError("to_tensor needs at least one image")
    shapes = {img.shape for img in images}
    if len(shapes) != 1:
        raise ValueError(f"to_tensor needs images of one shape, got {sorted(shapes)}")
    shape = shapes.pop()
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"to_tensor needs HxWx3 images, got shape {shape}")
    batch = np.stack(images)[..., ::-1].transpose(0, 3, 1, 2)  # BGR->RGB, NHWC->NCHW
    return torch.from_numpy(np.ascontiguousarray(batch)).float().div_(255.0)
