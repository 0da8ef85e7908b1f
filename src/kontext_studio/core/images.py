"""Reading reference images at the boundary: size limits before decoding, EXIF orientation, RGB.

Everything that can be wrong with an input file is caught here and reported with the file's name and
the fix, so neither the engine nor a face ever sees a traceback from Pillow.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from kontext_studio.core.errors import InvalidImage
from kontext_studio.core.types import Reference

MAX_SIDE = 12_000
MAX_PIXELS = 64_000_000
MIN_SIDE = 16
MAX_FILE_BYTES = 200 * 2**20


@dataclass(frozen=True)
class LoadedImage:
    """A reference ready for the engine: RGB, upright, hashed."""

    image: Image.Image
    sha256: str
    source: str
    warnings: tuple[str, ...] = ()

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def sha256_image(image: Image.Image) -> str:
    """Hash of the decoded pixels (mode + size + bytes): stable across file formats and metadata."""
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def _open(ref: Reference, label: str) -> Image.Image:
    data = ref.image
    if isinstance(data, Image.Image):
        return data
    if not isinstance(data, bytes):
        path = Path(data).expanduser()
        if not path.exists():
            raise InvalidImage(f"{label}: file not found", field="references")
        if path.is_dir():
            raise InvalidImage(f"{label}: this is a folder, not an image file", field="references")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InvalidImage(f"{label}: the file is over {MAX_FILE_BYTES // 2**20} MB; export a smaller copy",
                               field="references")
        # Read into memory: Pillow then holds no file handle, whatever fails later.
        data = path.read_bytes()
    if not data:
        raise InvalidImage(f"{label}: the file is empty (0 bytes); re-export or re-download it", field="references")
    try:
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidImage(
            f"{label}: not a readable image ({exc.__class__.__name__}); use PNG, JPEG or WebP",
            field="references",
        ) from None
    except Image.DecompressionBombError:
        raise InvalidImage(
            f"{label}: the image is too large to open safely; downscale it to at most {MAX_SIDE} px per side",
            field="references",
        ) from None


def load_reference(ref: Reference, index: int = 0) -> LoadedImage:
    """Open, check and normalise one reference image.

    Args:
        ref: the reference (path, bytes or PIL image).
        index: its position, for messages ("reference 2: ...").

    Returns:
        The upright RGB image, its pixel hash and any adjustments in words.

    Raises:
        InvalidImage: empty, unreadable, too large or too small inputs.
    """
    label = f"reference {index + 1} ({ref.label})"
    img = _open(ref, label)
    w, h = img.size  # from the header: checked before any pixels are decoded
    if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise InvalidImage(
            f"{label}: {w}x{h} is too large (limit {MAX_SIDE} px per side and {MAX_PIXELS // 1_000_000} MP); "
            "downscale it first, the model works at about 1 MP anyway",
            field="references",
        )
    if min(w, h) < MIN_SIDE:
        raise InvalidImage(f"{label}: {w}x{h} is too small (at least {MIN_SIDE} px per side)",
                           field="references")
    warnings: list[str] = []
    try:
        upright = ImageOps.exif_transpose(img)
        if upright is not img and upright.size != img.size:
            warnings.append(f"{label}: rotated upright from its EXIF orientation")
        img = upright
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            base = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(base, rgba).convert("RGB")
            warnings.append(f"{label}: transparent areas were filled with white")
        elif img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            # Pillow's convert("RGB") clips high-bit-depth values at 255 (a white picture): rescale first.
            import numpy as np  # only for these rare modes: a plain photo loads without numpy

            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            img = Image.fromarray(np.clip(arr * 255.0 / top, 0, 255).astype(np.uint8), "L").convert("RGB")
            warnings.append(f"{label}: converted from 16-bit to 8-bit colour")
        elif img.mode != "RGB":
            img = img.convert("RGB")
        else:
            img.load()
    except (OSError, ValueError) as exc:
        raise InvalidImage(f"{label}: the file is damaged and could not be decoded ({exc})",
                           field="references") from None
    return LoadedImage(image=img, sha256=sha256_image(img), source=ref.label, warnings=tuple(warnings))
