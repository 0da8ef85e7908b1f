"""Converting an output to another format without losing where it came from.

A browser or a plain image library re-encoding a picture drops its recipe, its IPTC mark and its C2PA
manifest. ``convert_output`` re-encodes on our side instead: the recipe and XMP are written again, and the
new file is signed as a transcode whose parent is the original (so its whole history stays attached).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from kontext_studio.core.errors import InvalidImage, InvalidRequest, RecipeError
from kontext_studio.core.provenance.credentials import ContentCredentials
from kontext_studio.core.provenance.signing import ContentClaim, SignedOutput, sign_output
from kontext_studio.core.recipe import read_recipe, save_image_with_recipe
from kontext_studio.core.types import OutputFormat

FORMATS = {"png": OutputFormat.PNG, "jpeg": OutputFormat.JPEG, "jpg": OutputFormat.JPEG, "webp": OutputFormat.WEBP}


def convert_output(data: bytes, fmt: str, credentials: ContentCredentials | None = None) -> SignedOutput:
    """Re-encode an output as ``fmt``, keeping its recipe and IPTC mark and signing it as a transcode.

    Args:
        data: the original file (its manifest, if any, becomes the parent ingredient).
        fmt: ``png``, ``jpeg`` (or ``jpg``) or ``webp``. JPEG has no transparency: transparent parts
            become white.
        credentials: who signs; default the installation's.

    Returns:
        The converted file (``signed`` False with a note when signing is unavailable).

    Raises:
        InvalidRequest: an unknown format.
        InvalidImage: ``data`` is not an image.
    """
    target = FORMATS.get(fmt.lower())
    if target is None:
        raise InvalidRequest(f"format must be png, jpeg or webp; got {fmt!r}", field="format")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            picture = img.copy()
    except (UnidentifiedImageError, OSError):
        raise InvalidImage("the file to convert is not an image", field="image") from None
    if target is OutputFormat.JPEG and picture.mode in ("RGBA", "LA", "P"):
        flat = Image.new("RGB", picture.size, (255, 255, 255))
        rgba = picture.convert("RGBA")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        picture = flat
    suffix = {OutputFormat.PNG: ".png", OutputFormat.JPEG: ".jpg", OutputFormat.WEBP: ".webp"}[target]
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "source", Path(tmp) / f"converted{suffix}"
        src.write_bytes(data)
        try:
            recipe = read_recipe(src)
        except RecipeError:
            recipe = None
        if recipe is not None:
            save_image_with_recipe(picture, out, recipe, target)
        else:
            picture.save(out, format=target.value.upper(), **({} if target is OutputFormat.PNG else {"quality": 95}))
        encoded = out.read_bytes()
    claim = ContentClaim(action="c2pa.transcoded", ai=False, tool="convert",
                         description=f"converted to {target.value.upper()}", parameters={"format": target.value})
    return sign_output(encoded, target.value, claim, [data], credentials)
