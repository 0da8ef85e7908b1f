"""Framing: crop with social presets and smart focus, rotate / flip / straighten, resize, headshot framing."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.tools.base import ToolImageError, ToolParams, param

# Aspect presets, and the pixel sizes the social networks ask for.
ASPECTS = {"1:1": (1, 1), "4:5": (4, 5), "9:16": (9, 16), "16:9": (16, 9), "3:2": (3, 2), "2:3": (2, 3),
           "4:3": (4, 3), "3:4": (3, 4), "21:9": (21, 9)}
SOCIAL = {
    "instagram-square": (1080, 1080), "instagram-portrait": (1080, 1350), "instagram-story": (1080, 1920),
    "facebook-cover": (1640, 624), "x-post": (1600, 900), "linkedin-banner": (1584, 396),
    "youtube-thumbnail": (1280, 720), "pinterest-pin": (1000, 1500),
}

Box = tuple[int, int, int, int]


def face_boxes(image: Image.Image) -> list[Box]:
    """Face boxes (left, top, right, bottom), largest first; empty when dlib's face models are missing."""
    try:
        from kontext_studio.analysis.identity import detect_faces

        faces = detect_faces(image.convert("RGB"))
    except (ImportError, InvalidRequest):
        return []
    boxes: list[Box] = [(round(f.box[0]), round(f.box[1]), round(f.box[2]), round(f.box[3])) for f in faces]
    return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


def saliency_center(image: Image.Image) -> tuple[float, float]:
    """Where the eye goes: the centroid of spectral-residual saliency (Hou & Zhang), in pixel coordinates."""
    import cv2

    small = image.convert("L").resize((128, 128), Image.Resampling.BILINEAR)
    arr = np.asarray(small, dtype=np.float32)
    spec = np.fft.fft2(arr)
    log_amp = np.log(np.abs(spec) + 1e-6)
    residual = log_amp - cv2.blur(log_amp, (3, 3))
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spec)))) ** 2
    sal = cv2.GaussianBlur(sal, (0, 0), 8)
    sal = np.maximum(sal - sal.mean(), 0)  # only the salient part pulls the centre
    total = float(sal.sum())
    if total <= 0:
        return image.width / 2, image.height / 2
    ys, xs = np.mgrid[0:128, 0:128]
    cx = float((sal * xs).sum() / total + 0.5) * image.width / 128
    cy = float((sal * ys).sum() / total + 0.5) * image.height / 128
    return cx, cy


def _window(size: tuple[int, int], ratio: float, center: tuple[float, float]) -> Box:
    w, h = size
    if w / h > ratio:
        cw, ch = round(h * ratio), h
    else:
        cw, ch = w, round(w / ratio)
    left = round(min(max(center[0] - cw / 2, 0), w - cw))
    top = round(min(max(center[1] - ch / 2, 0), h - ch))
    return left, top, left + cw, top + ch


