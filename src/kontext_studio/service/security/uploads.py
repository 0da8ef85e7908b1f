"""Untrusted image uploads: size cap while streaming, format allowlist, bomb defence, metadata stripping.

The order matters and each step bounds the next:

1. ``read_limited`` stops reading the body as soon as it passes the cap (413), so an attacker cannot make
   us buffer more than ``cap + one chunk``.
2. ``sniff_image`` allowlists PNG, JPEG and WebP by their magic bytes (415 for everything else, whatever
   the file is named), then opens the bytes with ``Image.open(..., formats=[that one])`` so Pillow never
   tries another plugin: the EPS plugin, and with it Ghostscript, is never reached.
3. The pixel size is read from the header (``Image.open`` is lazy) and checked against ``MAX_PIXELS``
   and ``MAX_SIDE`` *before* any pixel is decoded (422). For PNG the decoder inflates IDAT only into the
   image buffer and stops when the rows are full, so the header size bounds what a zlib bomb can make
   us allocate; JPEG and WebP decoders likewise write only ``width x height`` pixels.
4. ``strip_private_metadata`` removes GPS, EXIF (maker notes included), XMP, IPTC and comments from
   images and files we hand out, keeping only colour data, orientation and (optionally) our recipe.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, overload

from PIL import Image, ImageOps

from kontext_studio.core.errors import InvalidImage, InvalidRequest
from kontext_studio.core.images import MAX_PIXELS, MAX_SIDE, MIN_SIDE
from kontext_studio.core.recipe import RECIPE_KEY, _from_xmp, xmp_packet

__all__ = [
    "ALLOWED_FORMATS",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MEDIA_TYPES",
    "PayloadTooLarge",
    "UnprocessableImage",
    "UnsupportedMediaType",
    "check_content_length",
    "read_limited",
    "read_limited_sync",
    "sniff_image",
    "strip_private_metadata",
]

# Pillow format name for each allowed type, and what we answer with Content-Type.
ALLOWED_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

# Full decodes (up to 4 bytes x 64 MP each) running at once across the process; callers run off the event loop.
DECODE_SLOTS = threading.BoundedSemaphore(2)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
XMP_JPEG_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
EXIF_HEADER = b"Exif\x00\x00"
ORIENTATION = 0x0112


# -- errors -------------------------------------------------------------------------------------
class PayloadTooLarge(InvalidRequest):
    """The request body (or one file in it) is over the size cap; nothing past the cap was read."""

    code = "payload_too_large"
    http_status = 413


class UnsupportedMediaType(InvalidImage):
    """The bytes are not PNG, JPEG or WebP (whatever the file name or declared Content-Type says)."""

    code = "unsupported_media_type"
    http_status = 415


class UnprocessableImage(InvalidImage):
    """An allowed format that cannot be used: damaged, truncated, too large in pixels, or too small."""

    code = "unprocessable_image"
    http_status = 422


# -- 1. size cap while streaming ------------------------------------------------------------------
def _too_large(cap_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the upload is larger than the {_human(cap_bytes)} limit; send a smaller file",
                           field="body")


def _human(n: int) -> str:
    return f"{n / 2**20:g} MB" if n >= 2**20 else f"{n} bytes"


def check_content_length(value: str | int | None, cap_bytes: int) -> None:
    """Refuse a declared ``Content-Length`` over the cap before reading anything.

    The declared length is only a hint (it can lie or be absent, e.g. chunked encoding), so
    ``read_limited`` still enforces the cap on the bytes that actually arrive.

    Args:
        value: the header value, or None when absent.
        cap_bytes: the largest body accepted.

    Raises:
        PayloadTooLarge: the declared length is over the cap.
        InvalidRequest: the header is not a non-negative integer.
    """
    if value is None or value == "":
        return
    try:
        declared = int(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"Content-Length {value!r} is not a number", field="Content-Length") from None
    if declared < 0:
        raise InvalidRequest(f"Content-Length {declared} is negative", field="Content-Length")
    if declared > cap_bytes:
        raise _too_large(cap_bytes)


class _Buffer:
    """Accumulates chunks and refuses the one that would pass the cap, *before* keeping it."""

    def __init__(self, cap_bytes: int):
        if cap_bytes < 0:
            raise ValueError(f"cap_bytes must be >= 0, got {cap_bytes}")
        self.cap = cap_bytes
        # A list of the chunks as received, not a growing bytearray: no copying while reading and no
        # over-allocation, so what we hold is exactly the bytes accepted so far (at most the cap).
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self.cap:
            # Drop what we hold right away: a rejected upload should not keep cap bytes alive until GC.
            self.chunks.clear()
            raise _too_large(self.cap)
        self.chunks.append(chunk)
        self.size += len(chunk)

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


async def read_limited(stream_chunks: AsyncIterator[bytes] | AsyncIterable[bytes] | Iterable[bytes],
                       cap_bytes: int) -> bytes:
    """Read a streamed body into memory, refusing it as soon as it passes ``cap_bytes``.

    At most ``cap_bytes`` plus the chunk being looked at are held while reading (joining the accepted
    chunks at the end briefly doubles that for a body under the cap); the stream is closed (async
    generators get ``aclose()``) as soon as the cap is passed, so the rest is never pulled from the
    client. Nothing is written to disk, so a refused upload leaves no temporary file behind.

    Args:
        stream_chunks: e.g. Starlette's ``request.stream()``, or any (async) iterable of bytes.
        cap_bytes: the largest body accepted (a body of exactly ``cap_bytes`` is fine).

    Returns:
        The whole body.

    Raises:
        PayloadTooLarge: the body is over the cap (HTTP 413).
    """
    buffer = _Buffer(cap_bytes)
    if isinstance(stream_chunks, AsyncIterable):
        iterator = aiter(stream_chunks)
        try:
            async for chunk in iterator:
                buffer.add(bytes(chunk))
        finally:
            # Stop the producer now rather than at garbage collection (it may hold a socket).
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
    else:
        _read_sync(stream_chunks, buffer)
    return buffer.take()


def read_limited_sync(stream_chunks: Iterable[bytes], cap_bytes: int) -> bytes:
    """``read_limited`` for plain iterables (files read in chunks, WSGI bodies, tests).

    Args:
        stream_chunks: iterable of byte chunks.
        cap_bytes: the largest body accepted.

    Returns:
        The whole body.

    Raises:
        PayloadTooLarge: the body is over the cap.
    """
    buffer = _Buffer(cap_bytes)
    _read_sync(stream_chunks, buffer)
    return buffer.take()


def _read_sync(stream_chunks: Iterable[bytes], buffer: _Buffer) -> None:
    iterator = iter(stream_chunks)
    try:
        for chunk in iterator:
            buffer.add(bytes(chunk))
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


# -- 2. and 3. format allowlist and bomb defence ------------------------------------------------
# Named so the 415 message can tell the user what they sent; anything else is "unknown".
_DENIED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"),
    (b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "Photoshop PSD"), (b"%PDF", "PDF"), (b"BM", "BMP"),
    (b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xffO\xffQ", "JPEG 2000"),
    (b"qoif", "QOI"), (b"\x76\x2f\x31\x01", "OpenEXR"), (b"PK\x03\x04", "ZIP"),
)  # fmt: skip


def _describe(data: bytes) -> str:
    for magic, name in _DENIED_MAGIC:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return "HEIC/AVIF"
    # Markup (SVG, HTML, XML) may start with a BOM and whitespace: what browsers would sniff as a page.
    head = data[:512].lstrip(b"\xef\xbb\xbf").lstrip(b"\xff\xfe").lstrip(b"\xfe\xff").lstrip(b" \t\r\n\x00")
    if head.startswith(b"<"):
        return "SVG/HTML/XML markup"
    return "an unknown format"


def _magic_format(data: bytes) -> str | None:
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if len(data) >= 16 and data[:4] == b"RIFF" and data[8:12] == b"WEBP" and data[12:15] == b"VP8":
        return "webp"
    return None


def sniff_image(data: bytes, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
                min_side: int = MIN_SIDE, decode: bool = True) -> str:
    """Identify an uploaded image by its bytes and prove it is safe to decode.

    The file name and declared Content-Type are ignored on purpose: a PostScript file named
    ``cat.png`` is still PostScript.

    Args:
        data: the whole upload (already capped by ``read_limited``).
        max_pixels: the largest ``width * height`` accepted (64 MP, as ``core.images``).
        max_side: the largest width or height accepted.
        min_side: the smallest width or height accepted.
        decode: also decode the pixels (bounded by the size check), so a truncated or damaged file is
            refused at upload rather than failing the job later. Memory is at most ``4 * max_pixels``.

    Returns:
        ``"png"``, ``"jpeg"`` or ``"webp"`` (the keys of ``MEDIA_TYPES``).

    Raises:
        UnsupportedMediaType: not PNG, JPEG or WebP by magic bytes (HTTP 415).
        UnprocessableImage: damaged, truncated, a decompression bomb, too large or too small (HTTP 422).
    """
    if not data:
        raise UnprocessableImage("the upload is empty (0 bytes)", field="image")
    fmt = _magic_format(data)
    if fmt is None:
        raise UnsupportedMediaType(
            f"the upload is {_describe(data)}, not an accepted image; send PNG, JPEG or WebP", field="image")
    try:
        # formats=[one]: Pillow tries exactly that plugin, never EPS (Ghostscript), PSD, SVG-capable...
        with Image.open(io.BytesIO(data), formats=[ALLOWED_FORMATS[fmt]]) as im:
            width, height = im.size  # from the header: no pixel decoded yet
            _check_size(width, height, max_pixels, max_side, min_side)
            # Pillow hands multi-picture JPEGs (phone cameras) to its MPO class: still JPEG data.
            expected = ("JPEG", "MPO") if fmt == "jpeg" else (ALLOWED_FORMATS[fmt],)
            if im.format not in expected:
                raise UnprocessableImage(f"the upload looks like {fmt.upper()} but is {im.format}", field="image")
            if decode:
                with DECODE_SLOTS:  # a few full decodes at once, whatever the number of requests
                    im.load()
    except (UnprocessableImage, UnsupportedMediaType):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard fired first (header over ~179 MP, or a warning turned into an error).
        raise UnprocessableImage(
            f"the image is too large to open safely (limit {max_pixels // 1_000_000} MP)", field="image") from None
    except Exception as exc:
        # Parsers raise many types on malformed input (OSError, SyntaxError, struct.error, ValueError,
        # EOFError, even MemoryError): every one of them is the client's bad file, never a 500.
        raise UnprocessableImage(
            f"the {fmt.upper()} file is damaged or truncated and cannot be decoded ({exc.__class__.__name__})",
            field="image") from None
    return fmt


def _check_size(width: int, height: int, max_pixels: int, max_side: int, min_side: int) -> None:
    if width > max_side or height > max_side or width * height > max_pixels:
        raise UnprocessableImage(
            f"the image is {width}x{height}: over the limit of {max_side} px per side and "
            f"{max_pixels / 1_000_000:g} MP; downscale it first", field="image")
    if min(width, height) < min_side:
        raise UnprocessableImage(f"the image is {width}x{height}: at least {min_side} px per side is needed",
                                 field="image")


# -- 4. private metadata --------------------------------------------------------------------------
# Image.info keys that carry no personal data and that decoding or display needs.
_KEEP_INFO = ("icc_profile", "dpi", "transparency", "gamma", "srgb", "chromaticity", "aspect", "loop",
              "duration", "background")  # fmt: skip


def _recipe_from_info(info: dict[str | tuple[int, int], Any]) -> dict[str, Any] | None:
    try:
        if RECIPE_KEY in info:
            found: dict[str, Any] = json.loads(info[RECIPE_KEY])
            return found
        for key in ("xmp", "XML:com.adobe.xmp"):
            if key in info and (recipe := _from_xmp(info[key])) is not None:
                return recipe
    except Exception:
        # A damaged recipe is dropped with the rest of the metadata rather than failing the strip.
        return None
    return None


@overload
def strip_private_metadata(image: Image.Image, keep_recipe: bool = True) -> Image.Image: ...
@overload
def strip_private_metadata(image: bytes, keep_recipe: bool = True) -> bytes: ...
def strip_private_metadata(image: Image.Image | bytes, keep_recipe: bool = True) -> Image.Image | bytes:
    """Remove GPS, EXIF (maker notes included), XMP, IPTC, comments and text chunks.

    For a PIL image the result is a copy whose ``info`` holds only colour and display data; EXIF
    orientation is applied to the pixels first, so the picture still shows upright without its EXIF.

    For encoded bytes (PNG, JPEG, WebP) the file is rewritten at container level without decoding:
    the pixels stay bit-identical (so recorded pixel hashes still match), only metadata segments go.
    A non-default EXIF orientation is kept as a minimal EXIF block holding that one tag, since the
    pixels of an encoded file cannot be rotated losslessly here.

    Args:
        image: a PIL image, or the bytes of a PNG/JPEG/WebP file.
        keep_recipe: keep our Kontext recipe (``kontext:recipe`` text and an XMP packet regenerated from
            it, which also carries the IPTC AI-provenance mark). Foreign XMP is never kept as is: the
            packet is rebuilt from the recipe alone, so nothing else in it survives.

    Returns:
        The same kind as given: a new image, or new bytes.

    Raises:
        UnsupportedMediaType: bytes that are not PNG, JPEG or WebP.
        UnprocessableImage: bytes whose container structure is damaged.
    """
    if isinstance(image, bytes | bytearray):
        data = bytes(image)
        fmt = _magic_format(data)
        if fmt is None:
            raise UnsupportedMediaType(f"cannot strip metadata from {_describe(data)}; PNG, JPEG or WebP only")
        recipe = _recipe_from_bytes(data) if keep_recipe else None
        try:
            if fmt == "png":
                return _strip_png(data, recipe)
            if fmt == "jpeg":
                return _strip_jpeg(data, recipe)
            return _strip_webp(data, recipe)
        except (IndexError, struct.error, ValueError) as exc:
            raise UnprocessableImage(f"the {fmt.upper()} file is damaged ({exc})", field="image") from None
    recipe = _recipe_from_info(image.info) if keep_recipe else None
    upright = ImageOps.exif_transpose(image)  # orientation baked into the pixels
    # A fresh copy: exif_transpose leaves a cached Exif (GPS and all) on its result; copy() does not carry it.
    clean = upright.copy()
    clean.info = {k: v for k, v in image.info.items() if k in _KEEP_INFO}
    if recipe is not None:
        clean.info[RECIPE_KEY] = json.dumps(recipe, sort_keys=True)
        clean.info["xmp"] = xmp_packet(recipe)
    clean.getexif()  # caches an empty Exif read from the cleaned info: nothing old can be saved with it
    return clean


def _recipe_from_bytes(data: bytes) -> dict[str, Any] | None:
    try:
        with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS.values())) as im:
            return _recipe_from_info(dict(im.info))
    except Exception:
        return None


def _orientation(exif_payload: bytes) -> int:
    """The Orientation tag of an EXIF block (with or without the ``Exif\\0\\0`` header), 1 if none."""
    try:
        exif = Image.Exif()
        exif.load(exif_payload if exif_payload.startswith(EXIF_HEADER) else EXIF_HEADER + exif_payload)
        value = int(exif.get(ORIENTATION, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def _minimal_exif(orientation: int) -> bytes:
    """An EXIF block (with the ``Exif\\0\\0`` header) holding only the orientation."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


