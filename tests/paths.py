"""Where the tests find their material: ``tests/data`` (committed, always there) and
``../shared`` (development and CI only: :func:`shared` skips the test without it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from settings import BASE_DIR

DATA_DIR = Path(__file__).resolve().parent / "data"
PHOTOS_DIR = DATA_DIR / "photos"  # real photos (see data/CREDITS.md)
DARKNET_DIR = DATA_DIR / "darknet"  # real Darknet cfgs, copied from ../shared/darknet
MODEL_DATA_DIR = BASE_DIR / "model" / "data"
TEST_CONFIG = BASE_DIR / "config" / "test.yaml"
SHARED_DIR = BASE_DIR.parent / "shared"


def shared(*parts: str) -> Path:
    """``../shared/<parts>``; skips the calling test when it is not there (a user's clone
    has no ``../shared``; CI and development machines do)."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/{'/'.join(parts)}, which is not beside this clone "
                    "(CI has it)")
    return path
