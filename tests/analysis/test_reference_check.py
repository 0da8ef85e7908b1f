"""Reference checker on real photos (scikit-image astronaut, matplotlib's Grace Hopper, coffee) and on
degraded copies: each degradation must produce its own finding, and the clean photo none of them."""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from PIL.JpegImagePlugin import JpegImageFile

pytest.importorskip("dlib")
pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")
cbook = pytest.importorskip("matplotlib.cbook")

from scipy.ndimage import gaussian_filter  # noqa: E402

from kontext_studio.analysis import reference_check as rc  # noqa: E402
from kontext_studio.analysis.common import Finding, Severity  # noqa: E402
from kontext_studio.analysis.reference_check import (  # noqa: E402
    GENERIC_FACE_MODEL,
    POSE_LANDMARKS,
    ReferenceReport,
    check_reference,
    estimate_head_pose,
    estimate_jpeg_quality,
)
from kontext_studio.core.errors import InvalidImage  # noqa: E402

EXPOSURE_AND_BLUR = {"blur", "underexposed", "overexposed", "backlight"}


# --- photos ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skimage_data.astronaut())


@pytest.fixture(scope="module")
def hopper() -> Image.Image:
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        img = Image.open(io.BytesIO(fh.read()))
        img.load()
    return img.convert("RGB")


@pytest.fixture(scope="module")
def clean(astronaut: Image.Image) -> ReferenceReport:
    return check_reference(astronaut)


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def scaled(img: Image.Image, factor: float, add: float = 0.0) -> Image.Image:
    arr = np.asarray(img).astype(np.float32) * factor + add
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def finding(report: ReferenceReport, code: str) -> Finding:
    hits = [f for f in report.findings if f.code == code]
    assert hits, f"no {code!r} finding in {[str(f) for f in report.findings]}"
    return hits[0]


# --- the clean photo ------------------------------------------------------------------------------------
def test_clean_astronaut_has_one_frontal_sharp_well_exposed_face(clean: ReferenceReport) -> None:
    assert clean.faces == 1
    assert clean.size == (512, 512)
    assert not clean.codes & (EXPOSURE_AND_BLUR | {"head_turned", "heavy_filter", "jpeg_quality",
                                                     "jpeg_artifacts", "multiple_faces", "face_too_small"})
    m = clean.metrics
    assert m["sharpness_region"] == "face" and m["sharpness"] > rc.BLUR_FACE_WARN
    assert abs(m["yaw"]) < 15 and abs(m["pitch"]) < 20
    assert 0.12 < m["face_fraction"] < 0.25
    # 512 px is usable but under the model's ~1 MP: a warning, not an error.
    low = finding(clean, "low_resolution")
    assert low.severity is Severity.WARNING and "512" in low.message
    assert clean.ok


def test_clean_hopper_portrait(hopper: Image.Image) -> None:
    report = check_reference(hopper)
    assert report.faces == 1
    assert not report.codes & (EXPOSURE_AND_BLUR | {"head_turned", "heavy_filter"})


def test_report_is_json_ready(clean: ReferenceReport) -> None:
    data = json.loads(json.dumps(clean.as_dict()))
    assert data["faces"] == 1 and data["size"] == [512, 512]
    assert {"code", "severity", "message", "fix"} <= set(data["findings"][0])
    assert data["metrics"]["short_side"] == 512


# --- one degradation, one finding -----------------------------------------------------------------------
def test_downscaled_is_low_resolution_error(astronaut: Image.Image) -> None:
    report = check_reference(astronaut.resize((400, 400), Image.Resampling.LANCZOS))
    f = finding(report, "low_resolution")
    assert f.severity is Severity.PROBLEM
    assert "400" in f.message and "1024" in f.fix
    assert not report.ok


