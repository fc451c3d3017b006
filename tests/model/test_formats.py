"""model.formats: the one list of accepted formats, what the README says, and sniffing."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from model.formats import ACCEPTED_TEXT, FORMATS, NOT_AN_IMAGE, sniff_content_type
from settings import BASE_DIR


def test_readme_lists_exactly_the_accepted_formats() -> None:
    readme = (BASE_DIR / "README.md").read_text(encoding="utf-8")
    match = re.search(r"\*\*Accepted images:\*\* ([^.]+)\.", readme)
    assert match, "README.md has no '**Accepted images:** ...' sentence"
    assert re.sub(r"\s+", " ", match.group(1)) == ACCEPTED_TEXT


def test_the_refusal_names_every_format() -> None:
    for fmt in FORMATS:
        assert fmt.name in NOT_AN_IMAGE


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_sniffs_what_pillow_writes(fmt) -> None:
    if fmt.pillow[0] == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buf, format=fmt.pillow[0])
    assert sniff_content_type(buf.getvalue()) == fmt.content_type


@pytest.mark.parametrize("data", [
    b"", b"GIF8", b"%PDF-1.7\n", b"hello world",
    b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom",  # a video, not an image
    b"\x00\x00\x00\xffftypheic",  # box larger than the data
])
def test_refuses_what_is_not_an_accepted_image(data: bytes) -> None:
    assert sniff_content_type(data) is None


def test_the_api_document_lists_every_format() -> None:
    import yaml

    spec = yaml.safe_load((BASE_DIR / "service/web/openapi.yaml").read_text(encoding="utf-8"))
    body = spec["paths"]["/detect"]["post"]["requestBody"]["content"]
    assert set(body) - {"multipart/form-data"} == {f.content_type for f in FORMATS}