def _include(box: Box, inner: Box, size: tuple[int, int]) -> Box:
    """Slide a crop window (same size) so it contains ``inner`` where it can."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    shift = [0, 0]
    for axis, (lo, hi, ilo, ihi, limit) in enumerate(((x0, x1, inner[0], inner[2], size[0]),
                                                      (y0, y1, inner[1], inner[3], size[1]))):
        if ihi - ilo <= hi - lo:
            if ilo < lo:
                shift[axis] = ilo - lo
            elif ihi > hi:
                shift[axis] = ihi - hi
        shift[axis] = max(-lo, min(limit - hi, shift[axis]))
    return x0 + shift[0], y0 + shift[1], x0 + shift[0] + w, y0 + shift[1] + h


# -- crop ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CropParams(ToolParams):
    aspect: str = param("1:1", "Shape of the crop: W:H (" + ", ".join(ASPECTS) + "), a social preset ("
                        + ", ".join(SOCIAL) + ", which also resizes to its pixels), or free with box.")
    focus: str = param("smart", "smart: keep the faces, else the most salient subject; center: the middle; "
                       "top: the top (portraits).", choices=("smart", "center", "top"))
    box: str | None = param(None, "An exact crop 'left,top,width,height' in pixels (overrides aspect).",
                            auto=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.box is None and self.aspect not in SOCIAL and self.aspect != "free" and _ratio(self.aspect) is None:
            raise InvalidRequest(f"aspect must be W:H like 4:5, a preset ({', '.join(SOCIAL)}) or free; got "
                                 f"{self.aspect!r}", field="aspect")
        if self.aspect == "free" and self.box is None:
            raise InvalidRequest("aspect=free needs a box: left,top,width,height", field="box")
        if self.box is not None:
            _parse_box(self.box)


def _ratio(aspect: str) -> float | None:
    if aspect in ASPECTS:
        return ASPECTS[aspect][0] / ASPECTS[aspect][1]
    parts = aspect.split(":")
    try:
        a, b = (float(p) for p in parts)
    except ValueError:
        return None
    return a / b if len(parts) == 2 and a > 0 and b > 0 and 0.05 < a / b < 20 else None


def _parse_box(text: str) -> Box:
    try:
        x, y, w, h = (int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise InvalidRequest(f"box must be 'left,top,width,height' in whole pixels; got {text!r}",
                             field="box") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise InvalidRequest(f"box must have a positive width and height inside the picture; got {text!r}",
                             field="box")
    return x, y, x + w, y + h


def crop(image: Image.Image, params: CropParams = CropParams()) -> tuple[Image.Image, dict[str, object]]:
    """Crop to a shape, keeping what matters.

    Returns:
        (the crop, facts: the box used and what it kept: "faces", "subject" or "center").

    Raises:
        ToolImageError: a box outside the picture.
    """
    if params.box is not None:
        box = _parse_box(params.box)
        if box[2] > image.width or box[3] > image.height:
            raise ToolImageError(f"box {params.box} reaches past the picture ({image.width}x{image.height})",
                                 field="box")
        return image.crop(box), {"box": list(box), "kept": "box"}
    target = SOCIAL.get(params.aspect)
    ratio = target[0] / target[1] if target else _ratio(params.aspect)
    assert ratio is not None
    kept = params.focus
    if params.focus == "center":
        center = (image.width / 2, image.height / 2)
    elif params.focus == "top":
        center = (image.width / 2, 0.0)
    else:
        faces = face_boxes(image)
        if faces:
            left = min(b[0] for b in faces)
            top = min(b[1] for b in faces)
            right = max(b[2] for b in faces)
            bottom = max(b[3] for b in faces)
            # Eyes a third from the top reads as natural framing: aim a little below the faces' centre.
            center = ((left + right) / 2, (top + bottom) / 2 + (bottom - top) * 0.4)
            kept = "faces"
        else:
            center = saliency_center(image)
            kept = "subject"
    box = _window(image.size, ratio, center)
    if kept == "faces":
        box = _include(box, (left, top, right, bottom), image.size)
    out = image.crop(box)
    if target:
        out = out.resize(target, Image.Resampling.LANCZOS)
    return out, {"box": list(box), "kept": kept}


# -- rotate / flip / straighten -------------------------------------------------------------------------
@dataclass(frozen=True)
class RotateParams(ToolParams):
    angle: float = param(0.0, "Degrees counter-clockwise (-360 to 360); 90, 180 and 270 are lossless.",
                         minimum=-360, maximum=360)
    flip: str = param("none", "Mirror: none, horizontal or vertical.", choices=("none", "horizontal", "vertical"))
    straighten: bool = param(False, "Level a tilted horizon automatically (up to 15 degrees), then crop the "
                             "corners away.")
    fill: str = param("#ffffff", "Colour of the corners a free rotation uncovers (when not cropped).", kind="color")
    crop_corners: bool = param(True, "After a free rotation, crop to the largest upright rectangle.")


def detect_tilt(image: Image.Image) -> float:
    """The tilt of a picture's horizon/verticals in degrees (positive: rotate counter-clockwise to level)."""
    import cv2

    grey = np.asarray(image.convert("L").resize(_fit(image.size, 800)), dtype=np.uint8)
    edges = cv2.Canny(grey, 60, 160)
    lines = cv2.HoughLinesP(edges, 1, np.pi / 720, threshold=60, minLineLength=grey.shape[1] // 8,
                            maxLineGap=8)
    if lines is None:
        return 0.0
    angles, weights = [], []
    for x1, y1, x2, y2 in np.asarray(lines).reshape(-1, 4).tolist():
        a = math.degrees(math.atan2(y2 - y1, x2 - x1))
        length = math.hypot(x2 - x1, y2 - y1)
        for ref in (0.0, 90.0, -90.0, 180.0, -180.0):
            d = a - ref
            if abs(d) <= 15:
                angles.append(d)
                weights.append(length)
    if not angles:
        return 0.0
    order = np.argsort(angles)
    cum = np.cumsum(np.asarray(weights)[order])
    median = float(np.asarray(angles)[order][np.searchsorted(cum, cum[-1] / 2)])
    # Image y grows downwards: a line that rises to the right has a negative angle and needs a clockwise turn.
    return median


