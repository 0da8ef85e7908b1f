"""Changing an image's pixels while keeping every metadata block (manifest included) in place."""

from __future__ import annotations

import struct
import zlib


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def tamper_png(data: bytes) -> bytes:
    """Brighten a run of pixels in the middle: a valid PNG that still decodes, other chunks untouched."""
    chunks = _png_chunks(data)
    raw = bytearray(zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT")))
    ihdr = next(body for kind, body in chunks if kind == b"IHDR")
    width, depth, colour = struct.unpack(">I", ihdr[:4])[0], ihdr[8], ihdr[9]
    stride = 1 + width * {0: 1, 2: 3, 4: 2, 6: 4}[colour] * depth // 8  # a filter byte starts each row
    mid = len(raw) // 2
    for i in range(mid, mid + 30):
        if i % stride:
            raw[i] = (raw[i] + 97) % 256
    out, written = bytearray(data[:8]), False
    for kind, body in chunks:
        if kind == b"IDAT":
            if not written:
                out += _png_chunk(b"IDAT", zlib.compress(bytes(raw)))
                written = True
            continue
        out += _png_chunk(kind, body)
    return bytes(out)


def tamper_jpeg(data: bytes) -> bytes:
    """Flip low bits of entropy-coded bytes after the start of scan (no 0xFF byte is created or removed)."""
    out = bytearray(data)
    start = data.index(b"\xff\xda")
    start += 2 + struct.unpack(">H", data[start + 2:start + 4])[0]
    mid = start + (len(data) - start) // 2
    changed = 0
    for i in range(mid, len(out) - 2):
        if 0xFF not in (out[i - 1], out[i], out[i + 1]) and out[i] ^ 0x01 != 0xFF:
            out[i] ^= 0x01
            changed += 1
            if changed == 8:
                break
    return bytes(out)


def tamper_webp(data: bytes) -> bytes:
    """Flip a byte in the middle of the VP8/VP8L bitstream chunk (other chunks untouched)."""
    out = bytearray(data)
    pos = 12
    while pos < len(data):
        kind = data[pos:pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4:pos + 8])
        if kind in (b"VP8 ", b"VP8L"):
            out[pos + 8 + size // 2] ^= 0x10
            return bytes(out)
        pos += 8 + size + (size & 1)
    raise AssertionError("no VP8 bitstream chunk")


TAMPER = {"png": tamper_png, "jpeg": tamper_jpeg, "webp": tamper_webp}
