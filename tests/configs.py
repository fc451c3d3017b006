"""config/test.yaml as the tests change it (light: no fixtures, nothing heavy)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from settings import Config, merge, parse_config
from tests.paths import TEST_CONFIG

TEST_MODEL = "service-6cls"  # the model config/test.yaml serves


def load_test_config(overrides: Mapping[str, Any] | None = None, *,
                     weights: str | Path | None = None,
                     models: Mapping[str, Any] | None = None,
                     env: Mapping[str, str] | None = None) -> Config:
    """config/test.yaml, validated, with ``overrides`` merged in; ``weights``: those of its
    model (``service-6cls``); ``models``: instead of its ``models:`` section (merging
    would keep its model beside them)."""
    data = yaml.safe_load(TEST_CONFIG.read_text(encoding="utf-8"))
    if models is not None:
        data["models"] = dict(models)
    elif weights is not None:
        data["models"][TEST_MODEL]["weights"] = str(weights)
    return parse_config(merge(data, overrides or {}), dict(env or {}), TEST_CONFIG)