# PNG: chunk allowlist. Critical chunks, colour and transparency, physical size, APNG animation.
_PNG_KEEP = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT",
             b"pHYs", b"bKGD", b"cICP", b"acTL", b"fcTL", b"fdAT"}  # fmt: skip


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def _strip_png(data: bytes, recipe: dict[str, Any] | None) -> bytes:
    out = [PNG_MAGIC]
    pos, orientation, added = len(PNG_MAGIC), 1, False
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise ValueError(f"chunk {ctype!r} runs past the end of the file")
        if ctype == b"eXIf":
            orientation = _orientation(data[pos + 8:pos + 8 + length])
        elif ctype in (b"IDAT", b"IEND") and not added:
            # Metadata must precede the image data; add ours just before the first IDAT.
            if orientation != 1:
                out.append(_png_chunk(b"eXIf", _minimal_exif(orientation)[len(EXIF_HEADER):]))
            if recipe is not None:
                out.append(_png_chunk(b"tEXt", RECIPE_KEY.encode("latin-1") + b"\x00" +
                                      json.dumps(recipe, sort_keys=True).encode("ascii")))
                out.append(_png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp_packet(recipe)))
            added = True
        if ctype in _PNG_KEEP:
            out.append(data[pos:end])
        pos = end
        if ctype == b"IEND":
            break  # anything after IEND (appended archives, HTML) is dropped
    return b"".join(out)