def test_gaussian_blur_is_blur(astronaut: Image.Image, clean: ReferenceReport) -> None:
    blurred = gaussian_filter(np.asarray(astronaut), sigma=(3, 3, 0))
    report = check_reference(Image.fromarray(blurred))
    f = finding(report, "blur")
    assert f.severity is Severity.PROBLEM
    assert report.metrics["sharpness"] < clean.metrics["sharpness"] / 10
    assert f"{report.metrics['sharpness']:.3f}" in (f.detail or "")


def test_mild_blur_is_a_warning_only(hopper: Image.Image) -> None:
    report = check_reference(Image.fromarray(gaussian_filter(np.asarray(hopper), sigma=(1.5, 1.5, 0))))
    assert finding(report, "blur").severity is Severity.WARNING


def test_darkened_is_underexposed(astronaut: Image.Image) -> None:
    report = check_reference(scaled(astronaut, 0.25))
    f = finding(report, "underexposed")
    assert report.faces == 1  # still found: the finding is about the face's light
    assert "overexposed" not in report.codes and "blur" not in report.codes
    assert str(round(report.metrics["subject_luma"])) in f.message


def test_brightened_is_overexposed(astronaut: Image.Image) -> None:
    report = check_reference(scaled(astronaut, 2.2))
    f = finding(report, "overexposed")
    assert report.metrics["subject_clipped"] >= rc.OVER_SUBJECT_CLIPPED
    assert "%" in f.message
    assert "underexposed" not in report.codes


def test_backlit_face_is_backlight(astronaut: Image.Image, clean: ReferenceReport) -> None:
    # Darken an ellipse over the face (×0.3), brighten everything else: light from behind.
    left, top, right, bottom = clean.metrics["face_box"]
    h, w = astronaut.height, astronaut.width
    yy, xx = np.mgrid[0:h, 0:w]
    rr = np.hypot((xx - (left + right) / 2) / ((right - left) * 0.9), (yy - (top + bottom) / 2) / (bottom - top))
    mask = np.clip(1.5 - rr, 0, 1)[..., None]
    arr = np.asarray(astronaut).astype(np.float32)
    backlit = mask * arr * 0.3 + (1 - mask) * np.clip(arr * 1.8 + 60, 0, 255)
    report = check_reference(Image.fromarray(np.clip(backlit, 0, 255).astype(np.uint8)))
    assert report.faces == 1
    f = finding(report, "backlight")
    assert report.metrics["background_luma"] - report.metrics["subject_luma"] >= rc.BACKLIGHT_MARGIN
    assert "underexposed" not in report.codes  # dark face, bright frame: backlight, not a dark photo
    assert str(round(report.metrics["subject_luma"])) in f.message


def test_jpeg_quality_10_is_flagged_and_estimated(astronaut: Image.Image, tmp_path: Path) -> None:
    path = tmp_path / "q10.jpg"
    path.write_bytes(jpeg_bytes(astronaut, 10))
    report = check_reference(path)
    f = finding(report, "jpeg_quality")
    assert abs(report.metrics["jpeg_quality"] - 10) <= 10
    assert f.severity is Severity.PROBLEM and str(report.metrics["jpeg_quality"]) in f.message


def test_jpeg_quality_95_is_not_flagged(astronaut: Image.Image) -> None:
    report = check_reference(jpeg_bytes(astronaut, 95))
    assert report.metrics["jpeg_quality"] >= 90
    assert not report.codes & {"jpeg_quality", "jpeg_artifacts"}


def test_former_jpeg_saved_as_png_shows_block_artifacts(astronaut: Image.Image) -> None:
    once_jpeg = Image.open(io.BytesIO(jpeg_bytes(astronaut, 10))).convert("RGB")
    report = check_reference(png_bytes(once_jpeg))
    assert report.metrics["jpeg_quality"] is None  # a PNG has no tables: blockiness tells
    f = finding(report, "jpeg_artifacts")
    assert report.metrics["blockiness"] >= rc.BLOCKINESS_ERROR and f.severity is Severity.PROBLEM
    clean_png = check_reference(png_bytes(astronaut))
    assert clean_png.metrics["blockiness"] < rc.BLOCKINESS_WARN and "jpeg_artifacts" not in clean_png.codes


