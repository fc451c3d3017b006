"""Darknet cfg parsing rules, each checked against what AlexeyAB/darknet does
(parser.c read_cfg / parse_*, option_list.c read_option / option_find / option_unused,
utils.c strip, and C's atoi / atof)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from model.cfg import c_atof, c_atoi, c_list, parse_cfg, parse_cfg_text
from model.errors import CfgError
from tests.engine_utils import DARKNET_DIR

DETECTION = ("yolo", "region", "gaussian_yolo")


@pytest.mark.parametrize("cfg", sorted(DARKNET_DIR.glob("*.cfg")), ids=lambda p: p.stem)
def test_every_committed_cfg_parses_without_warnings(cfg: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="model.cfg"):
        sections = parse_cfg(cfg)
    assert sections[0].type == "net"
    assert sum(s.type in DETECTION for s in sections) in (1, 2, 3)
    assert not caplog.records


def test_whitespace_comments_and_aliases() -> None:
    text = (
        "# a comment\n"
        "; another\n"
        "[net]\n"
        "  wid th = 4 16\r\n"  # strip() removes spaces, tabs, \r and \n
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


@pytest.mark.parametrize("text,value", [
    ("180###P6", 180), ("  -3", -3), ("+7x", 7), ("x7", 0), ("", 0), ("1.9", 1),
    ("\v\f12", 12), ("- 4", 0), ("0x10", 0),
])
def test_atoi(text: str, value: int) -> None:
    """C's atoi: white space, a sign, then the leading digits; nothing numeric is 0."""
    assert c_atoi(text) == value


@pytest.mark.parametrize("text,value", [
    (".5", 0.5), ("-.5e1", -5.0), ("1e-3junk", 1e-3), ("1.5.2", 1.5), ("e5", 0.0),
    ("  +2.", 2.0), ("1e", 1.0), ("0x1p3", 8.0), ("0x.8", 0.5), ("inf", math.inf),
    ("-Infinity", -math.inf), ("", 0.0), (".", 0.0),
])
def test_atof(text: str, value: float) -> None:
    """C's atof (strtod): the longest decimal, hex float, inf or nan prefix, else 0."""
    assert c_atof(text) == value
    assert math.isnan(c_atof("nan(1)x"))


@pytest.mark.parametrize("text,stop,items", [
    ("-1,180###P6", False, ["-1", "180###P6"]),  # cspx-p7-mish.cfg: route layers -1, 180
    ("1,2,", False, ["1", "2", ""]),             # a trailing comma is one more item (0)
    ("0,1,2#,3", True, ["0", "1", "2#"]),        # parse_yolo_mask stops counting at '#'
    ("0,1,2#,3", False, ["0", "1", "2#", "3"]),  # parse_route does not
])
def test_lists_split_like_darknet_loops(text: str, stop: bool, items: list[str]) -> None:
    assert c_list(text, stop) == items


def test_values_are_read_with_atoi_and_atof() -> None:
    _, route, yolo = parse_cfg_text("[net]\n[route]\nlayers=-1,180###P6\n"
                                    "[yolo]\nmask=0,1#,2\nscale_x_y=1.05abc\nnum=3x\n", "v.cfg")
    assert route.get_ints("layers") == [-1, 180]
    assert yolo.get_ints("mask", stop_at_hash=True) == [0, 1]
    assert yolo.get_int("num") == 3
    assert yolo.get_float("scale_x_y") == pytest.approx(1.05)


def test_duplicate_key_first_wins_and_names_both_lines(
        caplog: pytest.LogCaptureFixture) -> None:
    """option_find returns the first match; the second stays unused (yolo9000.cfg,
    yolov3-openimages.cfg set batch and subdivisions twice)."""
    with caplog.at_level(logging.WARNING, logger="model.cfg"):
        net, _ = parse_cfg_text("[net]\nbatch=64\nwidth=32\nbatch=1\n[empty]\n", "d.cfg")
    assert net.get_int("batch") == 64
    assert [r.getMessage() for r in caplog.records] == [
        "d.cfg:4: key 'batch' is set again in [net] (first on line 2); Darknet uses the "
        "first value, '64'"]