def _strip_jpeg(data: bytes, recipe: dict[str, Any] | None) -> bytes:
    out: list[bytes] = [b"\xff\xd8"]
    pos, orientation, header_done = 2, 1, False
    kept_after_header: list[bytes] = []
    while pos < len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI: stop; trailing data (MPO frames with their own EXIF, appended files) goes
            kept_after_header.append(b"\xff\xd9")
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers, no length
            kept_after_header.append(data[pos:pos + 2])
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise ValueError(f"segment 0x{marker:02X} at byte {pos} runs past the end of the file")
        payload = data[pos + 4:end]
        if marker == 0xE1 and payload.startswith(EXIF_HEADER):
            orientation = _orientation(payload)
        keep = (
            0xC0 <= marker <= 0xDF  # tables, frames, scans, restart interval: the picture itself
            or (marker == 0xE0 and payload[:5] in (b"JFIF\x00", b"JFXX\x00"))
            or (marker == 0xE2 and payload.startswith(b"ICC_PROFILE\x00"))
            or (marker == 0xEE and payload.startswith(b"Adobe"))  # colour transform: needed to decode CMYK
        )
        if marker == 0xE0 and keep and not header_done:
            out.append(data[pos:end])  # JFIF must stay first
        elif keep:
            header_done = True
            kept_after_header.append(data[pos:end])
        pos = end
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next real marker
            scan_end = _scan_end(data, pos)
            kept_after_header.append(data[pos:scan_end])
            pos = scan_end
    if orientation != 1:
        exif = _minimal_exif(orientation)
        out.append(b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif)
    if recipe is not None:
        xmp = XMP_JPEG_HEADER + xmp_packet(recipe)
        if len(xmp) + 2 <= 0xFFFF:  # too long for one segment: dropped; the recipe writer adds it again
            out.append(b"\xff\xe1" + struct.pack(">H", len(xmp) + 2) + xmp)
    return b"".join(out + kept_after_header)


