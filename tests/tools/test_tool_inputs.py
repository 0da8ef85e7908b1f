"""The registry as data, parameter checking, and bad input: each mistake gets a clear error naming the field."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.tools import TOOLS, ToolImageError, ToolModelMissing, UnknownTool, run_tool
from kontext_studio.tools.ai import AI_TOOLS
from kontext_studio.tools.enhance import UpscaleParams

from .conftest import jpeg_bytes, photo, png_bytes

ISSUE_TOOLS = {"remove-background", "replace-background", "portrait-blur", "upscale", "denoise", "sharpen",
               "auto-enhance", "erase", "crop", "rotate", "resize", "convert", "compress", "strip-metadata",
               "color-adjust", "add-text", "collage", "headshot", "info", "inspect"}


def test_registry_lists_every_free_tool_as_data() -> None:
    assert set(TOOLS) >= ISSUE_TOOLS
    for spec in TOOLS.values():
        d = spec.as_dict()
        json.dumps(d)  # plain data, for the API and --json
        assert d["free"] is True and d["credits"] == 0 and d["title"] and d["description"]
        for p in d["params"]:
            assert p["kind"] in ("int", "float", "str", "bool", "choice", "color") and p["help"]
            if p["kind"] == "choice":
                assert p["default"] in p["choices"]


def test_tools_import_without_torch_or_the_engine() -> None:
    heavy = "('torch', 'diffusers', 'transformers', 'onnxruntime', 'cv2')"
    code = ("import sys, kontext_studio.tools, kontext_studio.tools.ai, kontext_studio.cli.tools; "
            f"print(sorted(m for m in {heavy} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("name", "params", "field"), [
    ("upscale", {"scale": "3"}, "scale"),
    ("upscale", {"mode": "magic"}, "mode"),
    ("upscale", {"sclae": "2"}, "sclae"),
    ("resize", {}, "width"),
    ("resize", {"width": "-5"}, "width"),
    ("resize", {"width": "abc"}, "width"),
    ("compress", {"target_kb": "1"}, "target_kb"),
    ("crop", {"aspect": "wide"}, "aspect"),
    ("crop", {"box": "1,2,3"}, "box"),
    ("add-text", {"color": "not-a-colour", "text": "x"}, "color"),
    ("rotate", {"straighten": "maybe"}, "straighten"),
    ("denoise", {"strength": "nan"}, "strength"),
])
def test_bad_parameters_name_the_field(name: str, params: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        run_tool(name, [photo("coffee").resize((64, 48))], params)
    assert exc.value.field == field and field in str(exc.value)


def test_typed_params_check_their_limits_in_the_library_too() -> None:
    with pytest.raises(InvalidRequest, match="scale"):
        UpscaleParams(scale=8)
    assert UpscaleParams(scale=4, mode="photo").scale == 4


def test_unknown_tool_lists_the_tools() -> None:
    with pytest.raises(UnknownTool, match="remove-background"):
        run_tool("remove-bg", [photo("coffee")])


def test_wrong_format_is_refused_with_the_formats_read() -> None:
    with pytest.raises(ToolImageError, match="HEIC") as exc:
        run_tool("resize", [b"%PDF-1.4 not a picture"], {"width": 10})
    assert exc.value.field == "image"
    with pytest.raises(ToolImageError, match="empty"):
        run_tool("resize", [b""], {"width": 10})
    truncated = jpeg_bytes(photo("coffee"))[:2000]
    with pytest.raises(ToolImageError):
        run_tool("resize", [truncated], {"width": 10})


def test_huge_image_is_refused_before_decoding_by_the_tools_own_limit() -> None:
    # 1200x1200 is fine for resize, and for the photo upscale, but over Real-ESRGAN's 0.25 MP: refused from
    # the header, no model run.
    big = png_bytes(Image.new("RGB", (1200, 1200), "white"))
    with pytest.raises(ToolImageError, match=r"0\.25 MP"):
        run_tool("upscale", [big], {"mode": "quality"})
    assert run_tool("upscale", [big], {"mode": "photo"}).image.size == (2400, 2400)  # type: ignore[union-attr]
    assert run_tool("resize", [big], {"width": 10}).image.size == (10, 10)  # type: ignore[union-attr]
    # A PNG header claiming 30000x30000 (a decompression bomb) is refused for every tool.
    bomb = png_bytes(Image.new("1", (30000, 30000)))
    with pytest.raises(ToolImageError, match="MP"):
        run_tool("info", [bomb])


def test_mask_missing_wrong_size_or_empty() -> None:
    img = photo("coffee").resize((120, 80))
    with pytest.raises(ToolImageError, match="needs a mask") as exc:
        run_tool("erase", [img])
    assert exc.value.field == "mask"
    with pytest.raises(ToolImageError, match="mask is 60x40"):
        run_tool("erase", [img], mask=png_bytes(Image.new("L", (60, 40), 255)))
    with pytest.raises(ToolImageError, match="empty"):
        run_tool("erase", [img], mask=Image.new("L", img.size, 0))
    with pytest.raises(ToolImageError, match="takes no mask"):
        run_tool("resize", [img], {"width": 10}, mask=Image.new("L", img.size, 0))


def test_image_counts_are_checked() -> None:
    with pytest.raises(ToolImageError, match=r"at least|takes 2 to 16"):
        run_tool("collage", [photo("coffee")])
    with pytest.raises(ToolImageError, match="takes 1"):
        run_tool("denoise", [photo("coffee"), photo("coffee")])


def test_transparent_result_into_jpeg_is_refused() -> None:
    from kontext_studio.tools import encode

    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    with pytest.raises(ToolImageError, match="PNG or WebP"):
        encode(rgba, "jpeg")


def test_missing_model_says_how_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KONTEXT_TOOL_MODELS", str(tmp_path))
    with pytest.raises(ToolModelMissing, match="make install") as exc:
        run_tool("remove-background", [photo("coffee").resize((64, 48))])
    assert exc.value.exit_code == 3 and exc.value.http_status == 503  # type: ignore[attr-defined]


def test_headshot_without_a_face_says_so() -> None:
    with pytest.raises(ToolImageError, match="no face"):
        run_tool("headshot", [photo("coffee")])


def test_ai_tools_make_instructions_that_say_what_to_keep() -> None:
    assert len(AI_TOOLS) >= 7
    for tool in AI_TOOLS.values():
        assert tool.keep.lower().startswith("keep")
    text = AI_TOOLS["remove-object-by-name"].build({"object": "the {red} car"})
    assert "Remove the {red} car" in text and "Keep everything else" in text
    with pytest.raises(InvalidRequest, match="object") as exc:
        AI_TOOLS["remove-object-by-name"].build({})
    assert exc.value.field == "object"
    with pytest.raises(InvalidRequest, match="unknown parameter"):
        AI_TOOLS["colorize"].build({"colour": "red"})


def test_inspect_reads_our_recipe_and_iptc_mark(tmp_path) -> None:
    from kontext_studio.core.recipe import save_image_with_recipe
    from kontext_studio.core.types import OutputFormat

    path = tmp_path / "edited.png"
    save_image_with_recipe(photo("coffee").resize((64, 48)), path,
                           {"instruction": "make it snowy", "model": {"source": "tiny-kontext"}}, OutputFormat.PNG)
    info = run_tool("inspect", [path]).info
    assert info["ai_generated"] is True and "make it snowy" in info["summary"]
    plain = run_tool("inspect", [png_bytes(photo("coffee"))]).info
    assert plain["ai_generated"] is None and plain["credentials"] == "none"
    assert "Nothing in this file says" in plain["summary"]


def test_strip_metadata_keeps_the_jpeg_format() -> None:
    res = run_tool("strip-metadata", [jpeg_bytes(photo("coffee"))])
    assert res.format == "jpeg" and res.changes_pixels is False
    buf = io.BytesIO(jpeg_bytes(photo("coffee")))
    assert Image.open(buf).format == "JPEG"
