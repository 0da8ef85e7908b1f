"""Reading images into the tools and writing their results: a format allowlist, size limits read from the
header before any pixel is decoded, orientation applied, and encoders for PNG, JPEG, WebP and AVIF.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from kontext_studio.tools.base import ToolImageError, ToolResult

# Pillow format names a tool reads (HEIC through pillow-heif when it is installed).
READ_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "HEIF", "GIF", "BMP", "TIFF")
WRITE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".avif": "avif"}
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}
MAX_SIDE = 16384
ABSOLUTE_MAX_PIXELS = 100_000_000  # no tool opens more, whatever its own limit

_heif_registered = False


def _register_heif() -> bool:
    global _heif_registered
    if not _heif_registered:
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            return False
        register_heif_opener()
        _heif_registered = True
    return True


def load_image(source: bytes | str | Path, *, name: str = "image",
               max_pixels: int = ABSOLUTE_MAX_PIXELS) -> Image.Image:
    """Open an image for a tool.

    Args:
        source: the file's bytes or its path.
        name: how the caller calls this input in errors (``image``, ``mask``, ``image 2``).
        max_pixels: the tool's limit, checked from the header before decoding.

    Returns:
        The decoded image, EXIF orientation applied, its ``format`` kept (JPEG, PNG, HEIF...) and its
        metadata in ``info`` / ``getexif()``.

    Raises:
        ToolImageError: not a file, not an image in an accepted format, damaged, or over the limits.
    """
    if isinstance(source, str | Path):
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ToolImageError(f"{name}: cannot read {source}: {exc.strerror or exc}", field=name) from None
    else:
        data = bytes(source)
    if not data:
        raise ToolImageError(f"{name} is empty", field=name)
    formats = list(READ_FORMATS if _register_heif() else [f for f in READ_FORMATS if f != "HEIF"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=formats)
    except (Image.UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ToolImageError(f"{name} is not an image in a format the tools read (JPEG, PNG, WebP, AVIF, HEIC, "
                             "GIF, BMP or TIFF)", field=name) from None
    except OSError as exc:
        raise ToolImageError(f"{name} cannot be read: {exc}", field=name) from None
    w, h = img.size
    limit = min(max_pixels, ABSOLUTE_MAX_PIXELS)
    if w * h > limit or max(w, h) > MAX_SIDE:
        raise ToolImageError(f"{name} is {w}x{h} ({w * h / 1e6:.1f} MP); this tool takes at most "
                             f"{limit / 1e6:g} MP and {MAX_SIDE} px a side: make it smaller first (resize)",
                             field=name)
    fmt = img.format
    try:
        img.load()
        oriented = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ToolImageError(f"{name} is damaged or truncated: {exc}", field=name) from None
    oriented.format = fmt  # exif_transpose returns a copy without it; image info reports it
    oriented.info.setdefault("source_bytes", len(data))
    return oriented


def working_copy(img: Image.Image) -> Image.Image:
    """RGB or RGBA pixels for processing (16-bit, CMYK, palette and greyscale pictures converted)."""
    if img.mode in ("RGB", "RGBA"):
        return img
    has_alpha = img.mode in ("LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    return img.convert("RGBA" if has_alpha else "RGB")


def load_mask(source: bytes | str | Path, size: tuple[int, int]) -> Image.Image:
    """Open a painted mask (white = the area to work on) and check it matches the image.

    Raises:
        ToolImageError: unreadable, or another size than the image.
    """
    mask = load_image(source, name="mask")
    if mask.size != size:
        raise ToolImageError(f"the mask is {mask.size[0]}x{mask.size[1]} but the image is {size[0]}x{size[1]}; "
                             "paint the mask over the same picture", field="mask")
    if mask.mode in ("RGBA", "LA"):
        # A mask painted on a transparent layer: the paint is where alpha is.
        return mask.getchannel("A")
    return mask.convert("L")


def format_for(path: str | Path) -> str:
    """The output format for a file name.

    Raises:
        ToolImageError: an extension the tools do not write.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ToolImageError(f"cannot write {Path(path).name!r}: name the output .png, .jpg, .webp or .avif",
                             field="output")
    return SUFFIXES[suffix]


def encode(image: Image.Image, fmt: str, quality: int = 92) -> bytes:
    """Encode a result (no metadata is written: the tools never pass GPS or camera data on).

    Args:
        image: the picture.
        fmt: png, jpeg, webp or avif.
        quality: 1-100 for the lossy formats.

    Raises:
        ToolImageError: an unknown format, or transparency into JPEG.
    """
    if fmt not in WRITE_FORMATS:
        raise ToolImageError(f"format must be one of {', '.join(WRITE_FORMATS)}; got {fmt!r}", field="format")
    img = image
    if fmt == "jpeg":
        if img.mode in ("RGBA", "LA") and img.getchannel("A").getextrema()[0] < 255:  # type: ignore[operator]
            raise ToolImageError("the result has transparency, which JPEG cannot hold: save it as PNG or WebP",
                                 field="format")
        img = img.convert("L" if img.mode in ("L", "LA") else "RGB")
    elif img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = working_copy(img)
    buf = io.BytesIO()
    kwargs: dict[str, object] = {}
    if fmt in ("jpeg", "webp", "avif"):
        kwargs["quality"] = int(quality)
    if fmt == "png":
        kwargs["optimize"] = False
        kwargs["compress_level"] = 6
    if fmt == "jpeg":
        kwargs["optimize"] = True
    icc = image.info.get("icc_profile")
    if icc:
        kwargs["icc_profile"] = icc  # colour stays right; the profile is not private data
    img.save(buf, WRITE_FORMATS[fmt], **kwargs)
    return buf.getvalue()


def result_bytes(result: ToolResult, fmt: str, quality: int = 92) -> tuple[bytes, str]:
    """The bytes to hand back for a result, and their format.

    A tool whose job is the file (convert, compress) already encoded it: those bytes are returned as they are,
    and asking for another format is an error rather than a silent re-encode.

    Raises:
        ToolImageError: no image to write, or a format that contradicts the tool's own.
    """
    if result.encoded is not None:
        if fmt and result.format and fmt != result.format:
            raise ToolImageError(f"this tool made a {result.format} file; name the output with that format",
                                 field="output")
        return result.encoded, result.format or fmt
    if result.image is None:
        raise ToolImageError("this tool reports facts and makes no image", field="output")
    return encode(result.image, fmt, quality), fmt