def _scan_end(data: bytes, pos: int) -> int:
    """Index of the first marker after entropy-coded data (0xFF00 stuffing and RSTn belong to the data)."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        nxt = data[pos + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
            pos += 1
            continue
        return pos


_WEBP_KEEP = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP"}
_VP8X_EXIF, _VP8X_XMP = 0x08, 0x04


def _riff_chunk(fourcc: bytes, payload: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) % 2 else b"")


def _strip_webp(data: bytes, recipe: dict[str, Any] | None) -> bytes:
    (riff_size,) = struct.unpack("<I", data[4:8])
    end_of_riff = min(len(data), 8 + riff_size)  # bytes after the RIFF container are dropped
    chunks: list[bytearray] = []
    pos, orientation, vp8x = 12, 1, None
    while pos + 8 <= end_of_riff:
        fourcc = data[pos:pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4:pos + 8])
        end = pos + 8 + size + (size & 1)
        if pos + 8 + size > end_of_riff:
            raise ValueError(f"chunk {fourcc!r} runs past the end of the file")
        payload = data[pos + 8:pos + 8 + size]
        if fourcc == b"EXIF":
            orientation = _orientation(payload)
        elif fourcc in _WEBP_KEEP:
            chunk = bytearray(data[pos:min(end, end_of_riff)])
            if fourcc == b"VP8X":
                vp8x = chunk
            chunks.append(chunk)
        pos = end
    extra: list[bytes] = []
    if vp8x is not None:  # metadata chunks are only legal in the extended format
        flags = vp8x[8] & ~(_VP8X_EXIF | _VP8X_XMP)
        if orientation != 1:
            extra.append(_riff_chunk(b"EXIF", _minimal_exif(orientation)[len(EXIF_HEADER):]))
            flags |= _VP8X_EXIF
        if recipe is not None:
            extra.append(_riff_chunk(b"XMP ", xmp_packet(recipe)))
            flags |= _VP8X_XMP
        vp8x[8] = flags
    body = b"WEBP" + b"".join(bytes(c) for c in chunks) + b"".join(extra)
    return b"RIFF" + struct.pack("<I", len(body)) + body