def test_low_quality_jpeg_resaved_at_95_shows_block_artifacts(astronaut: Image.Image) -> None:
    resaved = jpeg_bytes(Image.open(io.BytesIO(jpeg_bytes(astronaut, 20))).convert("RGB"), 95)
    report = check_reference(resaved)
    assert report.metrics["jpeg_quality"] >= 90  # the tables look fine ...
    assert "jpeg_quality" not in report.codes
    assert "jpeg_artifacts" in report.codes  # ... but the blocks of the first save are still there


@pytest.mark.parametrize("quality", [5, 10, 25, 50, 75, 90, 95])
def test_estimate_jpeg_quality_matches_libjpeg(astronaut: Image.Image, quality: int) -> None:
    img = Image.open(io.BytesIO(jpeg_bytes(astronaut, quality)))
    assert isinstance(img, JpegImageFile)
    table = img.quantization[0]
    assert abs(estimate_jpeg_quality(table) - quality) <= 2


def test_estimate_jpeg_quality_rejects_bad_tables() -> None:
    with pytest.raises(ValueError):
        estimate_jpeg_quality([1, 2, 3])


def test_product_photo_has_no_face_info(tmp_path: Path) -> None:
    coffee = Image.fromarray(skimage_data.coffee())
    report = check_reference(coffee)
    assert report.faces == 0
    assert finding(report, "no_face").severity is Severity.INFO
    assert not report.codes & (EXPOSURE_AND_BLUR | {"heavy_filter"})
    assert finding(check_reference(coffee, expect_face=True), "no_face").severity is Severity.WARNING


def test_two_people_side_by_side_is_multiple_faces(astronaut: Image.Image, hopper: Image.Image) -> None:
    canvas = Image.new("RGB", (astronaut.width + hopper.width, max(astronaut.height, hopper.height)), "white")
    canvas.paste(astronaut, (0, 0))
    canvas.paste(hopper, (astronaut.width, 0))
    report = check_reference(canvas)
    assert report.faces == 2
    assert "2 faces" in finding(report, "multiple_faces").message


def test_small_face_in_large_canvas_is_face_too_small(astronaut: Image.Image) -> None:
    canvas = Image.new("RGB", (1024, 1024), (128, 128, 128))
    canvas.paste(astronaut, (256, 256))
    report = check_reference(canvas)
    f = finding(report, "face_too_small")
    fraction = report.metrics["face_fraction"]
    assert 0.05 < fraction < rc.FACE_SMALL_WARN
    assert f"{fraction:.1%}" in f.message and f.severity is Severity.WARNING
    assert "low_resolution" not in report.codes


# --- head pose ------------------------------------------------------------------------------------------
def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    y, p, r = np.radians([yaw, pitch, roll])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def synthetic_landmarks(yaw: float, pitch: float, roll: float, size: tuple[int, int] = (800, 600)) -> np.ndarray:
    """68 landmarks whose pose points are the generic face rotated and projected by a pinhole camera."""
    f = float(max(size))
    rotated = GENERIC_FACE_MODEL @ _rotation(yaw, pitch, roll).T
    # Face centred on the optical axis: the estimator measures the pose relative to the line of sight.
    points = rotated - rotated.mean(axis=0) + np.array([0.0, 0.0, 3000.0])
    projected = np.c_[f * points[:, 0] / points[:, 2] + size[0] / 2, f * points[:, 1] / points[:, 2] + size[1] / 2]
    landmarks = np.zeros((68, 2))
    landmarks[list(POSE_LANDMARKS)] = projected
    return landmarks


@pytest.mark.parametrize(("yaw", "pitch", "roll"), [(0, 0, 0), (20, 0, 0), (-45, 0, 0), (0, 30, 0),
                                                    (10, -20, 5), (60, 10, -10)])
