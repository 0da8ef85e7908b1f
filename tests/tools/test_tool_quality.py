"""What each tool does to real photographs, measured: figures a broken tool would miss."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from kontext_studio.tools import run_tool
from kontext_studio.tools.io import load_image

from .conftest import grace_hopper, jpeg_bytes, photo, png_bytes, psnr


def _horse_composite() -> tuple[Image.Image, np.ndarray]:
    """A cat-fur horse on a blurred coffee photo: a real-photo composite whose true mask is known."""
    from skimage import data

    horse = ~data.horse()  # True where the horse is
    h, w = horse.shape
    fg = photo("chelsea").resize((w, h))
    bg = photo("coffee").resize((w, h)).filter(ImageFilter.GaussianBlur(6))
    mask = Image.fromarray((horse * 255).astype(np.uint8))
    return Image.composite(fg, bg, mask), horse


def test_remove_background_matches_the_known_mask(tool_models) -> None:
    comp, truth = _horse_composite()
    result = run_tool("remove-background", [png_bytes(comp)], {"model": "fast"})
    assert result.image is not None and result.image.mode == "RGBA" and result.image.size == comp.size
    alpha = np.asarray(result.image.getchannel("A"))
    cut = alpha >= 128
    iou = (cut & truth).sum() / (cut | truth).sum()
    assert iou >= 0.92, f"IoU {iou:.3f} against the known mask"
    soft = ((alpha > 10) & (alpha < 245)).sum()
    assert soft > 50, "the matte was thresholded: no soft edge left"
    # The subject's own pixels are untouched.
    rgb = np.asarray(result.image.convert("RGB"), dtype=np.int16)
    inner = truth & (alpha == 255)
    assert np.abs(rgb[inner] - np.asarray(comp, dtype=np.int16)[inner]).max() <= 1


def test_replace_background_puts_the_subject_on_the_colour(tool_models) -> None:
    comp, truth = _horse_composite()
    out = run_tool("replace-background", [comp], {"background": "color", "color": "#00ff00", "model": "fast"}).image
    assert out is not None
    arr = np.asarray(out, dtype=np.int16)
    from scipy.ndimage import binary_erosion

    far_bg = binary_erosion(~truth, iterations=6)
    assert np.abs(arr[far_bg] - np.array([0, 255, 0])).mean() < 8  # background became green
    inner = binary_erosion(truth, iterations=6)
    assert np.abs(arr[inner] - np.asarray(comp, dtype=np.int16)[inner]).mean() < 3  # subject kept


def test_portrait_blur_keeps_the_face_sharp_and_blurs_the_rest(tool_models) -> None:
    img = photo("astronaut")
    result = run_tool("portrait-blur", [img], {"strength": "70"})
    out = result.image
    assert out is not None and result.info["mask_model"] in ("selfie", "isnet")

    def detail(im: Image.Image, box: tuple[int, int, int, int]) -> float:
        g = np.asarray(im.convert("L").crop(box), dtype=np.float64)
        return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())

    face = (190, 90, 260, 170)
    corner = (420, 20, 500, 120)  # the shuttle behind her
    assert detail(out, face) > 0.9 * detail(img, face)
    assert detail(out, corner) < 0.6 * detail(img, corner)


def _gradient_energy(img: Image.Image) -> float:
    g = np.asarray(img.convert("L"), dtype=np.float64)
    return float((np.diff(g, axis=0) ** 2).mean() + (np.diff(g, axis=1) ** 2).mean())


def test_upscale_is_sharper_than_bicubic_at_the_same_size(tool_models) -> None:
    original = photo("astronaut").crop((160, 60, 352, 252))  # the face, 192 px
    small = original.resize((48, 48), Image.Resampling.BOX)
    up = run_tool("upscale", [small], {"scale": 4, "mode": "quality"}).image
    assert up is not None and up.size == (192, 192)
    bicubic = small.resize((192, 192), Image.Resampling.BICUBIC)
    assert _gradient_energy(up) > 1.3 * _gradient_energy(bicubic)
    # Sharper, yet true to its input: shrunk back, it is the picture it was made from.
    assert psnr(up.resize((48, 48), Image.Resampling.BOX), small) > 27


def test_upscale_photo_mode_needs_no_model_and_keeps_transparency() -> None:
    rgba = photo("coffee").resize((80, 60)).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 128))
    out = run_tool("upscale", [rgba], {"scale": "2", "mode": "photo"}).image
    assert out is not None and out.size == (160, 120) and out.mode == "RGBA"
    assert abs(np.asarray(out.getchannel("A")).mean() - 128) < 2


def test_denoise_gains_psnr_on_added_noise() -> None:
    clean = photo("astronaut").crop((128, 64, 384, 320))
    rng = np.random.default_rng(3)
    noisy_arr = np.clip(np.asarray(clean, dtype=np.float64) + rng.normal(0, 20, (256, 256, 3)), 0, 255)
    noisy = Image.fromarray(noisy_arr.astype(np.uint8))
    result = run_tool("denoise", [noisy], {})
    assert 14 <= result.info["strength"] <= 26  # the noise (sigma 20) was estimated, not guessed
    gain = psnr(result.image, clean) - psnr(noisy, clean)  # type: ignore[arg-type]
    assert gain >= 3.0, f"PSNR gain {gain:.2f} dB"
    tv = run_tool("denoise", [noisy], {"method": "tv", "strength": 20}).image
    assert psnr(tv, clean) - psnr(noisy, clean) >= 3.0  # type: ignore[arg-type]


def test_sharpen_and_deblur_recover_a_blurred_photo() -> None:
    sharp = photo("camera").crop((100, 100, 356, 356))
    blurred = sharp.filter(ImageFilter.GaussianBlur(1.5))
    for params in ({"method": "deblur", "radius": 1.5, "amount": 100}, {"method": "unsharp", "radius": 2}):
        out = run_tool("sharpen", [blurred], params).image
        assert _gradient_energy(out) > 1.3 * _gradient_energy(blurred)  # type: ignore[arg-type]
    deblurred = run_tool("sharpen", [blurred], {"method": "deblur", "radius": 1.5, "amount": 100}).image
    assert psnr(deblurred.convert("L"), sharp.convert("L")) > psnr(blurred.convert("L"), sharp.convert("L"))  # type: ignore[union-attr]


def test_eraser_leaves_no_trace_of_a_pasted_object() -> None:
    base = photo("brick").resize((256, 256))  # a real wall: texture the fill must continue
    patch = photo("astronaut").crop((180, 80, 236, 136))  # her face, pasted on the wall
    pasted = base.copy()
    box = (100, 90, 156, 146)
    pasted.paste(patch, box[:2])
    mask = Image.new("L", base.size, 0)
    mask.paste(255, box)
    out = run_tool("erase", [pasted], {"method": "patchmatch", "grow": 2}, mask=mask).image
    assert out is not None
    region = np.asarray(out.crop(box), dtype=np.float64)
    orig = np.asarray(base.crop(box), dtype=np.float64)
    obj = np.asarray(patch, dtype=np.float64)
    # No trace: the filled area does not correlate with the face that was there.
    corr = np.corrcoef(region.ravel(), obj.ravel())[0, 1]
    assert abs(corr) < 0.35, f"correlation with the erased object {corr:.2f}"
    # Close to the original wall: much nearer it than the pasted face was, same mean colour.
    assert np.abs(region - orig).mean() < 0.5 * np.abs(obj - orig).mean()
    assert np.abs(region.mean(axis=(0, 1)) - orig.mean(axis=(0, 1))).max() < 12
    # Outside the (grown) mask nothing moved.
    far = np.asarray(mask.filter(ImageFilter.MaxFilter(9))) == 0
    assert np.array_equal(np.asarray(out)[far], np.asarray(pasted)[far])


def test_smart_crop_keeps_the_face() -> None:
    img = grace_hopper()
    result = run_tool("crop", [img], {"aspect": "16:9"})
    left, top, right, bottom = result.info["box"]
    assert result.info["kept"] == "faces"
    assert abs((right - left) / (bottom - top) - 16 / 9) < 0.01
    from kontext_studio.tools.geometry import face_boxes

    fl, ft, fr, fb = face_boxes(img)[0]
    assert left <= fl and right >= fr and top <= ft and bottom >= fb
    story = run_tool("crop", [img], {"aspect": "instagram-story"}).image
    assert story is not None and story.size == (1080, 1920)


def test_headshot_frames_the_face() -> None:
    img = grace_hopper()
    out = run_tool("headshot", [img], {"aspect": "1:1", "size": 256})
    assert out.image is not None and out.image.size == (256, 256)
    left, top, right, bottom = out.info["box"]
    from kontext_studio.tools.geometry import face_boxes

    fl, ft, fr, fb = face_boxes(img)[0]
    assert left <= fl and right >= fr and top <= ft and bottom >= fb
    assert 0.2 < (fb - ft) / (bottom - top) < 0.5


def test_straighten_levels_a_tilted_wall() -> None:
    wall = photo("brick").resize((400, 400))
    tilted = wall.rotate(-5, resample=Image.Resampling.BICUBIC, expand=False).crop((60, 60, 340, 340))
    result = run_tool("rotate", [tilted], {"straighten": "true"})
    assert abs(result.info["detected_tilt"] - 5) < 1.0, result.info
    flipped = run_tool("rotate", [wall], {"flip": "horizontal"}).image
    assert np.array_equal(np.asarray(flipped)[:, ::-1], np.asarray(wall))


def test_convert_round_trips() -> None:
    img = photo("coffee")
    png = run_tool("convert", [jpeg_bytes(img)], {"format": "png"})
    assert png.encoded is not None and png.encoded[:8] == b"\x89PNG\r\n\x1a\n"
    source = load_image(jpeg_bytes(img))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.encoded))), np.asarray(source))  # lossless
    for fmt, min_psnr in (("jpeg", 33.0), ("webp", 32.0), ("avif", 32.0)):
        res = run_tool("convert", [png_bytes(img)], {"format": fmt, "quality": 90})
        back = Image.open(io.BytesIO(res.encoded))  # type: ignore[arg-type]
        assert back.format == {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}[fmt]
        assert back.size == img.size and psnr(back.convert("RGB"), img) > min_psnr, fmt


def test_heic_from_a_phone_converts_to_jpeg() -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    img = photo("astronaut").resize((256, 256))
    buf = io.BytesIO()
    img.save(buf, "HEIF", quality=90)
    res = run_tool("convert", [buf.getvalue()], {"format": "jpeg"})
    back = Image.open(io.BytesIO(res.encoded))  # type: ignore[arg-type]
    assert back.format == "JPEG" and psnr(back, img) > 28


def test_compress_reaches_the_target_size_with_the_best_quality() -> None:
    img = photo("astronaut")
    for target_kb in (30, 8):
        res = run_tool("compress", [png_bytes(img)], {"target_kb": target_kb, "format": "jpeg"})
        assert res.encoded is not None and len(res.encoded) <= target_kb * 1000
        back = Image.open(io.BytesIO(res.encoded)).convert("RGB")
        ref = img.resize(back.size, Image.Resampling.LANCZOS) if back.size != img.size else img
        assert psnr(back, ref) > 25
        assert res.info["quality"] >= 35
    # The best quality: one step up would not fit.
    q = run_tool("compress", [png_bytes(img)], {"target_kb": 30, "allow_resize": False}).info["quality"]
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=q + 1, optimize=True)
    assert len(buf.getvalue()) > 30_000


def test_strip_metadata_removes_gps_and_camera_and_keeps_pixels() -> None:
    img = photo("coffee")
    exif = Image.Exif()
    exif[0x010F] = "Canon"  # Make
    exif[0x0110] = "EOS 5D"  # Model
    exif.get_ifd(0x8825)[2] = (51.0, 30.0, 0.0)  # GPS latitude
    exif[0x8825] = exif.get_ifd(0x8825)
    data = png_bytes(img)
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif)
    data = buf.getvalue()
    info = run_tool("info", [data], {"faces": False}).info
    assert info["exif"]["camera_make"] == "Canon" and info["exif"]["gps"] is True
    res = run_tool("strip-metadata", [data])
    assert {"exif", "gps", "camera"} <= set(res.info["removed"])
    from kontext_studio.tools import result_bytes

    out, fmt = result_bytes(res, "png")
    clean = Image.open(io.BytesIO(out))
    assert not clean.getexif() and fmt == "png"
    assert np.array_equal(np.asarray(clean), np.asarray(img))


def test_info_counts_faces_and_reads_the_profile() -> None:
    img = grace_hopper()
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    info = run_tool("info", [jpeg_bytes(img, icc_profile=srgb)]).info
    assert info["faces"] == 1 and info["format"] == "jpeg"
    assert info["width"] == img.width and "sRGB" in (info["color_profile"] or "")


def test_colour_adjust_moves_the_colours_the_asked_way() -> None:
    img = photo("coffee")
    arr = np.asarray(img, dtype=np.float64)
    warm = np.asarray(run_tool("color-adjust", [img], {"temperature": 60}).image, dtype=np.float64)
    assert warm[..., 0].mean() > arr[..., 0].mean() + 5 and warm[..., 2].mean() < arr[..., 2].mean() - 5
    grey = np.asarray(run_tool("color-adjust", [img], {"saturation": -100}).image, dtype=np.float64)
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 1
    bright = np.asarray(run_tool("color-adjust", [img], {"brightness": 30}).image, dtype=np.float64)
    assert bright.mean() > arr.mean() + 15


def test_auto_enhance_fixes_a_cast_and_flat_exposure() -> None:
    img = photo("astronaut")
    arr = np.asarray(img, dtype=np.float64)
    dull = np.clip(arr * np.array([0.55, 0.5, 0.75]) + 40, 0, 255).astype(np.uint8)  # bluish, flat, washed out
    out = np.asarray(run_tool("auto-enhance", [Image.fromarray(dull)]).image, dtype=np.float64)
    means = out.reshape(-1, 3).mean(0)
    assert means.max() - means.min() < np.ptp(dull.reshape(-1, 3).mean(0)) * 0.5  # cast reduced
    assert out.std() > dull.std() * 1.3  # more contrast


def test_watermark_marks_only_its_corner_and_collage_lays_out_a_grid() -> None:
    img = photo("coffee")
    out = np.asarray(run_tool("add-text", [img], {"text": "© Studio", "position": "bottom-right"}).image)
    changed = np.any(out != np.asarray(img), axis=-1)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 200 and ys.min() > img.height / 2 and xs.min() > img.width / 2
    grid = run_tool("collage", [img, photo("astronaut"), photo("chelsea")], {"cell": 100, "gap": 10}).image
    assert grid is not None and grid.size == (2 * 100 + 3 * 10, 2 * 100 + 3 * 10)
    assert np.asarray(grid)[5, 5].tolist() == [255, 255, 255]
