"""File jobs: convert between formats, compress to a target size, strip metadata, report image facts."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from PIL import ExifTags, Image, ImageCms

from kontext_studio.tools.base import ToolImageError, ToolParams, param
from kontext_studio.tools.io import encode

# -- convert ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertParams(ToolParams):
    format: str = param("webp", "Target format (HEIC, GIF, BMP and TIFF are read, not written).",
                        choices=("png", "jpeg", "webp", "avif"))
    quality: int = param(90, "Quality for JPEG, WebP and AVIF (1-100).", minimum=1, maximum=100)
    background: str = param("#ffffff", "What transparent areas become in JPEG.", kind="color")


def convert(image: Image.Image, params: ConvertParams = ConvertParams()) -> bytes:
    """Re-encode a picture in another format (JPEG gets transparency flattened onto ``background``)."""
    img = image
    if params.format == "jpeg" and img.mode in ("RGBA", "LA", "PA", "P"):
        from PIL import ImageColor

        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, ImageColor.getrgb(params.background)[:3])
        flat.paste(rgba, mask=rgba.getchannel("A"))
        flat.info = dict(image.info)
        img = flat
    return encode(img, params.format, params.quality)


# -- compress -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompressParams(ToolParams):
    target_kb: float = param(200.0, "Largest file size wanted, in kilobytes (1 KB = 1000 bytes; 5-50000).",
                             minimum=5, maximum=50000)
    format: str = param("jpeg", "Format of the small file.", choices=("jpeg", "webp", "avif"))
    min_quality: int = param(35, "Never go below this quality (1-95); the picture is made smaller instead.",
                             minimum=1, maximum=95)
    allow_resize: bool = param(True, "Shrink the picture when even min_quality is too big.")


def compress(image: Image.Image, params: CompressParams = CompressParams()) -> tuple[bytes, dict[str, Any]]:
    """The best-quality file under a size: binary search on quality, then smaller sizes if needed.

    Returns:
        (the file, facts: bytes, quality chosen, the size in pixels).

    Raises:
        ToolImageError: the target cannot be reached (no resizing allowed, or even a tiny picture is bigger).
    """
    target = int(params.target_kb * 1000)
    img = image
    if img.mode in ("RGBA", "LA", "P", "PA") and params.format == "jpeg":
        img = convert_alpha_to_white(img)
    img = img if img.mode in ("RGB", "RGBA", "L") else img.convert("RGB")
    scale = 1.0
    for _ in range(12):
        lo, hi, best = params.min_quality, 95, None
        while lo <= hi:
            q = (lo + hi) // 2
            data = encode(img, params.format, q)
            if len(data) <= target:
                best = (data, q)
                lo = q + 1
            else:
                hi = q - 1
        if best is not None:
            return best[0], {"bytes": len(best[0]), "quality": best[1], "width": img.width, "height": img.height,
                             "scale": round(scale, 4)}
        if not params.allow_resize:
            raise ToolImageError(f"even at quality {params.min_quality} the file is over {params.target_kb:g} KB; "
                                 "allow resizing or lower min_quality", field="target_kb")
        smallest = len(encode(img, params.format, params.min_quality))
        step = max(0.5, min(0.9, (target / smallest) ** 0.5 * 0.95))
        scale *= step
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if min(size) < 16:
            break
        img = (image if image.mode == img.mode else image.convert(img.mode)).resize(size, Image.Resampling.LANCZOS)
    raise ToolImageError(f"cannot make this picture smaller than {params.target_kb:g} KB as {params.format}",
                         field="target_kb")


def convert_alpha_to_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    flat = Image.new("RGB", rgba.size, (255, 255, 255))
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


# -- strip metadata -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StripMetadataParams(ToolParams):
    keep_color_profile: bool = param(True, "Keep the ICC colour profile (colours stay right; it holds nothing "
                                     "private).")


def strip_metadata(image: Image.Image, params: StripMetadataParams = StripMetadataParams()) -> tuple[Image.Image,
                                                                                                      list[str]]:
    """A copy of the pixels with GPS, camera, EXIF, XMP, IPTC and comments removed.

    Returns:
        (the clean picture, the kinds of metadata that were removed).
    """
    removed = []
    exif = image.getexif()
    if exif:
        removed.append("exif")
        if exif.get_ifd(ExifTags.IFD.GPSInfo):
            removed.append("gps")
        if exif.get(ExifTags.Base.Make) or exif.get(ExifTags.Base.Model):
            removed.append("camera")
    for key in ("xmp", "XML:com.adobe.xmp", "comment", "photoshop", "iptc", "Description", "kontext_recipe"):
        if key in image.info:
            removed.append(key.split(":")[0].lower())
    clean = Image.new(image.mode, image.size)
    clean.frombytes(image.tobytes())
    if image.mode == "P":
        clean.putpalette(image.getpalette() or [])
    if params.keep_color_profile and image.info.get("icc_profile"):
        clean.info["icc_profile"] = image.info["icc_profile"]
    elif image.info.get("icc_profile"):
        removed.append("icc_profile")
    return clean, sorted(set(removed))


# -- image info ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InfoParams(ToolParams):
    faces: bool = param(True, "Count the faces (takes a moment on large pictures).")


_EXIF_FIELDS = {
    "camera_make": ExifTags.Base.Make, "camera_model": ExifTags.Base.Model, "software": ExifTags.Base.Software,
    "taken_at": ExifTags.Base.DateTime, "orientation": ExifTags.Base.Orientation,
}
_EXIF_DETAIL = {
    "lens": ExifTags.Base.LensModel, "exposure_time": ExifTags.Base.ExposureTime, "f_number": ExifTags.Base.FNumber,
    "iso": ExifTags.Base.ISOSpeedRatings, "focal_length": ExifTags.Base.FocalLength,
    "taken_at_original": ExifTags.Base.DateTimeOriginal,
}


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace").strip("\x00 ")
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    try:
        return float(v) if not isinstance(v, int | str) else v
    except (TypeError, ValueError):
        return str(v)


def image_info(image: Image.Image, params: InfoParams = InfoParams()) -> dict[str, Any]:
    """Size, format, colour profile, an EXIF summary and the number of faces.

    Args:
        image: a picture opened by :func:`kontext_studio.tools.io.load_image` (its format and metadata kept).
        params: whether to count faces.
    """
    info: dict[str, Any] = {
        "width": image.width, "height": image.height, "megapixels": round(image.width * image.height / 1e6, 3),
        "format": (image.format or "unknown").lower(), "mode": image.mode,
        "has_transparency": image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info,
        "file_bytes": image.info.get("source_bytes"),
    }
    icc = image.info.get("icc_profile")
    if icc:
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            info["color_profile"] = ImageCms.getProfileDescription(profile).strip()
        except (OSError, ImageCms.PyCMSError):
            info["color_profile"] = "embedded (unreadable)"
    else:
        info["color_profile"] = None
    exif = image.getexif()
    summary: dict[str, Any] = {}
    for name, tag in _EXIF_FIELDS.items():
        if tag in exif:
            summary[name] = _plain(exif[tag])
    detail = exif.get_ifd(ExifTags.IFD.Exif) if exif else {}
    for name, tag in _EXIF_DETAIL.items():
        if tag in detail:
            summary[name] = _plain(detail[tag])
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo) if exif else {}
    summary["gps"] = bool(gps)
    info["exif"] = summary
    if params.faces:
        from kontext_studio.tools.geometry import face_boxes

        boxes = face_boxes(image)
        info["faces"] = len(boxes)
        info["face_boxes"] = [list(b) for b in boxes]
    return info

