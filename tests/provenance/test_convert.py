"""Converting an output keeps its recipe, IPTC mark and history (a signed transcode of the original)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kontext_studio.core.errors import InvalidImage, InvalidRequest
from kontext_studio.core.provenance import ContentCredentials
from kontext_studio.core.provenance.convert import convert_output
from kontext_studio.core.provenance.inspect import inspect_provenance
from tests.provenance.test_signing import fake_edit


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_converted_output_keeps_recipe_and_chain(fmt: str, pil: str, credentials: ContentCredentials,
                                                 tmp_path: Path) -> None:
    source = tmp_path / "photo.png"
    Image.radial_gradient("L").convert("RGB").resize((120, 90)).save(source)
    edited = fake_edit(tmp_path, source, "png" if fmt != "png" else "webp")
    converted = convert_output(edited.read_bytes(), fmt)
    assert converted.signed
    report = inspect_provenance(converted.data)
    assert report.format == pil and report.credentials == "trusted"
    assert report.recipe is not None and report.recipe["instruction"] == "make it snowy"
    assert report.iptc_source_type and report.iptc_source_type.endswith("trainedAlgorithmicMedia")
    newest, parent = report.history
    assert newest.actions[-1].action == "c2pa.transcoded" and not newest.ai and parent.ai
    before = np.asarray(Image.open(edited).convert("RGB"), dtype=float)
    after = np.asarray(Image.open(io.BytesIO(converted.data)).convert("RGB"), dtype=float)
    assert after.shape == before.shape and np.abs(after - before).mean() < 4  # the same picture


def test_transparent_png_to_jpeg_turns_white_and_bad_input_is_named(credentials: ContentCredentials) -> None:
    cutout = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    cutout.paste((0, 0, 255, 255), (10, 10, 30, 20))
    buf = io.BytesIO()
    cutout.save(buf, format="PNG")
    out = convert_output(buf.getvalue(), "jpg")
    pixels = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB"), dtype=int)
    assert tuple(pixels[0, 0]) == pytest.approx((255, 255, 255), abs=8)  # JPEG chroma bleeds a little
    assert tuple(pixels[15, 20]) == pytest.approx((0, 0, 255), abs=8)
    assert inspect_provenance(out.data).history[0].ingredients[0].relationship == "parentOf"
    with pytest.raises(InvalidRequest, match="png, jpeg or webp; got 'gif'"):
        convert_output(buf.getvalue(), "gif")
    with pytest.raises(InvalidImage, match="not an image"):
        convert_output(b"hello", "png")
