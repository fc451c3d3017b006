"""Errors raised by the Darknet engine and its inference pipeline.

Every error the engine raises on bad input derives from :class:`ModelError`, so callers
(the CLI, the service) can tell "this input is wrong" apart from a bug.
"""

from __future__ import annotations


class ModelError(ValueError):
    """Base class: the cfg, the weights or an image cannot be used."""


class CfgError(ModelError):
    """A Darknet .cfg file is malformed or uses something the engine does not support."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(str(path) if line is None else f"{path}:{line}")
        if key is not None:
            where.append(f"key '{key}'")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)
        self.path = path
        self.line = line
        self.key = key


class WeightsError(ModelError):
    """A weights file does not match the network or cannot be read safely."""


class ImageError(ModelError):
    """An encoded image cannot be used. ``code`` names the kind, so that the error can
    cross a process boundary as plain data and be raised again there
    (:func:`image_error`)."""

    code = "image"


class ImageDecodeError(ImageError):
    """The bytes are not a complete image in a supported format."""

    code = "decode"


class UnsupportedImageError(ImageDecodeError):
    """The bytes are not in any accepted format (:data:`model.formats.FORMATS`)."""

    code = "unsupported"


class ImageTooLargeError(ImageError):
    """The image has more pixels than allowed (decompression bombs included)."""

    code = "too_large"


def image_error(code: str, message: str) -> ImageError:
    """The :class:`ImageError` whose ``code`` is ``code`` (the base class for others)."""
    for kind in (UnsupportedImageError, ImageDecodeError, ImageTooLargeError):
        if kind.code == code:
            return kind(message)
    return ImageError(message)
