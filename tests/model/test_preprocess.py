"""Tests for model.preprocess: decoding (formats, limits, broken files), letterbox, to_tensor."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from model.errors import (
    ImageDecodeError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from model.formats import FORMATS, sniff_content_type
from model.preprocess import (
    PAD_COLOR,
    decode_for_network,
    decode_image,
    letterbox,
    to_tensor,
)


def _rgb_pattern(height: int = 48, width: int = 64) -> np.ndarray:
    """A deterministic RGB uint8 image with structure (gradients), HxWx3."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([(xx * 4) % 256, (yy * 5) % 256, ((xx + yy) * 3) % 256],
                    axis=2).astype(np.uint8)


def _encode(array: np.ndarray, fmt: str, **params: object) -> bytes:
    """Encode with Pillow (and pillow-heif for HEIF), independent of OpenCV."""
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **params)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a tiny (incomplete) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


# --- decode_image: formats -------------------------------------------------------------

@pytest.mark.parametrize("fmt, params", [
    ("PNG", {}),
    ("BMP", {}),
    ("WEBP", {"lossless": True}),
])
def test_decode_lossless_formats_round_trip(fmt: str, params: dict) -> None:
    rgb = _rgb_pattern()
    img = decode_image(_encode(rgb, fmt, **params))
    assert img.dtype == np.uint8 and img.shape == (48, 64, 3)
    np.testing.assert_array_equal(img, rgb[..., ::-1])  # BGR


def test_decode_jpeg_round_trip_is_close_and_bgr() -> None:
    rgb = np.zeros((40, 56, 3), np.uint8)
    rgb[..., 0] = 200  # pure-ish red: the last BGR channel must carry it
    rgb[..., 2] = 30
    img = decode_image(_encode(rgb, "JPEG", quality=95))
    assert img.shape == (40, 56, 3) and img.dtype == np.uint8
    assert np.abs(img.astype(int) - rgb[..., ::-1].astype(int)).max() <= 4


def test_decode_grayscale_becomes_three_equal_channels() -> None:
    gray = _rgb_pattern()[..., 0]
    img = decode_image(_encode(gray, "PNG"))
    assert img.shape == (48, 64, 3)
    for channel in range(3):
        np.testing.assert_array_equal(img[..., channel], gray)


@pytest.mark.parametrize("fmt, params, tolerance", [
    ("GIF", {}, 0), ("TIFF", {}, 0), ("TIFF", {"compression": "tiff_lzw"}, 0),
    ("HEIF", {"quality": -1}, 3), ("AVIF", {"quality": 100}, 8),
])
def test_decode_more_formats(fmt: str, params: dict, tolerance: int) -> None:
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (200, 30, 40)  # two flat halves: a palette (GIF) and lossy codecs keep them
    rgb[:, 32:] = (20, 180, 90)
    data = _encode(rgb, fmt, **params)
    assert sniff_content_type(data) in {f.content_type for f in FORMATS}
    img = decode_image(data)
    assert img.dtype == np.uint8 and img.shape == (48, 64, 3)
    inner = (slice(4, 44), [*range(4, 28), *range(36, 60)])  # away from the edge
    diff = np.abs(img[inner].astype(int) - rgb[..., ::-1][inner].astype(int))
    assert diff.max() <= tolerance


