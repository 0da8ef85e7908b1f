"""Recipes inside images: everything needed to reproduce an edit, plus AI-provenance marks.

PNG carries the recipe as a ``kontext:recipe`` text chunk; every format (PNG, JPEG, WebP) carries an
XMP packet that holds the recipe too and marks the picture as AI-generated with the IPTC digital source
type ``trainedAlgorithmicMedia``. ``read_recipe`` reads either back.
"""

from __future__ import annotations

import io
import json
import struct
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from kontext_studio.core.errors import RecipeError
from kontext_studio.core.types import OutputFormat

RECIPE_KEY = "kontext:recipe"
RECIPE_SCHEMA = 1
IPTC_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
KONTEXT_NS = "https://kontext.studio/ns/1.0/"
_SUFFIX_FORMAT = {".png": OutputFormat.PNG, ".jpg": OutputFormat.JPEG, ".jpeg": OutputFormat.JPEG,
                  ".webp": OutputFormat.WEBP}  # fmt: skip


def format_for_path(path: str | Path, default: OutputFormat = OutputFormat.PNG) -> OutputFormat:
    """The output format a file name implies (``.png``, ``.jpg``/``.jpeg``, ``.webp``)."""
    return _SUFFIX_FORMAT.get(Path(path).suffix.lower(), default)


def format_for_suffix(suffix: str) -> OutputFormat | None:
    """The output format of a file extension (``.jpg``), or None when outputs cannot be written as it."""
    return _SUFFIX_FORMAT.get(suffix.lower())


def supported_suffixes() -> list[str]:
    """The file extensions outputs can be written as (each carries the recipe and the AI marks)."""
    return list(_SUFFIX_FORMAT)


def xmp_packet(recipe: dict[str, Any]) -> bytes:
    """An XMP packet marking the image as AI-generated, with the recipe as a JSON property."""
    tool = f"Kontext Studio {recipe.get('versions', {}).get('kontext_studio', '')}".strip()
    body = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        f'    xmlns:kontext="{KONTEXT_NS}">\n'
        f"   <Iptc4xmpExt:DigitalSourceType>{IPTC_SOURCE_TYPE}</Iptc4xmpExt:DigitalSourceType>\n"
        f"   <xmp:CreatorTool>{escape(tool)}</xmp:CreatorTool>\n"
        f"   <kontext:recipe>{escape(json.dumps(recipe, sort_keys=True))}</kontext:recipe>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    )
    return body.encode("utf-8")


def save_image_with_recipe(
    image: Image.Image, path: str | Path, recipe: dict[str, Any], fmt: OutputFormat | None = None
) -> Path:
    """Write ``image`` with its recipe and provenance marks.

    Args:
        image: the picture.
        path: destination; its folder is created.
        recipe: JSON-ready recipe.
        fmt: output format; defaults to the one the suffix implies.

    Returns:
        The written path.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or format_for_path(out)
    xmp = xmp_packet(recipe)
    if fmt is OutputFormat.PNG:
        info = PngImagePlugin.PngInfo()
        info.add_text(RECIPE_KEY, json.dumps(recipe, sort_keys=True))
        info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"))
        info.add_text("Software", "Kontext Studio")
        image.save(out, format="PNG", pnginfo=info)
    elif fmt is OutputFormat.JPEG:
        # The XMP segment is written here rather than through Pillow's ``xmp=`` (JPEG support for it arrived
        # in Pillow 11; on the oldest Pillow we accept it is silently ignored and the output loses its marks).
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
        out.write_bytes(jpeg_with_xmp(buffer.getvalue(), _fit_jpeg_xmp(recipe, xmp)))
    else:
        image.save(out, format="WEBP", quality=95, xmp=xmp)
    return out


XMP_JPEG_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_JPEG_SEGMENT_MAX = 0xFFFF - 2 - len(XMP_JPEG_HEADER)  # one APP1 segment's payload


def _fit_jpeg_xmp(recipe: dict[str, Any], xmp: bytes) -> bytes:
    """The XMP packet, slimmed to fit one JPEG segment: the bulky measurement details go first."""
    if len(xmp) <= _JPEG_SEGMENT_MAX:
        return xmp
    slim = {k: v for k, v in recipe.items() if k not in ("pixel_lock_result", "reference_checks")}
    if isinstance(slim.get("identity"), dict):
        slim["identity"] = {k: v for k, v in slim["identity"].items() if k != "details"}
    packet = xmp_packet(slim)
    if len(packet) <= _JPEG_SEGMENT_MAX:
        return packet
    return xmp_packet({k: recipe.get(k) for k in ("schema", "instruction", "tier", "seed", "steps", "guidance",
                                                    "digital_source_type", "versions")})


def jpeg_with_xmp(jpeg: bytes, xmp: bytes) -> bytes:
    """``jpeg`` with an XMP APP1 segment placed after its JFIF/EXIF header segments.

    Raises:
        ValueError: ``jpeg`` is not a JPEG stream, or the packet does not fit one segment.
    """
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream")
    payload = XMP_JPEG_HEADER + xmp
    if len(payload) + 2 > 0xFFFF:
        raise ValueError(f"XMP packet of {len(xmp)} bytes does not fit one JPEG segment")
    pos = 2
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF and jpeg[pos + 1] in (0xE0, 0xE1):
        pos += 2 + struct.unpack(">H", jpeg[pos + 2:pos + 4])[0]
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:pos] + segment + jpeg[pos:]


def _jpeg_xmp(data: bytes) -> bytes | None:
    """The XMP packet of a JPEG stream, read from its APP1 segments (whatever Pillow version is installed)."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more metadata
            return None
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xE1 and body.startswith(XMP_JPEG_HEADER):
            return body[len(XMP_JPEG_HEADER):]
        pos += 2 + length
    return None


