"""Small helpers the service and e2e tiers share (no fixtures, nothing heavy): multipart
forms, encoded images, whether a process is alive."""

from __future__ import annotations

import io
import os

import cv2
import numpy as np
from aiohttp import FormData


def alive(pid: int) -> bool:
    """A process with this pid exists (zombies included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def ignores(pid: int, sig: int) -> bool:
    """The process ignores ``sig`` (SIG_IGN: the kernel discards it when it is sent)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    raise AssertionError(f"no SigIgn in /proc/{pid}/status")


def form(*files: tuple[str, bytes, str], field: str = "image") -> FormData:
    """A multipart form with one ``field`` part per (file name, bytes, content type)."""
    data = FormData()
    for name, content, content_type in files:
        data.add_field(field, content, filename=name, content_type=content_type)
    return data


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def webp_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[:, :, ::-1]).save(buffer, format="WEBP")
    return buffer.getvalue()
