"""Darknet cfg parsing rules and error reporting."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.cfg import parse_cfg, parse_cfg_text
from model.errors import CfgError
from tests.engine_utils import DARKNET_DIR


@pytest.mark.parametrize("cfg", sorted(DARKNET_DIR.glob("*.cfg")), ids=lambda p: p.stem)
def test_every_shared_cfg_parses(cfg: Path) -> None:
    sections = parse_cfg(cfg)
    assert sections[0].type == "net"
    assert sum(s.type == "yolo" for s in sections) in (2, 3)


def test_whitespace_comments_and_aliases() -> None:
    text = (
        "# a comment\n"
        "; another\n"
        "[net]\n"
        "  wid th = 4 16\n"  # Darknet removes every whitespace character
        "height=416\n"
        "\n"
        "[conv]\n"
        "filters = 1,\t2\n"
        "[max]\n"
        "size=2\n"
    )
    net, conv, pool = parse_cfg_text(text, "x.cfg")
    assert net.get_int("width") == 416
    assert conv.type == "convolutional" and conv.options["filters"] == "1,2"
    assert conv.get_ints("filters") == [1, 2]
    assert pool.type == "maxpool"


@pytest.mark.parametrize("text,line,needle", [
    ("[net]\n[convolutional]\nfliters=3\n", 3, "key 'fliters'"),
    ("[net]\n[bogus]\n", 2, "[bogus] is not a Darknet section"),
    ("[net]\n[region]\n", 2, "[region] is a Darknet layer this engine does not support"),
    ("[net]\n[convolutional]\nfilters\n", 3, "expected key=value"),
    ("[net]\n[convolutional]\nfilters=\n", 3, "key 'filters': has an empty value"),
    ("[net]\n[convolutional]\nsize=1\nsize=3\n", 4, "is set twice"),
    ("filters=3\n[net]\n", 1, "outside of any section"),
    ("[convolutional]\n[net]\n", 1, "the first section must be [net]"),
    ("[net]\n[convolutional\n", 2, "malformed section header"),
])
def test_errors_name_file_line_and_key(text: str, line: int, needle: str) -> None:
    with pytest.raises(CfgError) as err:
        parse_cfg_text(text, "bad.cfg")
    assert f"bad.cfg:{line}" in str(err.value)
    assert needle in str(err.value)


@pytest.mark.parametrize("key,value,getter,needle", [
    ("filters", "3x", "get_int", "'3x' is not an integer"),
    ("scale_x_y", "1.0.5", "get_float", "'1.0.5' is not a number"),
    ("layers", "-1,a", "get_ints", "not a comma-separated list of integers"),
])
def test_bad_values_name_the_key(key: str, value: str, getter: str, needle: str) -> None:
    section_type = "yolo" if key == "scale_x_y" else "route" if key == "layers" else "convolutional"
    sections = parse_cfg_text(f"[net]\n[{section_type}]\n{key}={value}\n", "v.cfg")
    with pytest.raises(CfgError) as err:
        getattr(sections[1], getter)(key)
    assert f"v.cfg:3: key '{key}'" in str(err.value)
    assert needle in str(err.value)


def test_missing_file() -> None:
    with pytest.raises(CfgError, match="cannot read cfg file"):
        parse_cfg("/nonexistent/net.cfg")