def test_decode_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (32, 24), color) for color in ((250, 0, 0), (0, 0, 250))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    img = decode_image(buf.getvalue())
    assert tuple(img[12, 16]) == (0, 0, 250)  # red, in BGR


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF", "TIFF", "AVIF", "HEIF"])
def test_decode_transparent_area_becomes_the_letterbox_grey(fmt: str) -> None:
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., :3] = (250, 10, 10)  # red everywhere, opaque only on the right half
    rgba[:, 32:, 3] = 255
    img = decode_image(_encode(rgba, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    assert np.abs(img[10, 5].astype(int) - PAD_COLOR).max() <= 2
    assert np.abs(img[10, 50].astype(int) - (10, 10, 250)).max() <= 8


def test_decode_half_transparent_pixels_are_blended_with_the_grey() -> None:
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., 2] = 250  # blue at 50% alpha over grey 114: (114 + 250) / 2 = 182 in blue
    rgba[..., 3] = 128
    img = decode_image(_encode(rgba, "PNG"))
    assert np.abs(img[5, 5].astype(int) - (182, 57, 57)).max() <= 2


def test_decode_palette_transparency() -> None:
    im = Image.new("P", (32, 24), 1)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.paste(0, (0, 0, 16, 24))
    buf = io.BytesIO()
    im.save(buf, format="PNG", transparency=1)  # index 1 (green) is transparent
    img = decode_image(buf.getvalue())
    assert tuple(img[5, 5]) == (0, 0, 255) and tuple(img[5, 25]) == PAD_COLOR


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF", "AVIF", "HEIF"])
def test_decode_applies_exif_orientation_beyond_jpeg(fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _encode(_rgb_pattern(40, 64), fmt, exif=exif if fmt == "TIFF" else exif.tobytes())
    assert decode_image(data).shape == (64, 40, 3)


def test_decode_16_bit_png_becomes_8_bit() -> None:
    high = _rgb_pattern()[..., 1].astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray((high << 8).astype("<u2")).save(buf, format="PNG")
    img = decode_image(buf.getvalue())
    assert img.dtype == np.uint8 and img.shape == (48, 64, 3)
    np.testing.assert_array_equal(img[..., 0], high.astype(np.uint8))


def test_decode_applies_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _encode(_rgb_pattern(40, 64), "JPEG", exif=exif)
    assert decode_image(data).shape == (64, 40, 3)


def test_decode_accepts_bytes_after_jpeg_end() -> None:
    data = _encode(_rgb_pattern(), "JPEG") + b"trailing camera data"
    assert decode_image(data).shape == (48, 64, 3)


def test_decode_tolerates_junk_between_jpeg_segments() -> None:
    data = _encode(_rgb_pattern(), "JPEG")
    dqt = data.index(b"\xff\xdb")
    assert decode_image(data[:dqt] + b"\x00\x00" + data[dqt:]).shape == (48, 64, 3)


# --- decode_image: errors --------------------------------------------------------------

def test_decode_empty() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


def test_decode_random_bytes() -> None:
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(UnsupportedImageError, match="not an image we can read"):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX"])
def test_decode_unsupported_format(fmt: str) -> None:
    with pytest.raises(UnsupportedImageError, match="Accepted: JPEG, PNG"):
        decode_image(_encode(_rgb_pattern(), fmt))


@pytest.mark.parametrize("fmt, params", [
    ("JPEG", {}),
    ("JPEG", {"progressive": True}),
    ("PNG", {}),
    ("WEBP", {"lossless": True}),
    ("BMP", {}),
])
@pytest.mark.parametrize("keep", [0.5, 0.95, -2])
def test_decode_truncated(fmt: str, params: dict, keep: float) -> None:
    data = _encode(_rgb_pattern(96, 128), fmt, **params)
    cut = len(data) + keep if keep < 0 else int(len(data) * keep)
    # BMP has no end marker: OpenCV's decoder is what notices the missing rows.
    with pytest.raises(ImageDecodeError, match=None if fmt == "BMP" else "truncated"):
        decode_image(data[:int(cut)])


def test_decode_truncated_jpeg_with_end_marker_in_a_header_segment() -> None:
    # An FFD9 before the scan (here in a comment, as in an EXIF thumbnail) is not the end.
    data = _encode(_rgb_pattern(96, 128), "JPEG", comment=b"x\xff\xd9y")
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[:len(data) // 2])


def test_decode_corrupted_png_data() -> None:
    data = bytearray(_encode(_rgb_pattern(96, 128), "PNG"))
    data[len(data) // 2: len(data) // 2 + 16] = b"\x00" * 16
    with pytest.raises(ImageDecodeError):
        decode_image(bytes(data))


def test_decode_bomb_header_is_refused_without_decoding() -> None:
    with pytest.raises(ImageTooLargeError):
        decode_image(_png_header_only(50_000, 50_000))


def test_decode_max_pixels_checked_before_decoding() -> None:
    # The pixel data is bogus: only a header check can give ImageTooLargeError here.
    with pytest.raises(ImageTooLargeError, match="8000x8000"):
        decode_image(_png_header_only(8_000, 8_000), max_pixels=10_000_000)


def test_decode_max_pixels_boundary() -> None:
    data = _encode(_rgb_pattern(48, 64), "PNG")
    assert decode_image(data, max_pixels=48 * 64).shape == (48, 64, 3)
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=48 * 64 - 1)


def test_decode_never_raises_anything_but_image_errors_on_mutated_files() -> None:
    rng = np.random.default_rng(1)
    originals = [_encode(_rgb_pattern(), fmt) for fmt in
                 ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF", "HEIF", "AVIF")]
    for _ in range(120):
        data = bytearray(originals[rng.integers(len(originals))])
        for pos in rng.integers(0, len(data), size=rng.integers(1, 6)):
            data[pos] = int(rng.integers(256))
        try:
            img = decode_image(bytes(data))
        except ImageError:
            continue
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


# --- letterbox -------------------------------------------------------------------------

def _solid(height: int, width: int, bgr: tuple[int, int, int] = (10, 200, 30)) -> np.ndarray:
    return np.full((height, width, 3), bgr, np.uint8)


def _assert_padded(out: np.ndarray, left: int, top: int, inner_w: int, inner_h: int,
                   bgr: tuple[int, int, int] = (10, 200, 30)) -> None:
    inner = np.zeros(out.shape[:2], bool)
    inner[top:top + inner_h, left:left + inner_w] = True
    assert (out[inner] == bgr).all()
    assert (out[~inner] == 114).all()


def test_letterbox_square_tall_image() -> None:
    out, ratio, (pad_w, pad_h) = letterbox(_solid(1080, 810), 512)
    assert out.shape == (512, 512, 3)
    assert ratio == pytest.approx(512 / 1080)
    assert (pad_w, pad_h) == (64.0, 0.0)  # resized to 384 wide: (512 - 384) / 2
    _assert_padded(out, 64, 0, 384, 512)


def test_letterbox_square_wide_image_odd_padding() -> None:
    # 51 x 100 (h x w) -> r = 0.64 -> 33 x 64; 31 rows of padding: 15 on top, 16 below.
    out, ratio, pad = letterbox(_solid(51, 100), 64)
    assert out.shape == (64, 64, 3)
    assert ratio == pytest.approx(0.64)
    assert pad == (0.0, 15.0)
    _assert_padded(out, 0, 15, 64, 33)


def test_letterbox_keeps_aspect_ratio() -> None:
    _, _, (pad_w, pad_h) = letterbox(_solid(300, 700), 320)
    inner_w, inner_h = 320 - 2 * pad_w, 320 - 2 * pad_h
    assert abs(inner_w / inner_h - 700 / 300) < 0.02


def test_letterbox_enlarges_small_images() -> None:
    out, ratio, pad = letterbox(_solid(20, 40), 128)
    assert ratio == pytest.approx(3.2) and pad == (0.0, 32.0)
    _assert_padded(out, 0, 32, 128, 64)


def test_letterbox_rectangular_target() -> None:
    out, ratio, pad = letterbox(_solid(100, 100), (64, 128))
    assert out.shape == (64, 128, 3)
    assert ratio == pytest.approx(0.64) and pad == (32.0, 0.0)
    _assert_padded(out, 32, 0, 64, 64)


def test_letterbox_auto_pads_to_stride_multiple_only() -> None:
    out, _, pad = letterbox(_solid(1080, 810), 512, auto=True)
    assert out.shape == (512, 384, 3) and pad == (0.0, 0.0)
    # 200 x 90 -> r = 0.32 -> 64 x 29 -> padded to 64 x 32: 1 left, 2 right.
    out, _, pad = letterbox(_solid(200, 90), 64, stride=32, auto=True)
    assert out.shape == (64, 32, 3) and pad == (1.0, 0.0)
    _assert_padded(out, 1, 0, 29, 64)


def test_letterbox_exact_size_is_unchanged() -> None:
    img = _rgb_pattern(64, 64)
    out, ratio, pad = letterbox(img, 64)
    assert ratio == 1.0 and pad == (0.0, 0.0)
    np.testing.assert_array_equal(out, img)


def test_letterbox_custom_color() -> None:
    out, _, _ = letterbox(_solid(32, 64), 64, color=(1, 2, 3))
    assert (out[0, 0] == (1, 2, 3)).all()


def test_letterbox_rejects_empty_image() -> None:
    with pytest.raises(ValueError):
        letterbox(np.zeros((0, 10, 3), np.uint8), 64)


# --- to_tensor -------------------------------------------------------------------------

def test_to_tensor_rgb_order_layout_and_scale() -> None:
    first = _solid(4, 6, (10, 20, 30))  # B, G, R
    second = _solid(4, 6, (255, 0, 51))
    batch = to_tensor([first, second])
    assert batch.shape == (2, 3, 4, 6) and batch.dtype == torch.float32
    assert batch.is_contiguous()
    expected = torch.tensor([[30, 20, 10], [51, 0, 255]], dtype=torch.float32) / 255
    torch.testing.assert_close(batch[:, :, 2, 3], expected)


def test_to_tensor_matches_per_pixel_reference() -> None:
    img = _rgb_pattern(5, 7)[..., ::-1].copy()  # BGR of the pattern
    batch = to_tensor([img])
    for y, x in [(0, 0), (4, 6), (2, 3)]:
        for channel in range(3):
            assert batch[0, channel, y, x].item() == pytest.approx(
                img[y, x, 2 - channel] / 255)


def test_to_tensor_rejects_mixed_shapes_and_empty() -> None:
    with pytest.raises(ValueError, match="one shape"):
        to_tensor([_solid(4, 6), _solid(6, 4)])
    with pytest.raises(ValueError):
        to_tensor([])


def _photo(width: int, height: int) -> np.ndarray:
    """A smooth colour image (JPEG-friendly) with a sharp white square in it."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    img[height // 4:height // 2, width // 4:width // 2] = 255
    return img


@pytest.mark.parametrize(("size", "input_size", "factor"), [
    ((2000, 1500), 512, 2), ((4032, 3024), 512, 4), ((4096, 4096), 512, 8),
    ((1000, 700), 512, 1), ((2000, 1500), None, 1)])
def test_decode_for_network_reduces_large_jpegs(size: tuple[int, int], input_size: int | None,
                                                factor: int) -> None:
    width, height = size
    data = cv2.imencode(".jpg", _photo(width, height))[1].tobytes()
    decoded = decode_for_network(data, None, input_size)
    assert (decoded.width, decoded.height) == (width, height)
    assert decoded.image.shape == (-(-height // factor), -(-width // factor), 3)
    assert max(decoded.image.shape[:2]) >= (input_size or 0)
    assert decoded.scale_x == pytest.approx(factor, rel=0.01)
    # The reduced decode is the full image, shrunk: compare at the reduced size.
    full = cv2.resize(decode_image(data), decoded.image.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(full.astype(int) - decoded.image.astype(int)).mean() < 3


def test_decode_for_network_keeps_exif_orientation_and_other_formats_whole() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _encode(np.zeros((1200, 2000, 3), np.uint8), "JPEG", exif=exif)
    decoded = decode_for_network(data, None, 512)
    assert decoded.image.shape == (1000, 600, 3)
    assert (decoded.width, decoded.height) == (1200, 2000)  # upright
    png = cv2.imencode(".png", _photo(1600, 1200))[1].tobytes()
    whole = decode_for_network(png, None, 512)
    assert whole.image.shape == (1200, 1600, 3) and whole.scale_x == 1
    with pytest.raises(ImageTooLargeError):
        decode_for_network(data, max_pixels=2_000_000, input_size=512)
