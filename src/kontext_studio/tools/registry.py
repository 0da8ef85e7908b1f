"""The free tools as data: one :class:`ToolSpec` per tool, and :func:`run_tool` that every face calls.

Adding a tool = a typed function + a parameter dataclass in its module, and one entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from kontext_studio.tools import compose, enhance, files, geometry, matting, provenance
from kontext_studio.tools.base import Limits, ToolImageError, ToolInput, ToolParams, ToolResult, ToolSpec, UnknownTool
from kontext_studio.tools.io import load_image, load_mask, working_copy

MP = 1_000_000


def _one(inp: ToolInput) -> Image.Image:
    return working_copy(inp.images[0])


def _remove_background(inp: ToolInput, p: matting.RemoveBackgroundParams) -> ToolResult:
    out = matting.remove_background(_one(inp), p)
    return ToolResult(out, {"width": out.width, "height": out.height, "model": f"IS-Net ({p.model})"}, format="png")


def _replace_background(inp: ToolInput, p: matting.ReplaceBackgroundParams) -> ToolResult:
    extra = inp.images[1] if len(inp.images) > 1 else None
    return ToolResult(matting.replace_background(_one(inp), p, extra), {"background": p.background})


def _portrait_blur(inp: ToolInput, p: matting.PortraitBlurParams) -> ToolResult:
    out, used = matting.portrait_blur(_one(inp), p)
    return ToolResult(out, {"mask_model": used})


def _upscale(inp: ToolInput, p: enhance.UpscaleParams) -> ToolResult:
    out = enhance.upscale(_one(inp), p)
    return ToolResult(out, {"width": out.width, "height": out.height, "mode": p.mode})


def _denoise(inp: ToolInput, p: enhance.DenoiseParams) -> ToolResult:
    out, sigma = enhance.denoise(_one(inp), p)
    return ToolResult(out, {"strength": round(sigma, 2)})


def _sharpen(inp: ToolInput, p: enhance.SharpenParams) -> ToolResult:
    return ToolResult(enhance.sharpen(_one(inp), p))


def _auto_enhance(inp: ToolInput, p: enhance.AutoEnhanceParams) -> ToolResult:
    return ToolResult(enhance.auto_enhance(_one(inp), p))


def _erase(inp: ToolInput, p: compose.EraseParams) -> ToolResult:
    if inp.mask is None:
        raise ToolImageError("the eraser needs a mask: paint the object to remove in white on black, the same size "
                             "as the picture", field="mask")
    return ToolResult(compose.erase(_one(inp), inp.mask, p))


def _crop(inp: ToolInput, p: geometry.CropParams) -> ToolResult:
    out, facts = geometry.crop(_one(inp), p)
    return ToolResult(out, {**facts, "width": out.width, "height": out.height})


def _rotate(inp: ToolInput, p: geometry.RotateParams) -> ToolResult:
    out, facts = geometry.rotate(_one(inp), p)
    return ToolResult(out, {**facts, "width": out.width, "height": out.height})


def _resize(inp: ToolInput, p: geometry.ResizeParams) -> ToolResult:
    out = geometry.resize(_one(inp), p)
    return ToolResult(out, {"width": out.width, "height": out.height})


def _convert(inp: ToolInput, p: files.ConvertParams) -> ToolResult:
    img = inp.images[0]
    data = files.convert(img, p)
    return ToolResult(None, {"bytes": len(data), "format": p.format}, encoded=data, format=p.format,
                      changes_pixels=p.format in ("jpeg", "webp", "avif"))


def _compress(inp: ToolInput, p: files.CompressParams) -> ToolResult:
    data, facts = files.compress(working_copy(inp.images[0]), p)
    return ToolResult(None, facts, encoded=data, format=p.format)


def _strip(inp: ToolInput, p: files.StripMetadataParams) -> ToolResult:
    img = inp.images[0]
    out, removed = files.strip_metadata(img, p)
    fmt = {"JPEG": "jpeg", "WEBP": "webp", "AVIF": "avif"}.get(img.format or "", "png")
    return ToolResult(out, {"removed": removed}, format=fmt, changes_pixels=False)


def _color(inp: ToolInput, p: enhance.ColorAdjustParams) -> ToolResult:
    return ToolResult(enhance.color_adjust(_one(inp), p))


def _text(inp: ToolInput, p: compose.TextParams) -> ToolResult:
    logo = inp.images[1] if len(inp.images) > 1 else None
    return ToolResult(compose.add_text(_one(inp), p, logo))


def _collage(inp: ToolInput, p: compose.CollageParams) -> ToolResult:
    out = compose.collage(inp.images, p)
    return ToolResult(out, {"width": out.width, "height": out.height, "count": len(inp.images)})


def _headshot(inp: ToolInput, p: geometry.HeadshotParams) -> ToolResult:
    out, facts = geometry.headshot(_one(inp), p)
    return ToolResult(out, {**facts, "width": out.width, "height": out.height})


def _info(inp: ToolInput, p: files.InfoParams) -> ToolResult:
    return ToolResult(None, files.image_info(inp.images[0], p), changes_pixels=False)


def _inspect(inp: ToolInput, p: provenance.InspectParams) -> ToolResult:
    data = inp.sources[0] if inp.sources else b""
    return ToolResult(None, provenance.inspect_provenance(data, inp.images[0]), changes_pixels=False)


def _spec(name: str, title: str, description: str, category: str, params: type[ToolParams], run: Any,
          limits: Limits = Limits(), model: str | None = None, pixel_limit: Any = None) -> ToolSpec:
    return ToolSpec(name, title, description, category, params, limits, run, model, pixel_limit=pixel_limit)


# Real-ESRGAN x4plus costs about 20 minutes per input megapixel on 2 CPU cores (benchmarks/tools.py), at 2x
# too (it runs at 4x, then scales down): its limit keeps one run near 5 minutes. The fast model is some 35
# times quicker; the photo mode is bounded by the size of what it writes.
UPSCALE_LIMITS = {("quality", 2): MP // 4, ("quality", 4): MP // 4, ("fast", 2): 2 * MP, ("fast", 4): MP // 2,
                  ("photo", 2): 16 * MP, ("photo", 4): 4 * MP}


TOOLS: dict[str, ToolSpec] = {s.name: s for s in (
    _spec("remove-background", "Remove background",
          "Cut the subject out with the IS-Net matting model: a transparent PNG or WebP with soft edges (hair) kept.",
          "cut-out", matting.RemoveBackgroundParams, _remove_background,
          Limits(max_pixels=40 * MP, alpha_out=True), "isnet"),
    _spec("replace-background", "Replace background",
          "Put the subject on a colour, a blurred version of its own background, or a second image "
          "(same matte as remove background).",
          "cut-out", matting.ReplaceBackgroundParams, _replace_background, Limits(max_pixels=40 * MP, max_inputs=2),
          "isnet"),
    _spec("portrait-blur", "Portrait blur",
          "Blur the background behind a person (MediaPipe person mask), adjustable strength; the person stays sharp.",
          "cut-out", matting.PortraitBlurParams, _portrait_blur, Limits(max_pixels=40 * MP), "selfie"),
    _spec("upscale", "Upscale ×2 / ×4",
          "Enlarge 2x or 4x with Real-ESRGAN (real detail) or a fast photo-safe mode that invents nothing.",
          "enhance", enhance.UpscaleParams, _upscale, Limits(max_pixels=16 * MP), "realesrgan",
          pixel_limit=lambda p: UPSCALE_LIMITS[(p.mode, p.scale)]),
    _spec("denoise", "Denoise", "Remove sensor and compression noise (non-local means or total variation); "
          "the strength is estimated from the picture unless given.",
          "enhance", enhance.DenoiseParams, _denoise, Limits(max_pixels=25 * MP)),
    _spec("sharpen", "Sharpen / deblur", "Sharpen detail (unsharp mask) or undo a slight blur (Wiener).",
          "enhance", enhance.SharpenParams, _sharpen, Limits(max_pixels=40 * MP)),
    _spec("auto-enhance", "Auto-enhance", "Fix exposure, local contrast and white balance in one click.",
          "enhance", enhance.AutoEnhanceParams, _auto_enhance),
    _spec("erase", "Object eraser",
          "Remove what you paint (white on the mask) and fill it from the rest of the picture (PatchMatch), "
          "no AI model involved.",
          "compose", compose.EraseParams, _erase, Limits(max_pixels=12 * MP, mask="required")),
    _spec("crop", "Crop", "Crop to 1:1, 4:5, 9:16, 16:9, 3:2... or a social preset; smart focus keeps the faces "
          "or the main subject in frame.", "geometry", geometry.CropParams, _crop),
    _spec("rotate", "Rotate / flip / straighten", "Turn by any angle, mirror, or level a tilted horizon "
          "automatically.", "geometry", geometry.RotateParams, _rotate),
    _spec("resize", "Resize", "Resize to a width, a height, both (fit inside, fill, or stretch) or a percentage.",
          "geometry", geometry.ResizeParams, _resize),
    _spec("convert", "Convert", "Convert to JPEG, PNG, WebP or AVIF with a quality (reads HEIC from phones too).",
          "file", files.ConvertParams, _convert),
    _spec("compress", "Compress to a size", "The best quality that fits under a file size, shrinking the picture "
          "only when it must.", "file", files.CompressParams, _compress),
    _spec("strip-metadata", "Strip metadata", "Remove GPS position, camera data, EXIF, XMP and comments; the "
          "pixels stay exactly as they are.", "file", files.StripMetadataParams, _strip),
    _spec("color-adjust", "Colour adjust", "Brightness, contrast, saturation, temperature, tint and gamma.",
          "enhance", enhance.ColorAdjustParams, _color),
    _spec("add-text", "Add text / watermark", "Write text, or place a logo (second image), in a corner or tiled "
          "across the picture as a watermark.", "compose", compose.TextParams, _text, Limits(max_inputs=2)),
    _spec("collage", "Collage / grid", "Lay out 2 to 16 pictures in a grid with even gaps.", "compose",
          compose.CollageParams, _collage, Limits(max_pixels=25 * MP, min_inputs=2, max_inputs=16)),
    _spec("headshot", "Face crop / headshot", "Frame the largest (or a chosen) face as a headshot.", "faces",
          geometry.HeadshotParams, _headshot),
    _spec("info", "Image info", "Size, format, colour profile, an EXIF summary (camera, date, GPS present) and "
          "the faces found.", "file", files.InfoParams, _info),
    _spec("inspect", "Inspect provenance", "Read the edit recipe, IPTC marks and C2PA content credentials in "
          "any image and say in words whether and how it was AI-generated or edited.", "provenance",
          provenance.InspectParams, _inspect),
)}


def list_tools() -> list[ToolSpec]:
    """Every free tool, in the order people see them."""
    return list(TOOLS.values())


def get_tool(name: str) -> ToolSpec:
    """The tool of that name.

    Raises:
        UnknownTool: no such tool (the message lists them).
    """
    spec = TOOLS.get(name) or TOOLS.get(name.replace("_", "-"))
    if spec is None:
        raise UnknownTool(f"no tool named {name!r}; tools: {', '.join(TOOLS)}", field="name")
    return spec


ImageSource = bytes | str | Path | Image.Image


def run_tool(name: str, images: Sequence[ImageSource], params: Mapping[str, Any] | ToolParams | None = None,
             mask: ImageSource | None = None) -> ToolResult:
    """Run one tool with every check its faces need.

    Args:
        name: the tool's name (see :data:`TOOLS`).
        images: the input pictures: file bytes, paths or PIL images.
        params: loosely typed values (strings from a form or the CLI, JSON values) or the tool's own
            parameter dataclass.
        mask: the painted mask (white = the area to work on), for tools that take one.

    Returns:
        The tool's result.

    Raises:
        UnknownTool: no such tool.
        InvalidRequest: a bad parameter (naming it), too few or too many images, a missing or wrong mask.
        ToolImageError: an input that is not an image the tools read, or too large for this tool.
        ToolModelMissing: the tool's model is not installed (the message says how to install it).
    """
    spec = get_tool(name)
    lim = spec.limits
    if not lim.min_inputs <= len(images) <= lim.max_inputs:
        want = str(lim.min_inputs) if lim.min_inputs == lim.max_inputs else f"{lim.min_inputs} to {lim.max_inputs}"
        raise ToolImageError(f"{spec.title} takes {want} image(s); got {len(images)}", field="images")
    typed = params if isinstance(params, ToolParams) else spec.params_type.from_raw(params or {})
    if not isinstance(typed, spec.params_type):
        raise ToolImageError(f"{spec.name} takes {spec.params_type.__name__}, not {type(typed).__name__}",
                             field="params")
    max_px = spec.max_pixels(typed)
    decoded: list[Image.Image] = []
    sources: list[bytes] = []
    for i, src in enumerate(images):
        label = "image" if len(images) == 1 else f"image {i + 1}"
        if isinstance(src, Image.Image):
            if src.width * src.height > max_px:
                raise ToolImageError(f"{label} is {src.width}x{src.height}; {spec.title} takes at most "
                                     f"{max_px / MP:g} MP: make it smaller first (resize)", field="images")
            decoded.append(src)
            continue
        data = Path(src).read_bytes() if isinstance(src, str | Path) and Path(src).is_file() else src
        decoded.append(load_image(data, name=label, max_pixels=max_px))
        if isinstance(data, bytes):
            sources.append(data)
    mask_img = None
    if mask is not None:
        if lim.mask == "none":
            raise ToolImageError(f"{spec.title} takes no mask", field="mask")
        if isinstance(mask, Image.Image):
            mask_img = mask.convert("L")
            if mask_img.size != decoded[0].size:
                raise ToolImageError(f"the mask is {mask_img.size[0]}x{mask_img.size[1]} but the image is "
                                     f"{decoded[0].size[0]}x{decoded[0].size[1]}", field="mask")
        else:
            mask_img = load_mask(mask, decoded[0].size)
    elif lim.mask == "required":
        raise ToolImageError(f"{spec.title} needs a mask: paint the area in white on black, the same size as the "
                             "picture", field="mask")
    result = spec.run(ToolInput(decoded, mask_img, sources), typed)
    result.params = dataclasses.asdict(typed)  # type: ignore[call-overload]
    return result