def _fit(size: tuple[int, int], longest: int) -> tuple[int, int]:
    scale = min(1.0, longest / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _inner_rect(w: int, h: int, angle_deg: float) -> tuple[int, int]:
    """The largest axis-aligned rectangle inside a w x h rectangle rotated by angle."""
    a = math.radians(abs(angle_deg)) % math.pi
    if a > math.pi / 2:
        a = math.pi - a
    sin_a, cos_a = math.sin(a), math.cos(a)
    long_side, short_side = max(w, h), min(w, h)
    if short_side <= 2 * sin_a * cos_a * long_side or abs(sin_a - cos_a) < 1e-10:
        x = 0.5 * short_side
        wr, hr = (x / sin_a, x / cos_a) if w >= h else (x / cos_a, x / sin_a)
    else:
        cos_2a = cos_a * cos_a - sin_a * sin_a
        wr, hr = (w * cos_a - h * sin_a) / cos_2a, (h * cos_a - w * sin_a) / cos_2a
    return max(1, int(wr)), max(1, int(hr))


def rotate(image: Image.Image, params: RotateParams = RotateParams()) -> tuple[Image.Image, dict[str, object]]:
    """Rotate, mirror or level a picture.

    Returns:
        (the picture, facts: the angle applied, including the detected tilt when straightening).
    """
    img = image
    if params.flip == "horizontal":
        img = ImageOps.mirror(img)
    elif params.flip == "vertical":
        img = ImageOps.flip(img)
    angle = params.angle
    tilt = 0.0
    if params.straighten:
        tilt = detect_tilt(img)
        angle += tilt
    angle = angle % 360
    if angle in (90.0, 180.0, 270.0):
        img = img.transpose({90.0: Image.Transpose.ROTATE_90, 180.0: Image.Transpose.ROTATE_180,
                             270.0: Image.Transpose.ROTATE_270}[angle])
    elif angle:
        from PIL import ImageColor

        fill = ImageColor.getrgb(params.fill)
        if img.mode == "RGBA":
            fill = (*fill[:3], 0)
        rotated = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
        if params.crop_corners:
            iw, ih = _inner_rect(img.width, img.height, angle)
            cx, cy = rotated.width / 2, rotated.height / 2
            rotated = rotated.crop((round(cx - iw / 2), round(cy - ih / 2), round(cx - iw / 2) + iw,
                                    round(cy - ih / 2) + ih))
        img = rotated
    return img, {"angle": round(angle if angle <= 180 else angle - 360, 3), "detected_tilt": round(tilt, 3)}


# -- resize -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResizeParams(ToolParams):
    width: int | None = param(None, "Width in pixels (auto: from the height and the picture's shape).",
                              minimum=1, maximum=16384, auto=True)
    height: int | None = param(None, "Height in pixels (auto: from the width).", minimum=1, maximum=16384,
                               auto=True)
    percent: float | None = param(None, "Scale by a percentage instead (1-800).", minimum=1, maximum=800, auto=True)
    fit: str = param("contain", "With both sides given: contain (fit inside, keep shape), cover (fill and crop), "
                     "or stretch.", choices=("contain", "cover", "stretch"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width is None and self.height is None and self.percent is None:
            raise InvalidRequest("give a width, a height or a percent", field="width")


MAX_RESIZE_PIXELS = 100_000_000


def resize(image: Image.Image, params: ResizeParams) -> Image.Image:
    """Resize with Lanczos, keeping the shape unless asked to stretch.

    Raises:
        ToolImageError: the result would be over 100 MP.
    """
    w, h = image.size
    if params.percent is not None:
        size = (max(1, round(w * params.percent / 100)), max(1, round(h * params.percent / 100)))
    elif params.width is not None and params.height is None:
        size = (params.width, max(1, round(h * params.width / w)))
    elif params.height is not None and params.width is None:
        size = (max(1, round(w * params.height / h)), params.height)
    else:
        assert params.width is not None and params.height is not None
        size = (params.width, params.height)
        if params.fit == "cover":
            if size[0] * size[1] > MAX_RESIZE_PIXELS:
                raise ToolImageError(f"{size[0]}x{size[1]} is over {MAX_RESIZE_PIXELS // 1_000_000} MP",
                                     field="width")
            return ImageOps.fit(image, size, Image.Resampling.LANCZOS)
        if params.fit == "contain":
            scale = min(size[0] / w, size[1] / h)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size[0] * size[1] > MAX_RESIZE_PIXELS or max(size) > 16384:
        raise ToolImageError(f"the result would be {size[0]}x{size[1]}, over {MAX_RESIZE_PIXELS // 1_000_000} MP "
                             "or 16384 px a side", field="width")
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


# -- face crop / headshot -----------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadshotParams(ToolParams):
    aspect: str = param("4:5", "Shape of the headshot.", choices=("1:1", "4:5", "3:4", "2:3"))
    face_size: float = param(0.35, "Face height as a share of the picture height (0.2-0.8).", minimum=0.2,
                             maximum=0.8)
    face: int = param(1, "Which face when there are several: 1 = the largest.", minimum=1, maximum=50)
    size: int | None = param(None, "Output height in pixels (auto: as cropped).", minimum=64, maximum=8192,
                             auto=True)


def headshot(image: Image.Image, params: HeadshotParams = HeadshotParams()) -> tuple[Image.Image, dict[str, object]]:
    """Frame one face as a headshot: eyes about a third down, even room on both sides.

    Raises:
        ToolImageError: no face found, or fewer faces than ``face``.
    """
    faces = face_boxes(image)
    if not faces:
        raise ToolImageError("no face was found in the picture; use crop instead", field="image")
    if params.face > len(faces):
        raise ToolImageError(f"face {params.face} asked for but {len(faces)} found", field="face")
    left, top, right, bottom = faces[params.face - 1]
    a, b = ASPECTS[params.aspect]
    fh = bottom - top
    # dlib's box covers brows to chin; the whole head is about 1.6 times taller, hence a face share near 1/3.
    crop_h = min(fh / params.face_size, image.height)
    crop_w = min(crop_h * a / b, image.width)
    crop_h = crop_w * b / a
    cx = (left + right) / 2
    # The face's centre a little above the middle leaves room for the hair above it and the shoulders below.
    cy = (top + bottom) / 2 + crop_h * 0.03
    bw, bh = round(crop_w), round(crop_h)
    lx = int(min(max(cx - bw / 2, 0), image.width - bw))
    ty = int(min(max(cy - bh / 2, 0), image.height - bh))
    box = (lx, ty, lx + bw, ty + bh)
    out = image.crop(box)
    if params.size is not None:
        out = out.resize((round(params.size * a / b), params.size), Image.Resampling.LANCZOS)
    return out, {"box": list(box), "faces_found": len(faces)}
