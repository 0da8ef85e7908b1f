"""Service boundary guards: upload caps, image sniffing and bombs, metadata stripping, SSRF, webhook signatures.

Every attack here is aimed at something local (a sentinel HTTP server on 127.0.0.1 that counts hits,
in-memory bombs); nothing connects outward.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.server
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from kontext_studio.core.errors import InvalidImage, InvalidRequest, KontextError
from kontext_studio.core.recipe import IPTC_SOURCE_TYPE, RECIPE_KEY, is_ai_marked, read_recipe, xmp_packet
from kontext_studio.service.security import ssrf, uploads, webhook_signing
from kontext_studio.service.security.ssrf import UnsafeURL, check_url, safe_async_client, safe_client
from kontext_studio.service.security.uploads import (
    PayloadTooLarge,
    UnprocessableImage,
    UnsupportedMediaType,
    check_content_length,
    read_limited,
    read_limited_sync,
    sniff_image,
    strip_private_metadata,
)
from kontext_studio.service.security.webhook_signing import WebhookVerificationError
from tests.conftest import noise_image

MB = 2**20
ROOT = Path(__file__).resolve().parents[2]


# =============================================================================================
# helpers
# =============================================================================================
def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def png_with(width: int, height: int, idat: bytes, colour_type: int = 0) -> bytes:
    """A PNG built by hand, so its header can claim any size and its IDAT hold anything."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_chunk_types(data: bytes) -> list[bytes]:
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        out.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return out


def pixels(data: bytes | Image.Image) -> np.ndarray:
    img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    return np.asarray(img.convert("RGB"))


def private_exif(orientation: int = 1) -> Image.Exif:
    """EXIF with GPS coordinates, a camera maker note, owner name and (optionally) an orientation."""
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x013B] = "Jane Doe"  # Artist
    if orientation != 1:
        exif[0x0112] = orientation
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (48.0, 51.0, 29.0), "E", (2.0, 17.0, 40.0)
    exif.get_ifd(0x8769)[0x927C] = b"MAKERNOTE-SERIAL-12345"
    return exif


FOREIGN_XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
               b'<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="48,51.48N"/>'
               b"</rdf:RDF></x:xmpmeta>")
RECIPE = {"schema": 1, "instruction": "make it snowy", "seed": 7, "versions": {"kontext_studio": "0.1.0"}}


# =============================================================================================
# 1. size cap while streaming
# =============================================================================================
class Producer:
    """A body of ``total`` bytes in ``chunk``-sized pieces that records how much was pulled and if closed."""

    def __init__(self, total: int, chunk: int = 64 * 1024):
        self.total, self.chunk, self.pulled, self.closed = total, chunk, 0, False

    def __iter__(self) -> Iterator[bytes]:
        try:
            while self.pulled < self.total:
                n = min(self.chunk, self.total - self.pulled)
                self.pulled += n
                yield b"\x00" * n
        finally:
            self.closed = True

    async def aiter(self) -> AsyncIterator[bytes]:
        for piece in self:
            yield piece


def test_21mb_body_against_20mb_cap_is_refused_while_streaming_with_flat_memory() -> None:
    cap = 20 * MB
    before = set(os.listdir(tempfile.gettempdir()))
    body = Producer(21 * MB)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge) as info:
            asyncio.run(read_limited(body.aiter(), cap))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.http_status == 413 and info.value.code == "payload_too_large"
    assert isinstance(info.value, InvalidRequest)
    assert body.pulled <= cap + body.chunk  # stopped at the first chunk over the cap, not at the end
    assert body.closed
    assert peak < cap + 2 * body.chunk + 2 * MB  # never more than cap + one chunk (+ interpreter noise)
    assert set(os.listdir(tempfile.gettempdir())) - before == set()  # no temp file left behind