def test_head_pose_recovers_known_rotations(yaw: float, pitch: float, roll: float) -> None:
    pose = estimate_head_pose(synthetic_landmarks(yaw, pitch, roll), (800, 600))
    assert pose.yaw == pytest.approx(yaw, abs=1.0)
    assert pose.pitch == pytest.approx(pitch, abs=1.0)
    assert pose.roll == pytest.approx(roll, abs=1.0)


def test_head_pose_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError):
        estimate_head_pose(np.zeros((5, 2)), (100, 100))


def test_mirrored_face_flips_yaw_sign(astronaut: Image.Image, clean: ReferenceReport) -> None:
    mirrored = check_reference(ImageOps.mirror(astronaut))
    assert mirrored.metrics["yaw"] * clean.metrics["yaw"] < 0  # opposite directions
    assert abs(abs(mirrored.metrics["yaw"]) - abs(clean.metrics["yaw"])) < 5


def test_turned_head_is_reported(astronaut: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    # No credible turned-head photo ships offline: feed the checker the pose of a 50° profile-ish head.
    monkeypatch.setattr(rc, "estimate_head_pose", lambda landmarks, size: rc.HeadPose(50.0, 5.0, 0.0))
    report = check_reference(astronaut)
    f = finding(report, "head_turned")
    assert "50°" in f.message and report.metrics["yaw"] == 50.0


# --- filters --------------------------------------------------------------------------------------------
def test_saturation_boost_is_heavy_filter(astronaut: Image.Image) -> None:
    report = check_reference(ImageEnhance.Color(astronaut).enhance(3.0))
    f = finding(report, "heavy_filter")
    assert report.metrics["saturation_full_fraction"] >= rc.SATURATION_FULL_FRACTION
    assert "saturat" in f.message and "saturated" in (f.detail or "")


def test_posterised_is_heavy_filter(astronaut: Image.Image) -> None:
    report = check_reference(ImageOps.posterize(astronaut, 2))  # 4 levels per channel
    f = finding(report, "heavy_filter")
    assert report.metrics["luma_level_occupancy"] < rc.POSTERISED_OCCUPANCY
    assert "posterised" in f.message


# --- awkward inputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"", b"this is not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_unreadable_bytes_raise_invalid_image(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        check_reference(data)


def test_missing_file_and_folder_raise_invalid_image(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="not found"):
        check_reference(tmp_path / "nope.jpg")
    with pytest.raises(InvalidImage, match="folder"):
        check_reference(tmp_path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InvalidImage, match="empty"):
        check_reference(empty)


def test_truncated_jpeg_raises_invalid_image(astronaut: Image.Image) -> None:
    data = jpeg_bytes(astronaut, 90)
    with pytest.raises(InvalidImage):
        check_reference(data[: len(data) // 2])


def test_tiny_image_is_a_clear_error() -> None:
    with pytest.raises(InvalidImage, match="too small"):
        check_reference(png_bytes(Image.new("RGB", (10, 10), "red")))


def test_small_but_valid_image_does_not_crash() -> None:
    report = check_reference(Image.new("RGB", (16, 16), (90, 120, 200)))
    assert finding(report, "low_resolution").severity is Severity.PROBLEM
    assert report.metrics["sharpness"] is None  # flat: nothing to judge, and no false "blur"
    assert "blur" not in report.codes


def test_grayscale_photo(astronaut: Image.Image) -> None:
    report = check_reference(png_bytes(astronaut.convert("L")))
    assert report.metrics["mode"] == "L" and report.faces == 1
    assert finding(report, "grayscale").severity is Severity.INFO
    assert "heavy_filter" not in report.codes


def test_16_bit_png_is_scaled_not_clipped(astronaut: Image.Image) -> None:
    luma16 = (np.asarray(astronaut.convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    img16 = Image.fromarray(luma16)
    assert img16.mode == "I;16"
    report = check_reference(png_bytes(img16))
    assert "converted" in report.codes and report.metrics["mode"] == "I;16"
    assert report.faces == 1
    assert "overexposed" not in report.codes  # a naive convert("RGB") would clip it to white
    eight_bit = check_reference(astronaut.convert("L"))
    assert report.metrics["luma_mean"] == pytest.approx(eight_bit.metrics["luma_mean"], abs=1.0)


def test_float_image_in_0_1_is_scaled(astronaut: Image.Image) -> None:
    luma = np.asarray(astronaut.convert("L")).astype(np.float32) / 255.0
    report = check_reference(Image.fromarray(luma, "F"))
    assert report.metrics["mode"] == "F" and report.faces == 1
    assert "underexposed" not in report.codes


def test_cmyk_jpeg_is_converted(astronaut: Image.Image) -> None:
    buf = io.BytesIO()
    astronaut.convert("CMYK").save(buf, "JPEG", quality=92)
    report = check_reference(buf.getvalue())
    assert report.metrics["mode"] == "CMYK" and report.faces == 1
    assert "CMYK" in finding(report, "converted").message
    assert not report.codes & EXPOSURE_AND_BLUR


def test_transparent_png_is_flattened(astronaut: Image.Image) -> None:
    rgba = astronaut.convert("RGBA")
    rgba.putalpha(200)
    report = check_reference(png_bytes(rgba))
    assert "white" in finding(report, "converted").message


def test_without_dlib_faces_are_skipped_not_fatal(astronaut: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rc, "_face_models", lambda: None)
    report = check_reference(astronaut)
    assert report.faces == -1
    assert finding(report, "face_check_unavailable").severity is Severity.INFO
    assert report.metrics["sharpness_region"] == "image"


def test_model_files_found_without_importing_the_package() -> None:
    import sys

    imported_before = "face_recognition_models" in sys.modules
    path = rc._model_file("shape_predictor_68_face_landmarks.dat")
    assert path is not None and path.is_file()
    # Importing it would need pkg_resources, which new setuptools no longer ships.
    assert imported_before or "face_recognition_models" not in sys.modules


def test_every_finding_has_a_fix_and_a_number(astronaut: Image.Image) -> None:
    degraded = scaled(astronaut.resize((300, 300), Image.Resampling.BOX), 0.25)
    report = check_reference(jpeg_bytes(degraded, 10))
    assert {"low_resolution", "underexposed", "jpeg_quality"} <= report.codes
    for f in report.findings:
        assert f.fix and f.fix[0].isupper()
        if f.severity is not Severity.INFO:
            assert any(ch.isdigit() for ch in f.message), f.message


def test_one_megapixel_face_photo_is_fast(astronaut: Image.Image) -> None:
    big = jpeg_bytes(astronaut.resize((1024, 1024), Image.Resampling.LANCZOS), 92)
    check_reference(big)  # warm: models load once per process
    started = time.perf_counter()
    check_reference(big)
    # Target 0.3 s (measured ~0.2 s on 2 cores); generous here so a busy CI machine does not flake.
    assert time.perf_counter() - started < 1.5


def test_concurrent_checks_do_not_crash_the_process() -> None:
    """dlib's detector is not thread-safe: the service checks uploads while its worker checks references.
    Run in a child process, so a crash fails this test instead of killing the test run."""
    import subprocess
    import sys

    script = (
        "import threading, numpy as np\n"
        "from PIL import Image\n"
        "from kontext_studio.analysis.reference_check import check_reference\n"
        "rng = np.random.default_rng(0)\n"
        "imgs = [Image.fromarray(rng.integers(0, 255, (700, 900, 3), dtype=np.uint8)) for _ in range(4)]\n"
        "def run(i):\n"
        "    for _ in range(5):\n"
        "        check_reference(imgs[i], expect_face=True)\n"
        "ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print('done')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-2000:]
