"""JPEG and WebP outputs carry the recipe and the AI mark on every Pillow the project accepts (pillow>=10.4).

Pillow 10.4 ignores ``xmp=`` when saving a JPEG (support came in Pillow 11) and does not always expose the
packet in ``Image.info``; these tests make the installed Pillow behave like that, so they fail for a writer
or reader that leans on either.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kontext_studio.core.errors import RecipeError
from kontext_studio.core.recipe import (
    IPTC_SOURCE_TYPE,
    is_ai_marked,
    jpeg_with_xmp,
    read_recipe,
    save_image_with_recipe,
)
from tests.conftest import noise_image

RECIPE = {"instruction": "she wears the navy suit from the second image", "seed": 4294967295, "tier": "dev",
          "nested": {"path": "C:\\photos\\<me> & \"you\""}}


@pytest.fixture()
def pillow_10_4(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make JPEG saving drop ``xmp=`` and opening hide ``info['xmp']``, as the lowest accepted Pillow does."""
    real_save, real_open = Image.Image.save, Image.open

    def save(self: Image.Image, fp: Any, format: str | None = None, **params: Any) -> None:
        if (format or "").upper() == "JPEG" or str(fp).lower().endswith((".jpg", ".jpeg")):
            params.pop("xmp", None)
        real_save(self, fp, format, **params)

    def open_(fp: Any, *args: Any, **kwargs: Any) -> Image.Image:
        img = real_open(fp, *args, **kwargs)
        if img.format == "JPEG":
            img.info.pop("xmp", None)
        return img

    monkeypatch.setattr(Image.Image, "save", save)
    monkeypatch.setattr(Image, "open", open_)


def _app1_xmp(data: bytes) -> bytes | None:
    """The XMP APP1 payload of a JPEG, parsed here independently of the product code."""
    pos = 2
    while data[pos] == 0xFF and data[pos + 1] not in (0xDA, 0xD9):
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        body = data[pos + 4:pos + 2 + length]
        if data[pos + 1] == 0xE1 and body.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
            return body.split(b"\x00", 1)[1]
        pos += 2 + length
    return None


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp"])
def test_jpeg_and_webp_keep_recipe_and_mark_on_the_lowest_pillow(pillow_10_4: None, tmp_path: Path,
                                                                  suffix: str) -> None:
    path = save_image_with_recipe(noise_image(80, 60), tmp_path / f"out{suffix}", RECIPE)
    assert read_recipe(path) == RECIPE
    assert is_ai_marked(path)
    if suffix != ".webp":
        xmp = _app1_xmp(path.read_bytes())
        assert xmp is not None and IPTC_SOURCE_TYPE.encode() in xmp
    with Image.open(path) as img:  # still a valid picture
        img.load()
        assert img.size == (80, 60)


def test_a_large_recipe_still_fits_one_jpeg_segment(tmp_path: Path) -> None:
    bulky = {**RECIPE, "reference_checks": [[{"message": "x" * 200}] * 200], "pixel_lock_result": {"m": "y" * 30000}}
    path = save_image_with_recipe(noise_image(40, 30), tmp_path / "big.jpg", bulky)
    kept = read_recipe(path)
    assert kept["instruction"] == RECIPE["instruction"] and kept["seed"] == RECIPE["seed"]
    assert is_ai_marked(path)


def test_the_segment_goes_after_the_jfif_header_and_only_into_jpegs() -> None:
    import io

    buf = io.BytesIO()
    noise_image(16, 16).save(buf, format="JPEG")
    data = jpeg_with_xmp(buf.getvalue(), b"<x:xmpmeta/>")
    assert data[2:4] == b"\xff\xe0"  # JFIF stays first, as readers expect
    assert _app1_xmp(data) == b"<x:xmpmeta/>"
    with pytest.raises(ValueError, match="not a JPEG"):
        jpeg_with_xmp(b"\x89PNG....", b"x")


def test_a_jpeg_from_elsewhere_is_still_explained(pillow_10_4: None, tmp_path: Path) -> None:
    p = tmp_path / "camera.jpg"
    noise_image(32, 32).save(p, format="JPEG")
    with pytest.raises(RecipeError, match="carries no Kontext Studio recipe"):
        read_recipe(p)
    assert not is_ai_marked(p)
