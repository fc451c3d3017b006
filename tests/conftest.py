"""Fixtures every tier may use; nothing heavy is imported here (``make test-fast``, the
unit tier, imports neither torch, asyncpg nor ``main``: tests/unit/test_fast_tier.py).

The service fixtures (embedded PostgreSQL, generated weights, warm pools, the app's test
client) are in ``tests/service/conftest.py``; ``tests/e2e/conftest.py`` takes them from
there.
"""

from __future__ import annotations

import pytest

from tests.paths import PHOTOS_DIR


@pytest.fixture(scope="session")
def portrait_jpeg() -> bytes:
    """A real photo, 810x1080 (tests/data/CREDITS.md)."""
    return (PHOTOS_DIR / "portrait.jpg").read_bytes()


@pytest.fixture(scope="session")
def landscape_jpeg() -> bytes:
    """A real photo, 1280x720."""
    return (PHOTOS_DIR / "landscape.jpg").read_bytes()