def test_body_at_the_cap_is_read_whole_sync_and_async() -> None:
    assert len(read_limited_sync(Producer(5 * MB), 5 * MB)) == 5 * MB
    assert len(asyncio.run(read_limited(Producer(5 * MB).aiter(), 5 * MB))) == 5 * MB
    assert asyncio.run(read_limited([b"ab", b"cd"], 4)) == b"abcd"  # plain iterables work in the async one
    body = Producer(5 * MB + 1)
    with pytest.raises(PayloadTooLarge):
        read_limited_sync(body, 5 * MB)
    assert body.closed


def test_declared_content_length_is_refused_before_reading() -> None:
    check_content_length(None, 10)
    check_content_length("10", 10)
    with pytest.raises(PayloadTooLarge):
        check_content_length("11", 10)
    with pytest.raises(InvalidRequest):
        check_content_length("ten", 10)


# =============================================================================================
# 2. format allowlist
# =============================================================================================
def test_png_jpeg_webp_are_accepted() -> None:
    img = noise_image(64, 48)
    assert sniff_image(encode(img, "PNG")) == "png"
    assert sniff_image(encode(img, "JPEG")) == "jpeg"
    assert sniff_image(encode(img, "WEBP")) == "webp"
    assert uploads.MEDIA_TYPES["webp"] == "image/webp"


def _denied_samples() -> dict[str, bytes]:
    img = noise_image(64, 48)
    return {
        "gif.png": encode(img, "GIF"),
        "tiff.png": encode(img, "TIFF"),
        "eps.png": encode(img, "EPS"),
        "pdf.png": encode(img, "PDF"),
        "bmp.png": encode(img, "BMP"),
        "psd.png": b"8BPS\x00\x01" + b"\x00" * 64,
        "svg.png": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "html.png": b"\xef\xbb\xbf  \n<!DOCTYPE html><html><script>alert(document.cookie)</script></html>",
        "ps.png": b"%!PS-Adobe-3.0\n/Times findfont 12 scalefont setfont 72 72 moveto (x) show showpage\n",
        "random.png": bytes(random.Random(1).randrange(256) for _ in range(256)),
    }


@pytest.mark.parametrize("name", list(_denied_samples()))
def test_other_formats_are_415_whatever_their_name(name: str) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        sniff_image(_denied_samples()[name])
    assert info.value.http_status == 415 and info.value.code == "unsupported_media_type"
    assert isinstance(info.value, InvalidImage)