def test_keys_darknet_does_not_read_are_reported_and_ignored(
        caplog: pytest.LogCaptureFixture) -> None:
    """option_unused prints "Unused field" for each key parse_<layer> did not read:
    writing.cfg has seen= in [net], efficientnet-lite3.cfg scale= with policy=steps."""
    text = ("[net]\nseen=64\npolicy=steps\nsteps=1\nscales=.1\nscale=2\n"
            "[convolutional]\nfliters=3\nFilters=4\nsize=1\n"
            "[shortcut]\nfrom=-1\nalpha=2\n")
    with caplog.at_level(logging.WARNING, logger="model.cfg"):
        _, conv, _ = parse_cfg_text(text, "u.cfg")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"u.cfg:{line}: key '{key}': Darknet does not read it in [{kind}] and ignores it "
        "(Darknet: Unused field)"
        for line, key, kind in [(2, "seen", "net"), (6, "scale", "net"),
                                (8, "fliters", "convolutional"), (9, "Filters", "convolutional"),
                                (13, "alpha", "shortcut")]]
    assert not conv.has("filters")  # keys are case-sensitive (strcmp)
    with caplog.at_level(logging.WARNING, logger="model.cfg"):
        caplog.clear()
        parse_cfg_text("[net]\npolicy=step\nstep=1\nscale=2\nadam=1\nB1=.9\n[empty]\n")
    assert not caplog.records  # read for policy=step, and B1 with adam=1


def test_lines_darknet_cannot_parse(caplog: pytest.LogCaptureFixture) -> None:
    """read_option: a line ending in '=' is dropped ("Config file error ... could parse");
    a line without '=' inserts the key with no value, so option_find gives the default -
    and, being first, it hides a later value of that key."""
    with caplog.at_level(logging.WARNING, logger="model.cfg"):
        _, conv = parse_cfg_text("[net]\n[convolutional]\nfilters=\nsize\nsize=3\n", "p.cfg")
    assert not conv.has("filters") and not conv.has("size")
    assert conv.get_int("size", 1) == 1
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "p.cfg:3: 'filters=' cannot be parsed" in messages
    assert "p.cfg:4: key 'size' has no '='" in messages
    assert "p.cfg:5: key 'size' is set again" in messages


@pytest.mark.parametrize("text,line,needle", [
    ("[net]\n[bogus]\n", 2, "[bogus] is not a Darknet section"),
    ("[net]\n[YOLO]\n", 2, "section names are case-sensitive: [yolo]"),
    ("[net]\n[gaussian_yolo]\n", 2, "case-sensitive: [Gaussian_yolo]"),
    ("[net]\n[convolutional\n", 2, "[convolutional is not a Darknet section"),
    ("filters=3\n[net]\n", 1, "outside of any section"),
    ("[convolutional]\n[net]\n", 1, "the first section must be [net]"),
    ("[net]\n[empty]\n[network]\n", 3, "[network] may appear only once"),
])
def test_errors_name_file_and_line(text: str, line: int, needle: str) -> None:
    with pytest.raises(CfgError) as err:
        parse_cfg_text(text, "bad.cfg")
    assert f"bad.cfg:{line}" in str(err.value)
    assert needle in str(err.value)


def test_required_value_names_the_key() -> None:
    sections = parse_cfg_text("[net]\n[route]\n", "v.cfg")
    with pytest.raises(CfgError, match=r"v.cfg:2: key 'layers': \[route\] is required"):
        sections[1].get_ints("layers")


def test_missing_file() -> None:
    with pytest.raises(CfgError, match="cannot read cfg file"):
        parse_cfg("/nonexistent/net.cfg")