def _webp_xmp(data: bytes) -> bytes | None:
    """The ``XMP `` chunk of a WebP (RIFF) file."""
    pos = 12
    while pos + 8 <= len(data):
        kind, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if kind == b"XMP ":
            return data[pos + 8:pos + 8 + size]
        pos += 8 + size + (size & 1)
    return None


def file_xmp(path: str | Path) -> bytes | None:
    """The XMP packet of a JPEG or WebP file read from its bytes, or None (PNG keeps it in a text chunk)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\xff\xd8":
        return _jpeg_xmp(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_xmp(data)
    return None


def _from_xmp(xmp: bytes | str) -> dict[str, Any] | None:
    text = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else xmp
    start = text.find("<x:xmpmeta")
    end = text.find("</x:xmpmeta>")
    if start < 0 or end < 0:
        return None
    root = ET.fromstring(text[start : end + len("</x:xmpmeta>")])
    node = root.find(f".//{{{KONTEXT_NS}}}recipe")
    if node is None or not node.text:
        return None
    result: dict[str, Any] = json.loads(node.text)
    return result


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Read the recipe embedded in an output image.

    Raises:
        RecipeError: the file is missing, not an image, or carries no Kontext Studio recipe.
    """
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"no such file: {p}")
    try:
        with Image.open(p) as img:
            info = dict(img.info)
    except (UnidentifiedImageError, OSError):
        raise RecipeError(f"{p} is not an image") from None
    try:
        if RECIPE_KEY in info:
            recipe: dict[str, Any] = json.loads(info[RECIPE_KEY])
            return recipe
        for key in ("xmp", "XML:com.adobe.xmp"):
            if key in info and (found := _from_xmp(info[key])) is not None:
                return found
        if (raw := file_xmp(p)) is not None and (found := _from_xmp(raw)) is not None:
            return found
    except (ValueError, ET.ParseError) as exc:
        raise RecipeError(f"{p}: the embedded recipe is damaged ({exc})") from None
    raise RecipeError(
        f"{p} carries no Kontext Studio recipe (was it made by another tool, or re-saved by an editor "
        "that strips metadata?)"
    )


def is_ai_marked(path: str | Path) -> bool:
    """Whether the file carries the IPTC ``trainedAlgorithmicMedia`` digital source type."""
    with Image.open(path) as img:
        blobs = [v for k, v in img.info.items() if k in ("xmp", "XML:com.adobe.xmp")]
    if (raw := file_xmp(path)) is not None:
        blobs.append(raw)
    return any(IPTC_SOURCE_TYPE in (b.decode("utf-8", "replace") if isinstance(b, bytes) else b) for b in blobs)
