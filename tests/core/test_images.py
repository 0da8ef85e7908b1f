import re
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from kontext_studio.core.errors import InvalidImage
from kontext_studio.core.images import load_reference
from kontext_studio.core.types import Reference
from tests.conftest import noise_image


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (no pixel data): what a decompression bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = noise_image(120, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise: the upright picture is 80 wide, 120 tall
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif)
    loaded = load_reference(Reference(p))
    assert loaded.size == (80, 120)
    assert any("EXIF orientation" in w for w in loaded.warnings)


def test_transparency_is_flattened_on_white(tmp_path: Path) -> None:
    p = tmp_path / "a.png"
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(p)
    loaded = load_reference(Reference(p))
    assert loaded.image.mode == "RGB" and loaded.image.getpixel((0, 0)) == (255, 255, 255)
    assert any("transparent" in w for w in loaded.warnings)


def test_hash_depends_on_pixels_not_on_file_format(tmp_path: Path) -> None:
    img = noise_image(64, 48)
    img.save(tmp_path / "a.png")
    img.save(tmp_path / "b.webp", lossless=True)
    a, b = load_reference(Reference(tmp_path / "a.png")), load_reference(Reference(tmp_path / "b.webp"))
    assert a.sha256 == b.sha256


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
        (lambda p: p.write_text("definitely not a picture"), "not a readable image"),
        (lambda p: png_header_only(p, 20000, 20000), "too large"),
        (lambda p: png_header_only(p, 13000, 100), "13000x100 is too large"),
        (lambda p: noise_image(8, 8).save(p, format="PNG"), "too small"),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "input.png"
    make(p)
    with pytest.raises(InvalidImage, match=re.escape(message)) as info:
        load_reference(Reference(p), index=1)
    assert "reference 2" in str(info.value)


def test_truncated_file_is_reported_as_damaged(tmp_path: Path) -> None:
    p = tmp_path / "cut.png"
    noise_image(200, 200).save(p)
    p.write_bytes(p.read_bytes()[:2000])
    with pytest.raises(InvalidImage, match="damaged"):
        load_reference(Reference(p))


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="file not found"):
        load_reference(Reference(tmp_path / "nope.jpg"))
    with pytest.raises(InvalidImage, match="a folder, not an image"):
        load_reference(Reference(tmp_path))


def test_16_bit_png_keeps_its_tones(tmp_path: Path) -> None:
    import numpy as np

    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(ramp).save(p)
    with Image.open(p) as raw:
        assert raw.mode.startswith("I")
    loaded = load_reference(Reference(p))
    gray = np.asarray(loaded.image)[..., 0]
    assert gray.min() == 0 and gray.max() == 255 and 100 < gray.mean() < 155  # a ramp, not a white sheet
    assert any("16-bit" in w for w in loaded.warnings)


def test_cmyk_and_grayscale_jpegs_become_rgb(tmp_path: Path) -> None:
    for mode in ("CMYK", "L"):
        p = tmp_path / f"{mode}.jpg"
        noise_image(64, 64).convert(mode).save(p)
        assert load_reference(Reference(p)).image.mode == "RGB"
