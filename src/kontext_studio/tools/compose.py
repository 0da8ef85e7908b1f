"""Putting things together: text and watermarks, collages, and the object eraser (inpainting without diffusion)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFilter, ImageFont, ImageOps

from kontext_studio.tools.base import ToolImageError, ToolParams, param

POSITIONS = ("top-left", "top", "top-right", "left", "center", "right", "bottom-left", "bottom", "bottom-right",
             "tiled")
_FONT_FILES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
               "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for f in _FONT_FILES:
        if Path(f).is_file():
            return ImageFont.truetype(f, px)
    return ImageFont.load_default(px)  # Pillow's own scalable font (needs FreeType; bitmap otherwise)


def _place(position: str, canvas: tuple[int, int], item: tuple[int, int], margin: int) -> tuple[int, int]:
    cw, ch = canvas
    w, h = item
    col = 0 if "left" in position else 2 if "right" in position else 1
    row = 0 if position.startswith("top") else 2 if position.startswith("bottom") else 1
    x = [margin, (cw - w) // 2, cw - w - margin][col]
    y = [margin, (ch - h) // 2, ch - h - margin][row]
    return x, y


# -- add text / watermark -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TextParams(ToolParams):
    text: str = param("", "The words to add (empty with a second image: a logo watermark).", maximum=500)
    position: str = param("bottom-right", "Where: " + ", ".join(POSITIONS) + ".", choices=POSITIONS)
    size: float = param(5.0, "Text height, or logo width, in % of the picture (1-50).", minimum=1, maximum=50)
    color: str = param("#ffffff", "Text colour.", kind="color")
    opacity: float = param(0.8, "0 (invisible) to 1 (solid).", minimum=0, maximum=1)
    margin: float = param(3.0, "Distance from the edge in % of the picture (0-25).", minimum=0, maximum=25)
    shadow: bool = param(True, "A soft dark shadow so the text reads on any background.")


def add_text(image: Image.Image, params: TextParams, logo: Image.Image | None = None) -> Image.Image:
    """Write text, or place a logo, on a picture; ``tiled`` repeats it diagonally as a watermark.

    Raises:
        ToolImageError: neither text nor a logo given.
    """
    if not params.text.strip() and logo is None:
        raise ToolImageError("give the text to add, or a second image as the logo", field="text")
    base = image.convert("RGBA")
    w, h = base.size
    if logo is not None:
        lw = max(1, round(w * params.size / 100))
        mark = logo.convert("RGBA")
        mark = mark.resize((lw, max(1, round(mark.height * lw / mark.width))), Image.Resampling.LANCZOS)
    else:
        px = max(6, round(h * params.size / 100))
        font = _font(px)
        probe = ImageDraw.Draw(Image.new("L", (1, 1)))
        left, top, right, bottom = (round(v) for v in probe.textbbox((0, 0), params.text, font=font))
        pad = max(2, px // 8)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        mark = Image.new("RGBA", (tw, th), (0, 0, 0, 0))
        draw = ImageDraw.Draw(mark)
        rgb = ImageColor.getrgb(params.color)[:3]
        if params.shadow:
            shadow = Image.new("RGBA", (tw, th), (0, 0, 0, 0))
            ImageDraw.Draw(shadow).text((pad - left + 1, pad - top + 2), params.text, font=font,
                                        fill=(0, 0, 0, 160))
            mark = Image.alpha_composite(mark, shadow.filter(ImageFilter.GaussianBlur(max(1, px / 20))))
            draw = ImageDraw.Draw(mark)
        draw.text((pad - left, pad - top), params.text, font=font, fill=(*rgb, 255))
    alpha = mark.getchannel("A").point(lambda v: round(v * params.opacity))
    mark.putalpha(alpha)
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    if params.position == "tiled":
        tile = mark.rotate(30, expand=True, resample=Image.Resampling.BICUBIC)
        step_x, step_y = tile.width + w // 10, tile.height + h // 10
        for row, y in enumerate(range(-tile.height // 2, h, step_y)):
            for x in range(-tile.width // 2 + (row % 2) * step_x // 2, w, step_x):
                layer.alpha_composite(tile, (x, y)) if x >= 0 and y >= 0 else layer.paste(tile, (x, y), tile)
    else:
        margin = round(min(w, h) * params.margin / 100)
        layer.paste(mark, _place(params.position, base.size, mark.size, margin), mark)
    out = Image.alpha_composite(base, layer)
    return out if image.mode == "RGBA" else out.convert("RGB")


# -- collage ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CollageParams(ToolParams):
    columns: int | None = param(None, "Columns (auto: as square a grid as the count allows).", minimum=1,
                                maximum=9, auto=True)
    cell: int = param(600, "Size of each cell in pixels (64-2048).", minimum=64, maximum=2048)
    aspect: str = param("1:1", "Shape of each cell.", choices=("1:1", "4:5", "3:4", "4:3", "16:9", "9:16"))
    gap: int = param(12, "Space between pictures in pixels (0-200).", minimum=0, maximum=200)
    background: str = param("#ffffff", "Colour of the gaps and border.", kind="color")
    fit: str = param("cover", "cover: fill each cell (crops); contain: whole picture (bars).",
                     choices=("cover", "contain"))


def collage(images: list[Image.Image], params: CollageParams = CollageParams()) -> Image.Image:
    """Lay out 2-16 pictures in a grid, in the order given.

    Raises:
        ToolImageError: fewer than 2 pictures.
    """
    n = len(images)
    if n < 2:
        raise ToolImageError("a collage needs at least 2 images", field="images")
    cols = params.columns or math.ceil(math.sqrt(n))
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    a, b = (int(v) for v in params.aspect.split(":"))
    cw = params.cell
    ch = round(cw * b / a)
    g = params.gap
    bg = ImageColor.getrgb(params.background)[:3]
    canvas = Image.new("RGB", (cols * cw + (cols + 1) * g, rows * ch + (rows + 1) * g), bg)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        rgb = img.convert("RGB")
        if params.fit == "cover":
            cell_img = ImageOps.fit(rgb, (cw, ch), Image.Resampling.LANCZOS)
            offset = (0, 0)
        else:
            cell_img = ImageOps.contain(rgb, (cw, ch), Image.Resampling.LANCZOS)
            offset = ((cw - cell_img.width) // 2, (ch - cell_img.height) // 2)
        canvas.paste(cell_img, (g + c * (cw + g) + offset[0], g + r * (ch + g) + offset[1]))
    return canvas


# -- object eraser ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EraseParams(ToolParams):
    method: str = param("patchmatch", "patchmatch: fills with texture copied from the rest of the picture "
                        "(objects, people); fast: smooth diffusion fill (thin strokes, wires, blemishes).",
                        choices=("patchmatch", "fast"))
    grow: int = param(6, "Grow the painted area by this many pixels so the object's edge goes too (0-50).",
                      minimum=0, maximum=50)


def erase(image: Image.Image, mask: Image.Image, params: EraseParams = EraseParams()) -> Image.Image:
    """Remove what the mask covers (white = erase) and fill it from its surroundings.

    Raises:
        ToolImageError: the mask is empty, or another size than the picture.
    """
    import cv2

    if mask.size != image.size:
        raise ToolImageError(f"the mask is {mask.size[0]}x{mask.size[1]} but the image is "
                             f"{image.size[0]}x{image.size[1]}", field="mask")
    m = np.asarray(mask.convert("L")) >= 128
    if not m.any():
        raise ToolImageError("the mask is empty: paint the object to erase in white", field="mask")
    if params.grow:
        k = 2 * params.grow + 1
        m = cv2.dilate(m.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0
    rgb = np.asarray(image.convert("RGB"))
    m8 = m.astype(np.uint8) * 255
    if params.method == "patchmatch":
        from patchmatch import patch_match

        if not patch_match.patchmatch_available:
            raise ToolImageError("the PatchMatch library did not load on this machine; use method=fast",
                                 field="method")
        # PatchMatch searches the whole picture it is given: a window around the hole (its own size on each
        # side) keeps the cost near the hole's size rather than the photo's, and the source texture local.
        ys, xs = np.nonzero(m)
        h, w = m.shape
        pad_y = max(48, int(ys.max() - ys.min() + 1))
        pad_x = max(48, int(xs.max() - xs.min() + 1))
        y0, y1 = max(0, int(ys.min()) - pad_y), min(h, int(ys.max()) + 1 + pad_y)
        x0, x1 = max(0, int(xs.min()) - pad_x), min(w, int(xs.max()) + 1 + pad_x)
        window, hole = rgb[y0:y1, x0:x1], m8[y0:y1, x0:x1]
        # The hole is smooth-filled first so the patch search does not start from black.
        seeded = cv2.inpaint(np.ascontiguousarray(window), np.ascontiguousarray(hole), 5, cv2.INPAINT_TELEA)
        filled = patch_match.inpaint(seeded, mask=np.ascontiguousarray(hole), patch_size=5)
        out = rgb.copy()
        out[y0:y1, x0:x1] = np.where(hole[..., None] > 0, filled, window)
    else:
        out = cv2.inpaint(rgb, m8, 5, cv2.INPAINT_TELEA)
    result = Image.fromarray(out.astype(np.uint8), "RGB")
    if image.mode == "RGBA":
        result.putalpha(image.getchannel("A"))
    return result