def test_ghostscript_is_never_invoked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def fake_ghostscript(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise OSError("Ghostscript must not run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", fake_ghostscript)
    eps = encode(noise_image(64, 48), "EPS")
    # The unguarded call shows what is at stake: Pillow would hand this file to Ghostscript.
    with pytest.raises(OSError, match="must not run"):
        Image.open(io.BytesIO(eps)).load()
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(UnsupportedMediaType):
        sniff_image(eps)
    # A polyglot that starts with PNG's magic and carries PostScript: only the PNG plugin sees it.
    with pytest.raises(UnprocessableImage):
        sniff_image(b"\x89PNG\r\n\x1a\n" + eps)
    assert calls == []


# =============================================================================================
# 3. decompression bombs and damaged files
# =============================================================================================
def test_png_header_claiming_30000x30000_is_422_without_decoding() -> None:
    data = png_with(30000, 30000, zlib.compress(b"\x00" * 30001))
    t = time.perf_counter()
    with pytest.raises(UnprocessableImage) as info:
        sniff_image(data)
    assert time.perf_counter() - t < 0.5
    assert info.value.http_status == 422 and info.value.code == "unprocessable_image"


def test_over_the_pixel_or_side_limit_is_422() -> None:
    with pytest.raises(UnprocessableImage, match=r"too large|over the limit"):
        sniff_image(png_with(9000, 8000, zlib.compress(b"\x00" * 9001)))  # 72 MP > 64 MP
    with pytest.raises(UnprocessableImage, match="per side"):
        sniff_image(png_with(13000, 100, zlib.compress(b"\x00" * 13001)))
    with pytest.raises(UnprocessableImage, match="at least"):
        sniff_image(encode(noise_image(8, 64), "PNG"))


BOMB_SCRIPT = textwrap.dedent(r"""
    import json, resource, struct, sys, time, zlib
    from kontext_studio.service.security.uploads import UnprocessableImage, sniff_image

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    def zeros_deflate(mib):
        # One MiB of zeros compressed once and flushed byte-aligned, then repeated: a valid zlib stream
        # that inflates to `mib` MiB (deflate tops out near 1032:1, so ~1 KB per MiB). Built in ms.
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        seg = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
        end = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
        n = mib << 20
        return b"\x78\xda" + seg * mib + end + struct.pack(">I", ((n % 65521) << 16) | 1)

    def png(w, h, idat):
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")

    def rss_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    out = {}
    # (a) ~100 KB file whose header promises 32768 x 32768 = 1 GiB of pixels (IDAT inflates to 100 MiB).
    bomb = png(32768, 32768, zeros_deflate(100))
    out["bomb_kb"] = len(bomb) / 1024
    base = rss_mib(); t = time.perf_counter()
    try:
        sniff_image(bomb); out["bomb"] = "accepted"
    except UnprocessableImage as exc:
        out["bomb"] = exc.http_status
    out["bomb_s"] = time.perf_counter() - t; out["bomb_rss"] = rss_mib() - base
    # (b) an IDAT that really inflates to 1.1 GiB behind an in-limit 8000 x 8000 header (64 MP, 64 MiB):
    # the decoder fills the rows the header promises and stops, so the header size is the bound.
    over = png(8000, 8000, zeros_deflate(1100))
    out["over_kb"] = len(over) / 1024
    base = rss_mib(); t = time.perf_counter()
    out["over"] = sniff_image(over)
    out["over_s"] = time.perf_counter() - t; out["over_rss"] = rss_mib() - base
    print(json.dumps(out))
""")


def test_zlib_bombs_are_refused_fast_with_bounded_memory() -> None:
    # A fresh interpreter, so ru_maxrss (a high-water mark) measures only the bombs.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", BOMB_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["bomb_kb"] < 120 and out["bomb"] == 422
    assert out["bomb_s"] < 1.0 and out["bomb_rss"] < 200
    assert out["over_kb"] < 1200 and out["over"] == "png"
    assert out["over_s"] < 1.0 and out["over_rss"] < 200, out


def test_damaged_files_only_ever_give_415_or_422() -> None:
    img = noise_image(48, 40)
    rng = random.Random(7)
    seeds = [encode(img, "PNG"), encode(img, "JPEG"), encode(img, "JPEG", progressive=True), encode(img, "WEBP"),
             encode(img, "WEBP", lossless=True), encode(img.convert("RGBA"), "PNG")]
    cases: list[bytes] = []
    for data in seeds:
        cases += [data[:n] for n in (0, 1, 4, 8, 12, 16, 20, 33, len(data) // 2, len(data) - 1)]
        for _ in range(40):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            cases.append(bytes(mutated))
    outcomes = {"ok": 0, 415: 0, 422: 0}
    for case in cases:
        try:
            sniff_image(case)
            outcomes["ok"] += 1
        except (UnsupportedMediaType, UnprocessableImage) as exc:
            outcomes[exc.http_status] += 1
    assert outcomes[422] > 0 and outcomes[415] > 0  # and nothing else escaped


# =============================================================================================
# 4. private metadata
# =============================================================================================
def test_strip_image_removes_gps_exif_xmp_and_applies_orientation() -> None:
    img = noise_image(80, 60)
    data = encode(img, "JPEG", exif=private_exif(orientation=6), xmp=FOREIGN_XMP, comment=b"shot at home")
    opened = Image.open(io.BytesIO(data))
    assert opened.getexif().get_ifd(0x8825) and "xmp" in opened.info  # the sample really carries them
    clean = strip_private_metadata(opened)
    assert isinstance(clean, Image.Image)
    assert clean.size == (60, 80)  # Orientation=6 applied to the pixels before the EXIF went
    assert not set(clean.info) & {"exif", "xmp", "comment", "XML:com.adobe.xmp"}
    assert len(clean.getexif()) == 0
    for fmt in ("JPEG", "PNG", "WEBP"):
        saved = Image.open(io.BytesIO(encode(clean, fmt, exif=clean.getexif())))
        assert not saved.getexif().get_ifd(0x8825) and "xmp" not in saved.info


def test_strip_image_keeps_the_recipe_only_when_asked(tmp_path: Path) -> None:
    img = noise_image(40, 30)
    img.info.update({RECIPE_KEY: json.dumps(RECIPE), "exif": private_exif().tobytes(), "xmp": FOREIGN_XMP})
    kept = strip_private_metadata(img)
    assert isinstance(kept, Image.Image)
    assert json.loads(kept.info[RECIPE_KEY]) == RECIPE
    assert IPTC_SOURCE_TYPE.encode() in kept.info["xmp"] and b"GPSLatitude" not in kept.info["xmp"]
    dropped = strip_private_metadata(img, keep_recipe=False)
    assert isinstance(dropped, Image.Image) and RECIPE_KEY not in dropped.info and "xmp" not in dropped.info


def test_strip_jpeg_bytes_is_lossless_and_drops_gps_makernote_xmp_comment_trailer() -> None:
    img = noise_image(80, 60)
    data = encode(img, "JPEG", exif=private_exif(orientation=6), xmp=FOREIGN_XMP, comment=b"shot at home",
                  icc_profile=b"\x00" * 200)
    data += b"<html><script>alert(1)</script></html>"  # a trailer after EOI (polyglot) goes too
    clean = strip_private_metadata(data, keep_recipe=False)
    assert isinstance(clean, bytes)
    for secret in (b"Jane Doe", b"MAKERNOTE", b"PhoneMaker", b"GPSLatitude", b"shot at home", b"<html>"):
        assert secret not in clean
    out = Image.open(io.BytesIO(clean))
    assert dict(out.getexif()) == {0x0112: 6}  # only the orientation survives, so it still shows upright
    assert out.info.get("icc_profile") == b"\x00" * 200  # colour data kept
    assert np.array_equal(pixels(clean), pixels(data))  # not re-encoded: bit-identical pixels
    assert sniff_image(clean) == "jpeg"


def test_strip_jpeg_bytes_keeps_our_recipe_and_ai_mark(tmp_path: Path) -> None:
    data = encode(noise_image(64, 48), "JPEG", exif=private_exif(), xmp=xmp_packet(RECIPE))
    clean = strip_private_metadata(data)
    assert isinstance(clean, bytes) and b"Jane Doe" not in clean
    path = tmp_path / "out.jpg"
    path.write_bytes(clean)
    assert read_recipe(path) == RECIPE and is_ai_marked(path)
    with Image.open(path) as out:
        assert len(out.getexif()) == 0  # orientation was 1: no EXIF at all


def test_strip_progressive_jpeg_bytes() -> None:
    img = noise_image(96, 64)
    data = encode(img, "JPEG", progressive=True, exif=private_exif(), comment=b"secret")
    clean = strip_private_metadata(data, keep_recipe=False)
    assert isinstance(clean, bytes) and b"secret" not in clean and b"Jane Doe" not in clean
    assert np.array_equal(pixels(clean), pixels(data))


def test_strip_png_bytes_keeps_colour_chunks_and_recipe() -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "taken at 48.85N 2.29E")
    info.add_itxt("XML:com.adobe.xmp", FOREIGN_XMP.decode())
    info.add_text(RECIPE_KEY, json.dumps(RECIPE))
    img = noise_image(50, 40)
    data = encode(img, "PNG", pnginfo=info, exif=private_exif(orientation=3), dpi=(300, 300)) + b"TRAILER"
    assert b"eXIf" in data
    clean = strip_private_metadata(data)
    assert isinstance(clean, bytes)
    assert b"48.85N" not in clean and b"Jane Doe" not in clean and b"GPSLatitude" not in clean
    assert not clean.endswith(b"TRAILER")
    types = png_chunk_types(clean)
    assert types[0] == b"IHDR" and types[-1] == b"IEND" and b"pHYs" in types
    out = Image.open(io.BytesIO(clean))
    assert dict(out.getexif()) == {0x0112: 3}
    assert json.loads(out.info[RECIPE_KEY]) == RECIPE and IPTC_SOURCE_TYPE in out.info["XML:com.adobe.xmp"]
    assert np.array_equal(pixels(clean), pixels(img))
    bare = strip_private_metadata(data, keep_recipe=False)
    assert isinstance(bare, bytes) and RECIPE_KEY.encode() not in bare


def test_strip_webp_bytes() -> None:
    img = noise_image(50, 40)
    data = encode(img, "WEBP", lossless=True, exif=private_exif(orientation=8), xmp=FOREIGN_XMP)
    clean = strip_private_metadata(data, keep_recipe=False)
    assert isinstance(clean, bytes)
    assert b"Jane Doe" not in clean and b"GPSLatitude" not in clean
    out = Image.open(io.BytesIO(clean))
    assert dict(out.getexif()) == {0x0112: 8} and "xmp" not in out.info
    assert np.array_equal(pixels(clean), pixels(img))
    with_recipe = strip_private_metadata(encode(img, "WEBP", exif=private_exif(), xmp=FOREIGN_XMP))
    assert isinstance(with_recipe, bytes)
    assert b"Jane Doe" not in with_recipe and "xmp" not in Image.open(io.BytesIO(with_recipe)).info  # no recipe
    plain = encode(img, "WEBP")  # simple format (no VP8X): nothing to strip, still valid
    assert np.array_equal(pixels(strip_private_metadata(plain)), pixels(plain))


def test_multi_picture_jpeg_is_jpeg_and_loses_its_extra_frames() -> None:
    buf = io.BytesIO()
    noise_image(64, 48).save(buf, "MPO", save_all=True, append_images=[noise_image(64, 48, seed=3)])
    assert sniff_image(buf.getvalue()) == "jpeg"  # Pillow calls it MPO; it is still JPEG data
    clean = strip_private_metadata(buf.getvalue())
    out = Image.open(io.BytesIO(clean))
    assert out.format == "JPEG" and getattr(out, "n_frames", 1) == 1  # frames after EOI carry their own EXIF


def test_strip_refuses_other_formats() -> None:
    with pytest.raises(UnsupportedMediaType):
        strip_private_metadata(encode(noise_image(20, 20), "GIF"))


# =============================================================================================
# 5. SSRF
# =============================================================================================
class Sentinel(http.server.ThreadingHTTPServer):
    """A local server that must never be reached by an attack; it counts every request."""

    daemon_threads = True

    def __init__(self) -> None:
        self.hits: list[tuple[str, str | None]] = []

        sentinel = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's naming
                sentinel.hits.append((self.path, self.headers.get("Host")))
                body = b"sentinel"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]


@pytest.fixture(scope="module")
def sentinel_server() -> Iterator[Sentinel]:
    server = Sentinel()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture()
def sentinel(sentinel_server: Sentinel) -> Sentinel:
    sentinel_server.hits.clear()  # one server for the module (fast), a clean count for each test
    return sentinel_server


PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


def fake_resolver(table: dict[str, list[str]]) -> ssrf.Resolver:
    """A getaddrinfo stand-in: names map to the addresses a hostile DNS server would answer."""

    def resolve(host: str, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out: list[tuple[Any, ...]] = []
        for ip in table[host]:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            sockaddr = (ip, port, 0, 0) if family == socket.AF_INET6 else (ip, port)
            out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    return resolve


RESOLVER = fake_resolver({
    "images.example.com": [PUBLIC_V4],
    "v6.example.com": [PUBLIC_V6],
    "looks-public.example.com": ["127.0.0.1"],
    "mixed.example.com": [PUBLIC_V4, "127.0.0.1"],
    "metadata.example.com": ["169.254.169.254"],
    "internal.example.com": ["10.0.0.7"],
    "mapped.example.com": ["::ffff:127.0.0.1"],
    "ula.example.com": ["fd12:3456::1"],
})

ATTACKS = [
    "http://127.0.0.1:{port}/",
    "https://127.0.0.1:{port}/",
    "http://localhost:{port}/",
    "http://sub.localhost:{port}/",
    "http://2130706433:{port}/",  # decimal 127.0.0.1
    "http://0177.0.0.1:{port}/",  # octal
    "http://0x7f.1:{port}/",  # hex, short form
    "http://0x7f000001:{port}/",
    "http://127.1:{port}/",
    "http://127.0.0.1.:{port}/",
    "http://[::1]:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://[::ffff:7f00:1]:{port}/",
    "http://[64:ff9b::7f00:1]:{port}/",  # NAT64 of 127.0.0.1
    "http://[2002:7f00:1::1]:{port}/",  # 6to4 of 127.0.0.1
    "http://[::]:{port}/",
    "http://0.0.0.0:{port}/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/",
    "http://[fd00::1]/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://looks-public.example.com:{port}/",  # DNS says 127.0.0.1
    "http://mixed.example.com:{port}/",  # one good, one bad answer: refused
    "http://metadata.example.com/",
    "http://internal.example.com/",
    "http://mapped.example.com:{port}/",
    "http://ula.example.com/",
    "http://does-not-resolve.example.com/",
    "http://user:pass@images.example.com/",
    "https://images.example.com@127.0.0.1:{port}/",
    "https://images.example.com\\@127.0.0.1:{port}/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/_GET%20/",
    "ftp://images.example.com/",
    "dict://127.0.0.1:{port}/",
]


@pytest.mark.parametrize("template", ATTACKS)
def test_attack_urls_are_refused_and_the_sentinel_sees_nothing(template: str, sentinel: Sentinel) -> None:
    url = template.format(port=sentinel.port)
    with pytest.raises(UnsafeURL) as info:
        check_url(url, allow_http=True, resolver=RESOLVER)
    assert info.value.code == "unsafe_url" and info.value.http_status == 422
    # httpx itself refuses a few spellings (e.g. octal IPv4) before any transport runs: also a refusal.
    with safe_client(allow_http=True, resolver=RESOLVER) as client, pytest.raises((UnsafeURL, httpx.InvalidURL)):
        client.get(url)
    assert sentinel.hits == []


def test_http_is_refused_unless_allowed() -> None:
    with pytest.raises(UnsafeURL, match="scheme"):
        check_url("http://images.example.com/cat.png", resolver=RESOLVER)
    check_url("http://images.example.com/cat.png", allow_http=True, resolver=RESOLVER)


def test_public_urls_pass() -> None:
    check_url("https://images.example.com/cat.png?x=1", resolver=RESOLVER)
    check_url("https://v6.example.com/", resolver=RESOLVER)
    check_url(f"https://{PUBLIC_V4}/cat.png", resolver=RESOLVER)
    check_url(f"https://[{PUBLIC_V6}]:8443/", resolver=RESOLVER)
    check_url("https://images.example.com/a?next=user@host", resolver=RESOLVER)  # '@' in the query is fine
    with pytest.raises(UnsafeURL, match="port"):
        check_url("https://images.example.com:8443/", resolver=RESOLVER, allowed_ports={443})


def test_redirect_to_a_private_address_is_refused(sentinel: Sentinel) -> None:
    seen: list[httpx.Request] = []

    def public_site(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/start":
            return httpx.Response(302, headers={"Location": "/hop"})  # relative: same host, allowed
        if request.url.path == "/hop":
            return httpx.Response(302, headers={"Location": f"http://127.0.0.1:{sentinel.port}/"})
        return httpx.Response(302, headers={"Location": f"http://looks-public.example.com:{sentinel.port}/"})

    with safe_client(allow_http=True, resolver=RESOLVER, inner=httpx.MockTransport(public_site),
                     follow_redirects=True) as client:
        with pytest.raises(UnsafeURL, match=r"127\.0\.0\.1"):
            client.get("https://images.example.com/start")
        with pytest.raises(UnsafeURL, match="looks-public"):
            client.get("https://images.example.com/other")
    assert [r.url.path for r in seen] == ["/start", "/hop", "/other"]
    # The relative redirect stayed on the original host name (not on the pinned IP).
    assert {r.headers["host"] for r in seen} == {"images.example.com"}
    assert sentinel.hits == []


def test_async_client_checks_redirects_too(sentinel: Sentinel) -> None:
    def public_site(request: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"Location": f"http://[::ffff:127.0.0.1]:{sentinel.port}/"})

    async def go() -> None:
        async with safe_async_client(allow_http=True, resolver=RESOLVER, inner=httpx.MockTransport(public_site),
                                     follow_redirects=True) as client:
            with pytest.raises(UnsafeURL):
                await client.post("https://images.example.com/hook", content=b"{}")

    asyncio.run(go())
    assert sentinel.hits == []


def test_connection_is_pinned_to_the_checked_address() -> None:
    answers = iter([[PUBLIC_V4], ["127.0.0.1"], ["127.0.0.1"]])
    calls: list[str] = []

    def rebinding(host: str, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        calls.append(host)  # a DNS-rebinding server: public for the first answer, loopback after
        return fake_resolver({host: next(answers)})(host, port)

    got: list[httpx.Request] = []

    def site(request: httpx.Request) -> httpx.Response:
        got.append(request)
        return httpx.Response(200, text="ok")

    mock = httpx.MockTransport(site)
    with safe_client(resolver=rebinding, inner=mock) as client:
        assert client.get("https://rebind.example.com/x").text == "ok"
    assert calls == ["rebind.example.com"]  # resolved exactly once, for the check
    request = got[0]
    assert request.url.host == PUBLIC_V4  # ... and the connection goes to that answer
    assert request.headers["host"] == "rebind.example.com"
    assert request.extensions["sni_hostname"] == "rebind.example.com"  # TLS verifies the real name


def test_pinned_request_over_a_real_socket_keeps_the_host_header(sentinel: Sentinel) -> None:
    # Test-only policy that lets loopback through, to prove on a real connection that the transport dials
    # the checked IP itself: "pinned.invalid" exists in no DNS, so any second lookup would fail.
    resolver = fake_resolver({"pinned.invalid": ["127.0.0.1"]})
    with safe_client(allow_http=True, resolver=resolver, policy=lambda ip: True) as client:
        response = client.get(f"http://pinned.invalid:{sentinel.port}/ping")
    assert response.text == "sentinel"
    assert sentinel.hits == [("/ping", f"pinned.invalid:{sentinel.port}")]


def test_is_public_address_table() -> None:
    import ipaddress

    public = ["8.8.8.8", PUBLIC_V4, PUBLIC_V6, "2a00:1450:4001:81c::200e"]
    private = ["127.0.0.1", "10.1.2.3", "172.31.255.255", "192.168.0.1", "100.100.100.100", "169.254.169.254",
               "0.0.0.0", "224.0.0.251", "255.255.255.255", "198.18.0.1", "192.0.2.1", "::1", "::",
               "fe80::1", "fc00::1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:a00:1::", "ff02::1"]
    assert all(ssrf.is_public_address(ipaddress.ip_address(a)) for a in public)
    assert not any(ssrf.is_public_address(ipaddress.ip_address(a)) for a in private)


# =============================================================================================
# 6. webhook signatures
# =============================================================================================
def test_published_standard_webhooks_vector() -> None:
    # The example from the Standard Webhooks specification (also the svix libraries' test vector).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, ts, body = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert webhook_signing.sign(secret, msg_id, ts, body) == sig
    hdrs = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}
    webhook_signing.verify(secret, hdrs, body, now=ts + 10)


def test_signature_matches_an_independent_computation() -> None:
    secret = webhook_signing.new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    body = json.dumps({"id": "p1", "status": "succeeded"}).encode()
    hdrs = webhook_signing.headers(secret, "msg_abc", body, now=1_700_000_000)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, b"msg_abc.1700000000." + body, hashlib.sha256).digest()
    assert hdrs == {"webhook-id": "msg_abc", "webhook-timestamp": "1700000000",
                    "webhook-signature": "v1," + base64.b64encode(mac).decode()}
    webhook_signing.verify(secret, hdrs, body, now=1_700_000_100)
    # Header names are case-insensitive, as HTTP says.
    webhook_signing.verify(secret, {k.title(): v for k, v in hdrs.items()}, body, now=1_700_000_000)


def test_tampering_fails() -> None:
    secret, other = webhook_signing.new_secret(), webhook_signing.new_secret()
    body, now = b'{"status":"succeeded"}', 1_700_000_000
    good = webhook_signing.headers(secret, "msg_1", body, now=now)
    bad_cases = [
        (secret, good, b'{"status":"failed"}'),  # body altered
        (secret, {**good, "webhook-timestamp": str(now + 1)}, body),  # timestamp altered
        (secret, {**good, "webhook-id": "msg_2"}, body),  # id altered
        (other, good, body),  # wrong secret
        (secret, {**good, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}, body),
        (secret, {**good, "webhook-signature": good["webhook-signature"].replace("v1,", "v2,")}, body),
        (secret, {k: v for k, v in good.items() if k != "webhook-signature"}, body),
        (secret, {**good, "webhook-timestamp": "soon"}, body),
    ]
    for key, hdrs, payload in bad_cases:
        with pytest.raises(WebhookVerificationError) as info:
            webhook_signing.verify(key, hdrs, payload, now=now)
        assert info.value.http_status == 401 and isinstance(info.value, KontextError)


def test_stale_and_future_timestamps_fail() -> None:
    secret, body = webhook_signing.new_secret(), b"{}"
    hdrs = webhook_signing.headers(secret, "msg_1", body, now=1_700_000_000)
    webhook_signing.verify(secret, hdrs, body, now=1_700_000_300)
    with pytest.raises(WebhookVerificationError, match="too old"):
        webhook_signing.verify(secret, hdrs, body, now=1_700_000_301)
    with pytest.raises(WebhookVerificationError, match="future"):
        webhook_signing.verify(secret, hdrs, body, now=1_699_999_699)
    webhook_signing.verify(secret, hdrs, body, tolerance=3600, now=1_700_003_000)


def test_several_signatures_any_one_may_match() -> None:
    old, new = webhook_signing.new_secret(), webhook_signing.new_secret()
    body, now = b"{}", 1_700_000_000
    sig_old = webhook_signing.sign(old, "msg_r", now, body)
    sig_new = webhook_signing.sign(new, "msg_r", now, body)
    hdrs = {"webhook-id": "msg_r", "webhook-timestamp": str(now),
            "webhook-signature": f"v1a,c2lnbmVk {sig_old} {sig_new}"}  # during a rotation, plus another scheme
    webhook_signing.verify(old, hdrs, body, now=now)
    webhook_signing.verify(new, hdrs, body, now=now)
    with pytest.raises(WebhookVerificationError):
        webhook_signing.verify(webhook_signing.new_secret(), hdrs, body, now=now)


def test_retries_keep_the_webhook_id() -> None:
    secret, body = webhook_signing.new_secret(), b'{"status":"succeeded"}'
    msg_id = webhook_signing.stable_message_id("p_123", "completed")
    assert msg_id == webhook_signing.stable_message_id("p_123", "completed")  # same after a worker restart
    assert msg_id != webhook_signing.stable_message_id("p_123", "start")
    first = webhook_signing.headers(secret, msg_id, body, now=1_700_000_000)
    retry = webhook_signing.headers(secret, msg_id, body, now=1_700_000_030)
    assert first["webhook-id"] == retry["webhook-id"] == msg_id
    assert first["webhook-signature"] != retry["webhook-signature"]
    webhook_signing.verify(secret, first, body, now=1_700_000_000)
    webhook_signing.verify(secret, retry, body, now=1_700_000_030)
    assert webhook_signing.new_message_id() != webhook_signing.new_message_id()


def test_bad_ids_and_secrets_are_refused() -> None:
    with pytest.raises(ValueError):
        webhook_signing.sign(webhook_signing.new_secret(), "msg.with.dots", 1, b"")
    with pytest.raises(ValueError):
        webhook_signing.sign("whsec_not base64!", "msg_1", 1, b"")
