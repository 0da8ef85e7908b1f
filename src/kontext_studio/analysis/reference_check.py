"""Reference checker: photo advice turned into measurements, each problem reported with a fix.

``check_reference`` opens a reference the way the engine does (``core.images.load_reference``), measures
it and returns a :class:`ReferenceReport`: the findings (what is wrong, how bad, what to do) and every
measured value, so a face (CLI, HTTP, studio) can show both.

What is measured, and the thresholds (module constants below, calibrated on real photos — the scikit-image
astronaut, matplotlib's Grace Hopper portrait, coffee, rocket, chelsea — and degraded copies of them):

* ``low_resolution``: short side < 1024 px (warning) or < 512 px (error). The model works at ~1 MP.
* ``blur``: normalised variance of the Laplacian, ``var(Laplacian(g)) / var(g)`` on the luma ``g``, which
  cancels contrast and brightness. Scale is normalised too: on the face crop resized down to a 128 px
  wide face, otherwise the 90th percentile over 4x4 tiles of the image resized down to 512 px on the
  short side (robust to bokeh: one sharp tile is enough). Never upscaled (that would add blur).
  Face (astronaut, Hopper): sharp 0.40 / 0.79, Gaussian σ=0.5 0.19 / 0.52, σ=1 0.040 / 0.19, σ=1.5
  0.016 / 0.084, σ=3 0.004 / 0.017 → warning < 0.15, error < 0.035. Whole image (coffee, rocket, chelsea):
  sharp 2.0–5.1, σ=0.5 0.8–2.3, σ=1 0.08–0.19, σ=1.5 0.026–0.055, σ=3 0.008–0.026 → warning < 0.25,
  error < 0.04.
* ``underexposed`` / ``overexposed`` / ``backlight``: luma of the subject (the face box, or the central
  half of the picture when there is no face, so a white studio background is not "overexposed").
  Under: subject < 60 with no highlight above 180 (99.5th percentile); error below 25. The photos' subjects
  measure 71–170; darkened ×0.25, 17–42 with highlights ≤ 63. Over: ≥ 10 % of the subject clipped
  (≥ 251) or subject ≥ 215; error at ≥ 30 % clipped (photos ≤ 0.8 %; brightened ×2.2, 14–42 %, except
  the dark rocket scene at 3 %: brighter, not blown).
  Backlight: background ≥ 50 levels brighter than a face darker than 100 (astronaut: face 170 on 117;
  relit from behind: face 54 on 193).
* ``jpeg_quality``: libjpeg quality estimated from the luminance quantisation table (nearest standard
  table scaled by the IJG formula; exact on Pillow's JPEGs from quality 5 to 95); warning < 50,
  error < 25. ``jpeg_artifacts``: 8x8 blockiness (mean luma step at the strongest of the 8 pixel phases
  over the other phases, so any grid offset works). Photos and quality 90–95 measure 1.0–1.2, quality 50
  1.33–1.52, quality 30 1.52–1.77, quality 10 2.1–3.2 → warning ≥ 1.45, error ≥ 2.0. Used when there
  are no tables (a PNG that was a JPEG once), or when the tables say quality ≥ 70 (re-saved JPEG: a
  quality-30 file re-saved at 95 still measures 1.5–1.8).
* ``no_face`` (info; warning with ``expect_face=True``), ``multiple_faces`` (warning), ``face_too_small``
  (face box < 10 % of the short side: warning; < 5 %: error) from dlib's HOG detector. The astronaut's
  face box is 17 % of the short side, Hopper's 42 %.
* ``head_turned``: yaw/pitch from the 68-point landmarks and ``cv2.solvePnP`` on a generic 3-D face,
  relative to the line of sight to the face; warning beyond 35° yaw or 25° pitch. The frontal photos
  measure yaw −4° / 2° and pitch 11° / 2° (astronaut / Hopper).
* ``heavy_filter``: over-saturation (≥ 20 % of lit pixels fully saturated: 0–1 % in the photos, 25–88 %
  after a ×3 saturation boost) or posterisation (< 50 % of the grey levels between the 0.5th and 99.5th
  percentiles used: 100 % in the photos, 13–19 % posterised to 4 levels per channel).
* ``grayscale`` (info), ``converted`` (info: 16-bit, CMYK, transparency, EXIF rotation),
  ``face_check_unavailable`` (info: dlib or its models are not installed).

Speed (2-core CPU, 1 MP): ~0.2 s when the face is found by the first detector pass, which runs on a 512 px
copy (faces >= ~14 % of the short side). A second, finer pass (1024 px, or 2x upsampled for small images)
runs only when the first finds no face — then ~0.4–0.5 s; ``find_small_faces=False`` skips it. A second,
smaller face next to a large one is therefore only counted when it is >= ~14 % of the short side.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from kontext_studio.analysis.common import DETECTOR_LOCK, SEVERITY_RANK, Finding, Severity, face_detector
from kontext_studio.core.errors import InvalidImage
from kontext_studio.core.images import MAX_FILE_BYTES, MAX_PIXELS, MAX_SIDE, MIN_SIDE, load_reference
from kontext_studio.core.types import Reference

Source = str | Path | bytes | Image.Image

# --- thresholds (see the module docstring for the measurements behind them) -------------------------
RES_WARN_SHORT_SIDE = 1024
RES_ERROR_SHORT_SIDE = 512

BLUR_FACE_WIDTH = 128  # face crops are measured at this width (downscaled only)
BLUR_FACE_WARN = 0.15
BLUR_FACE_ERROR = 0.035
BLUR_IMAGE_SHORT_SIDE = DETECT_SHORT_SIDE = 512  # the whole-image blur measure uses the detector's copy
BLUR_IMAGE_WARN = 0.25
BLUR_IMAGE_ERROR = 0.04

UNDER_SUBJECT_LUMA = 60.0
UNDER_ERROR_SUBJECT_LUMA = 25.0
UNDER_MAX_HIGHLIGHT = 180.0  # a photo with real highlights is not underexposed, whatever its mean
OVER_SUBJECT_CLIPPED = 0.10
OVER_ERROR_SUBJECT_CLIPPED = 0.30
OVER_SUBJECT_LUMA = 215.0
CLIP_HIGH = 251
CLIP_LOW = 4
BACKLIGHT_MARGIN = 50.0
BACKLIGHT_MAX_FACE_LUMA = 100.0

JPEG_QUALITY_WARN = 50
JPEG_QUALITY_ERROR = 25
BLOCKINESS_WARN = 1.45
BLOCKINESS_ERROR = 2.0
RESAVED_MIN_QUALITY = 70  # below this the tables already explain the blocks (and are reported by quality)

FACE_SMALL_WARN = 0.10
FACE_SMALL_ERROR = 0.05
FACE_MIN_SCORE = 0.2  # weaker HOG hits were false positives on the test photos (0.04–0.13)
EXTRA_FACE_MIN_SCORE = 0.5  # a second face must be convincing before we call the picture a group
DETECT_FINE_SHORT_SIDE = 1024

YAW_WARN_DEG = 35.0
PITCH_WARN_DEG = 25.0

SATURATION_FULL_FRACTION = 0.20
POSTERISED_OCCUPANCY = 0.5
GRAYSCALE_MEAN_CHROMA = 2.0  # mean max-min channel spread, in levels

ANALYSIS_CROP = 1024  # native-resolution centre crop for blockiness and histogram gaps

_HIGH_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}

# IJG (libjpeg) standard luminance quantisation table, natural (row-major) order, quality 50.
_STD_LUMA_TABLE = np.array(
    [
        16, 11, 10, 16, 24, 40, 51, 61,
        12, 12, 14, 19, 26, 58, 60, 55,
        14, 13, 16, 24, 40, 57, 69, 56,
        14, 17, 22, 29, 51, 87, 80, 62,
        18, 22, 37, 56, 68, 109, 103, 77,
        24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101,
        72, 92, 95, 98, 112, 100, 103, 99,
    ],
    dtype=np.float64,
)  # fmt: skip

# Generic 3-D face (mm-like units) in camera axes: x right, y down, z away from the camera, nose tip at
# the origin. Indices are dlib's 68-point scheme: nose tip, chin, outer eye corners, mouth corners.
POSE_LANDMARKS = (30, 8, 36, 45, 48, 54)
GENERIC_FACE_MODEL = np.array(
    [
        (0.0, 0.0, 0.0),
        (0.0, 330.0, 65.0),
        (-225.0, -170.0, 135.0),
        (225.0, -170.0, 135.0),
        (-150.0, 150.0, 125.0),
        (150.0, 150.0, 125.0),
    ]
)


# --- report ---------------------------------------------------------------------------------------------
@dataclass
class ReferenceReport:
    """What ``check_reference`` found.

    Attributes:
        findings: problems, errors first, each with the measured value and a fix.
        metrics: every measured value (JSON-ready; ``None`` where a measure did not apply).
        size: (width, height) of the upright image.
        faces: number of faces found (``-1`` when face detection is unavailable).
    """

    findings: list[Finding]
    metrics: dict[str, Any]
    size: tuple[int, int]
    faces: int

    @property
    def ok(self) -> bool:
        """True when nothing is at problem level."""
        return not any(f.severity is Severity.PROBLEM for f in self.findings)

    @property
    def codes(self) -> set[str]:
        """The finding codes, for quick membership tests."""
        return {f.code for f in self.findings}

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary: size, faces, ok, findings, metrics."""
        return {
            "size": list(self.size),
            "faces": self.faces,
            "ok": self.ok,
            "findings": [f.as_dict() for f in self.findings],
            "metrics": dict(self.metrics),
        }


class HeadPose(NamedTuple):
    """Head rotation in degrees relative to the line of sight: yaw (left/right), pitch (up/down), roll."""

    yaw: float
    pitch: float
    roll: float


@dataclass
class _Face:
    box: tuple[float, float, float, float]  # left, top, right, bottom in upright-image pixels
    score: float
    landmarks: np.ndarray | None = None  # (68, 2) in upright-image pixels

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def scaled_box(self, scale: float) -> tuple[int, int, int, int]:
        """The box in the pixels of a copy resized by ``scale``, rounded to integers."""
        left, top, right, bottom = (round(v * scale) for v in self.box)
        return left, top, right, bottom


@dataclass
class _Decoded:
    image: Image.Image
    fmt: str | None
    mode: str
    quant: dict[int, Any] | None
    notes: list[str] = field(default_factory=list)
    generated: bool = False  # carries a Kontext Studio recipe: an earlier result used as a reference


# --- public entry point ---------------------------------------------------------------------------------
def check_reference(source: Source, *, expect_face: bool = False, find_small_faces: bool = True) -> ReferenceReport:
    """Measure one reference image and say what will hurt the edit, and how to fix it.

    Args:
        source: a path, the file's bytes, or a PIL image.
        expect_face: the picture is meant to show a person; a missing face becomes a warning
            instead of an info note (products and scenes need no face).
        find_small_faces: when the first detector pass finds no face, run a finer one that finds faces
            down to ~7 % of the short side. It is the costliest step (~0.25 s per MP); turn it off for
            batches of product shots.

    Returns:
        The report: findings (errors first) with measured values and fixes, plus all metrics.

    Raises:
        InvalidImage: the input is not a readable image (missing, empty, not an image, damaged,
            too large, or under 16 px per side).
    """
    started = time.perf_counter()
    decoded = _decode(source)
    rgb = decoded.image
    w, h = rgb.size
    short = min(w, h)
    findings: list[Finding] = []
    metrics: dict[str, Any] = {
        "width": w,
        "height": h,
        "short_side": short,
        "megapixels": round(w * h / 1e6, 3),
        "format": decoded.fmt,
        "mode": decoded.mode,
    }
    if decoded.notes:
        findings.append(Finding("converted", Severity.INFO, "The image was converted: " + "; ".join(decoded.notes)
                                + ".", "Nothing to do; the engine makes the same conversion."))

    work, work_scale = _downscale(rgb, DETECT_SHORT_SIDE)
    work_rgb = np.asarray(work)
    work_luma = np.asarray(work.convert("L"))
    native_luma = np.asarray(_centre_crop(rgb, ANALYSIS_CROP).convert("L"))

    faces = _detect_faces(rgb, work_luma, work_scale, fine_pass=find_small_faces)
    face = max(faces, key=lambda f: f.width) if faces else None
    person = face is not None or expect_face  # the advice fits what the picture shows
    metrics["made_by_kontext"] = decoded.generated
    if decoded.generated:
        # An earlier result fed back in: its size and sharpness are what that edit produced (the original
        # photo was checked then); judging them as a camera photo would only repeat those notes.
        findings.append(Finding("earlier_result", Severity.INFO,
                                "This picture is an earlier Kontext Studio result; its size, sharpness and "
                                "compression were judged on the original photo.",
                                "Nothing to do; editing a result again drifts a little further each time, so "
                                "start again from the original when it drifts too far."))
    else:
        findings += _check_resolution(w, h, person)
    smallest = 0.07 if find_small_faces else 0.14  # what the detector passes can see (80 px HOG window)
    findings += _check_faces(faces, short, expect_face, smallest, metrics)
    if face is not None and face.landmarks is not None:
        findings += _check_pose(face, (w, h), metrics)
    else:
        metrics.update(yaw=None, pitch=None, roll=None)

    blur = _check_blur(rgb, work_luma, face, metrics)
    findings += [] if decoded.generated else blur
    findings += _check_exposure(work_luma, face, work_scale, metrics)
    findings += _check_colour(work_rgb, native_luma, metrics, person)
    compression = _check_compression(decoded.quant, native_luma, metrics)
    findings += [] if decoded.generated else compression

    findings.sort(key=lambda f: SEVERITY_RANK[f.severity])
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    return ReferenceReport(findings=findings, metrics=metrics, size=(w, h),
                           faces=-1 if faces is None else len(faces))


# --- decoding -------------------------------------------------------------------------------------------
def _peek(source: Source) -> Image.Image | None:
    """Open the source lazily (header only) to read its format and JPEG tables; None if unreadable."""
    if isinstance(source, Image.Image):
        return source
    try:
        if isinstance(source, bytes):
            data = source
        else:
            path = Path(source).expanduser()
            if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
                return None
            data = path.read_bytes()
        return Image.open(io.BytesIO(data)) if data else None
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError):
        return None


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float greyscale to 8-bit L, by value range (Pillow's convert would clip at 255)."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        top = 65535.0
    else:
        finite = arr[np.isfinite(arr)]
        peak = float(finite.max()) if finite.size else 0.0
        # Float images are usually 0..1; integer ones 8- or 16-bit values in a 32-bit container.
        limits = (1.0, 255.0, 65535.0) if img.mode == "F" else (255.0, 65535.0)
        top = next((lim for lim in limits if peak <= lim), peak)
        arr = np.nan_to_num(arr, nan=0.0, posinf=top, neginf=0.0)
    out = np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out, "L")


def _decode(source: Source) -> _Decoded:
    """Open, validate and normalise the source to upright RGB (through the engine's own loader)."""
    raw = _peek(source)
    if raw is None:
        # Let the engine's loader produce its precise message (missing, folder, empty, not an image).
        load_reference(Reference(source))
        raise InvalidImage("not a readable image; use PNG, JPEG or WebP", field="references")
    fmt, mode = raw.format, raw.mode
    quant = getattr(raw, "quantization", None) if fmt == "JPEG" else None
    notes: list[str] = []
    target: Source = source
    w, h = raw.size
    if mode in _HIGH_BIT_MODES and min(w, h) >= MIN_SIDE and max(w, h) <= MAX_SIDE and w * h <= MAX_PIXELS:
        try:
            target = _to_8bit(raw)
        except (OSError, ValueError) as exc:
            raise InvalidImage(f"the image could not be decoded ({exc})", field="references") from None
        notes.append(f"{mode} high bit depth scaled to 8-bit greyscale")
    elif mode == "CMYK":
        notes.append("CMYK colours converted to RGB (print colours may shift slightly)")
    loaded = load_reference(Reference(target))
    notes += [w.rsplit(": ", 1)[-1] for w in loaded.warnings]  # drop the "reference 1 (...)" label
    return _Decoded(image=loaded.image, fmt=fmt, mode=mode, quant=quant, notes=notes,
                    generated=_made_here(raw, source))


def _made_here(raw: Image.Image, source: Source) -> bool:
    """Whether the picture carries a Kontext Studio recipe (an output of this product)."""
    from kontext_studio.core.recipe import RECIPE_KEY, file_xmp

    blobs = [raw.info.get(k) for k in ("xmp", "XML:com.adobe.xmp")]
    if RECIPE_KEY in raw.info:
        return True
    if isinstance(source, str | Path):
        with contextlib.suppress(OSError):
            blobs.append(file_xmp(Path(source).expanduser()))
    marker = b"kontext:recipe"
    return any(marker in (b if isinstance(b, bytes) else str(b).encode()) for b in blobs if b)


def _downscale(img: Image.Image, short_side: int) -> tuple[Image.Image, float]:
    """Area-average down to ``short_side`` (never up); returns the image and its scale factor."""
    w, h = img.size
    scale = short_side / min(w, h)
    if scale >= 1:
        return img, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # BOX is an area average: it anti-aliases without adding blur of its own.
    return img.resize(size, Image.Resampling.BOX), size[0] / w


def _centre_crop(img: Image.Image, side: int) -> Image.Image:
    w, h = img.size
    cw, ch = min(w, side), min(h, side)
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


# --- measures (public: each usable and testable alone) --------------------------------------------------
def sharpness(gray: np.ndarray) -> float | None:
    """Normalised variance of the Laplacian: ``var(∇²g) / var(g)`` (contrast- and brightness-free).

    Args:
        gray: 2-D luma array (any numeric dtype).

    Returns:
        The ratio (higher is sharper), or None for regions too small or too flat to judge.
    """
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2 or min(g.shape) < 8:
        return None
    var = float(g.var())
    if var < 4.0:  # flat (std < 2 levels): no edges to judge
        return None
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var()) / var


def blockiness(gray: np.ndarray) -> float | None:
    """JPEG 8x8 block strength: mean luma step across the strongest 8-px phase over the other phases.

    Taking the strongest phase makes it independent of where a crop put the block grid. Natural and
    high-quality images give about 1.0–1.2; heavy compression 1.5–3.

    Args:
        gray: 2-D luma array at native resolution (a resize destroys the grid).

    Returns:
        The ratio averaged over both axes, or None when the image is too small or too flat.
    """
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2 or min(g.shape) < 32:
        return None
    ratios = []
    for axis in (0, 1):
        d = np.abs(np.diff(g, axis=axis))
        per_line = d.mean(axis=1 - axis)  # mean step at each boundary position along the axis
        n = per_line.size // 8 * 8
        phases = per_line[:n].reshape(-1, 8).mean(axis=0)
        best = int(np.argmax(phases))
        rest = float(np.delete(phases, best).mean())
        if rest < 0.25:  # almost no texture: the ratio would be noise
            return None
        ratios.append(float(phases[best]) / rest)
    return float(np.mean(ratios))


def estimate_jpeg_quality(table: Any) -> int:
    """Estimate the libjpeg quality factor (1–100) that produced a luminance quantisation table.

    Each candidate quality scales the IJG standard table by libjpeg's formula; the nearest in mean
    absolute log ratio wins, so non-standard (camera) tables still get a sensible estimate.

    Args:
        table: the 64 luminance divisors in natural order (``PIL`` ``img.quantization[0]``).

    Returns:
        The estimated quality.

    Raises:
        ValueError: the table does not have 64 positive entries.
    """
    t = np.asarray(list(table), dtype=np.float64)
    if t.size != 64 or np.any(t <= 0):
        raise ValueError("a JPEG quantisation table has 64 positive entries")
    best_q, best_err = 50, math.inf
    for q in range(1, 101):
        scale = 5000.0 / q if q < 50 else 200.0 - 2.0 * q
        std = np.clip(np.floor((_STD_LUMA_TABLE * scale + 50.0) / 100.0), 1, 255)
        err = float(np.mean(np.abs(np.log(t) - np.log(std))))
        if err < best_err - 1e-12:
            best_q, best_err = q, err
    return best_q


def estimate_head_pose(landmarks: np.ndarray, image_size: tuple[int, int]) -> HeadPose:
    """Yaw, pitch and roll of a head from dlib's 68 landmarks, with ``cv2.solvePnP`` on a generic face.

    The principal point is put at the face itself, so the angles are relative to the line of sight to
    the face: a frontal face near the edge of a wide shot is not reported as turned.

    Args:
        landmarks: (68, 2) pixel coordinates in dlib's order.
        image_size: (width, height) of the image; the focal length is taken as its longer side.

    Returns:
        The pose in degrees (positive yaw: the face turned towards image right; positive pitch: chin down
        towards the camera, i.e. looking down).

    Raises:
        ValueError: wrong landmark shape, or the pose could not be solved.
    """
    import cv2

    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {pts.shape}")
    image_points = pts[list(POSE_LANDMARKS)]
    f = float(max(image_size))
    cx, cy = image_points.mean(axis=0)
    camera = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    ok, rvec, _ = cv2.solvePnP(GENERIC_FACE_MODEL, image_points, camera, None, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        raise ValueError("head pose could not be solved from these landmarks")
    rot, _ = cv2.Rodrigues(rvec)
    # R = Rz(roll) · Ry(yaw) · Rx(pitch), model → camera.
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, -rot[2, 0]))))
    pitch = math.degrees(math.atan2(rot[2, 1], rot[2, 2]))
    roll = math.degrees(math.atan2(rot[1, 0], rot[0, 0]))
    return HeadPose(yaw=yaw, pitch=pitch, roll=roll)


# --- faces ----------------------------------------------------------------------------------------------
def _model_file(name: str) -> Path | None:
    """A file of face_recognition_models, found without importing it (it needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "models" / name
        if candidate.is_file():
            return candidate
    return None


_model_lock = threading.Lock()


@lru_cache(maxsize=1)
def _load_predictor() -> Any:
    import dlib

    path = _model_file("shape_predictor_68_face_landmarks.dat")
    return dlib.shape_predictor(str(path)) if path is not None else None  # ~1 s and 100 MB: loaded once


# dlib's shape predictor is not safe for concurrent calls (two at once can abort the process): the service
# checks uploads while its worker checks references, so every call goes through this lock. The detector is
# shared with the identity score and has its own lock (analysis.common.DETECTOR_LOCK).
_run_lock = threading.Lock()


def _face_models() -> Any | None:
    """dlib's HOG detector; None without dlib. The 68-point predictor loads only once a face is found."""
    try:
        return face_detector()
    except ImportError:
        return None


def _landmark_predictor() -> Any | None:
    with _model_lock:  # concurrent first calls wait for one load instead of each loading 100 MB
        return _load_predictor()


def _detect_faces(rgb: Image.Image, work_luma: np.ndarray, work_scale: float, *,
                  fine_pass: bool = True) -> list[_Face] | None:
    """Faces in upright-image pixels, largest landmarks included; None when dlib is unavailable."""
    detector = _face_models()
    if detector is None:
        return None
    import dlib

    # Pass 1 on the 512 px copy (HOG cost grows with pixels): finds faces >= ~14 % of the short side.
    gray = work_luma
    scale, upsample = work_scale, 0
    with DETECTOR_LOCK:
        rects, scores, _ = detector.run(gray, 0, 0.0)
    if fine_pass and not any(s >= FACE_MIN_SCORE for s in scores):
        # Pass 2, only when needed: finer, so faces down to ~7 % of the short side are found.
        short = min(rgb.size)
        if short > DETECT_SHORT_SIDE:
            fine, scale = _downscale(rgb, DETECT_FINE_SHORT_SIDE)
            gray = np.asarray(fine.convert("L"))
        else:
            upsample = 1
        with DETECTOR_LOCK:
            rects, scores, _ = detector.run(gray, upsample, 0.0)
    candidates = sorted(zip(scores, rects, strict=True), key=lambda sr: -sr[0])
    faces: list[_Face] = []
    w, h = rgb.size
    for score, rect in candidates:
        if score < (FACE_MIN_SCORE if not faces else EXTRA_FACE_MIN_SCORE):
            continue
        box = (max(0.0, rect.left() / scale), max(0.0, rect.top() / scale),
               min(float(w), (rect.right() + 1) / scale), min(float(h), (rect.bottom() + 1) / scale))
        faces.append(_Face(box=box, score=float(score)))
    predictor = _landmark_predictor() if faces else None
    if predictor is not None:
        main = max(faces, key=lambda f: f.width)
        left, top, right, bottom = main.scaled_box(scale)
        with _run_lock:
            shape = predictor(gray, dlib.rectangle(left, top, right - 1, bottom - 1))
        main.landmarks = np.array([(p.x / scale, p.y / scale) for p in shape.parts()], dtype=np.float64)
    return faces


def _check_faces(faces: list[_Face] | None, short: int, expect_face: bool, smallest: float,
                 metrics: dict[str, Any]) -> list[Finding]:
    metrics.update(faces=None if faces is None else len(faces), face_fraction=None, face_box=None,
                   face_score=None)
    if faces is None:
        return [Finding("face_check_unavailable", Severity.INFO,
                        "Face checks were skipped: dlib or face_recognition_models is not installed.",
                        "Install the analysis extra (pip install 'kontext-studio[analysis]') to check faces.")]
    if not faces:
        severity = Severity.WARNING if expect_face else Severity.INFO
        if expect_face:
            return [Finding("no_face", severity,
                            "No face was found, so the person's likeness cannot be checked or kept reliably.",
                            "Use a photo where the face is clearly visible, facing the camera, and fills a good "
                            "part of the frame.",
                            detail=f"faces turned to profile or smaller than about {smallest:.0%} of the short "
                                   "side are not detected")]
        return [Finding("no_face", severity,
                        "No face found: treated as a product or scene photo, kept by its shapes and details.",
                        "Nothing to do for a product or a scene.",
                        detail=f"faces turned to profile or smaller than about {smallest:.0%} of the short side "
                               "are not detected")]
    out: list[Finding] = []
    face = max(faces, key=lambda f: f.width)
    fraction = max(face.width, face.height) / short
    metrics.update(face_fraction=round(fraction, 4), face_box=[round(v, 1) for v in face.box],
                   face_score=round(face.score, 3))
    if len(faces) > 1:
        sizes = ", ".join(f"{max(f.width, f.height) / short:.0%}" for f in faces)
        out.append(Finding("multiple_faces", Severity.WARNING,
                           f"{len(faces)} faces found (sizes {sizes} of the short side).",
                           "Crop to the one person to keep, or name them in the instruction (\"the woman on "
                           "the left\"); with several faces the model may mix identities."))
    if fraction < FACE_SMALL_WARN:
        severity = Severity.PROBLEM if fraction < FACE_SMALL_ERROR else Severity.WARNING
        px = round(max(face.width, face.height))
        out.append(Finding("face_too_small", severity,
                           f"The face is {fraction:.1%} of the short side ({px} px); at the model's ~1 MP it "
                           "keeps too few pixels for a faithful likeness.",
                           f"Crop closer so the face is at least {FACE_SMALL_WARN:.0%} of the short side "
                           "(head and shoulders work best)."))
    return out


def _check_pose(face: _Face, size: tuple[int, int], metrics: dict[str, Any]) -> list[Finding]:
    if face.landmarks is None:
        return []
    try:
        pose = estimate_head_pose(face.landmarks, size)
    except (ImportError, ValueError):
        metrics.update(yaw=None, pitch=None, roll=None)
        return []
    metrics.update(yaw=round(pose.yaw, 1), pitch=round(pose.pitch, 1), roll=round(pose.roll, 1))
    if abs(pose.yaw) > YAW_WARN_DEG or abs(pose.pitch) > PITCH_WARN_DEG:
        return [Finding("head_turned", Severity.WARNING,
                        f"The head is turned about {abs(pose.yaw):.0f}° sideways (yaw) and {abs(pose.pitch):.0f}° "
                        f"up/down (pitch); limits {YAW_WARN_DEG:.0f}° and {PITCH_WARN_DEG:.0f}°.",
                        "Use a photo facing the camera (a slight three-quarter view is fine): the model has to "
                        "invent the hidden half of a turned face, and the likeness suffers.")]
    return []


# --- image quality checks -------------------------------------------------------------------------------
def _check_resolution(w: int, h: int, person: bool) -> list[Finding]:
    short = min(w, h)
    if short >= RES_WARN_SHORT_SIDE:
        return []
    severity = Severity.PROBLEM if short < RES_ERROR_SHORT_SIDE else Severity.WARNING
    lost = "facial detail" if person else "fine detail such as texture, edges and printed text"
    return [Finding("low_resolution", severity,
                    f"The photo is small ({w}x{h}): {lost} will be soft in the result.",
                    f"Use a larger original, at least {RES_WARN_SHORT_SIDE} px on the short side (the model works "
                    "at about 1 megapixel).",
                    detail=f"short side {short} px; a warning below {RES_WARN_SHORT_SIDE} px, a problem below "
                           f"{RES_ERROR_SHORT_SIDE} px")]


def _check_blur(rgb: Image.Image, work_luma: np.ndarray, face: _Face | None,
                metrics: dict[str, Any]) -> list[Finding]:
    if face is not None:
        crop = rgb.crop(face.scaled_box(1.0)).convert("L")
        if crop.width > BLUR_FACE_WIDTH:
            crop = crop.resize((BLUR_FACE_WIDTH, max(1, round(crop.height * BLUR_FACE_WIDTH / crop.width))),
                               Image.Resampling.BOX)
        value, region, warn, error = sharpness(np.asarray(crop)), "face", BLUR_FACE_WARN, BLUR_FACE_ERROR
    else:
        value, region, warn, error = _tile_sharpness(work_luma), "image", BLUR_IMAGE_WARN, BLUR_IMAGE_ERROR
    metrics.update(sharpness=None if value is None else round(value, 4), sharpness_region=region)
    if value is None or value >= warn:
        return []
    severity = Severity.PROBLEM if value < error else Severity.WARNING
    where, sharp = ("The face", 0.4) if region == "face" else ("The picture", 0.6)
    how = "very blurry" if severity is Severity.PROBLEM else "soft"
    fix = ("Use a sharper photo: in focus on the eyes, no motion blur, not upscaled from a small image and not "
           "smoothed by a beauty filter.") if region == "face" else (
           "Use a sharper photo: in focus on the subject, no motion blur, not upscaled from a small image.")
    return [Finding("blur", severity, f"{where} looks {how}: the result will copy the missing detail.", fix,
                    detail=f"sharpness {value:.3f} (variance of the Laplacian over the variance of the brightness, "
                           f"measured on the {region}); below {warn} is soft, below {error} very blurry, sharp "
                           f"photos measure {sharp} or more")]


def _tile_sharpness(work_luma: np.ndarray) -> float | None:
    """90th percentile of tile sharpness over a 4x4 grid: one sharp subject in bokeh is enough."""
    g = work_luma  # already at most BLUR_IMAGE_SHORT_SIDE on the short side
    h, w = g.shape
    values = []
    for i in range(4):
        for j in range(4):
            v = sharpness(g[i * h // 4:(i + 1) * h // 4, j * w // 4:(j + 1) * w // 4])
            if v is not None:
                values.append(v)
    if not values:
        return sharpness(g)
    return float(np.percentile(values, 90))


def _percentile(hist: np.ndarray, q: float) -> float:
    cdf = np.cumsum(hist)
    return float(np.searchsorted(cdf, q / 100.0 * cdf[-1]))


def _check_exposure(luma: np.ndarray, face: _Face | None, scale: float,
                    metrics: dict[str, Any]) -> list[Finding]:
    hist = np.bincount(luma.ravel(), minlength=256)
    total = luma.size
    p99 = _percentile(hist, 99.5)
    h, w = luma.shape
    background: np.ndarray | None = None
    if face is not None:
        left, t, r, b = face.scaled_box(scale)
        subject = luma[t:b, left:r]
        # Background: everything outside the face widened by half a face, down to the bottom (the body).
        mask = np.ones_like(luma, dtype=bool)
        fw, fh = r - left, b - t
        mask[max(0, t - fh // 2):, max(0, left - fw // 2):min(w, r + fw // 2)] = False
        if mask.mean() >= 0.05:
            background = luma[mask]
    else:
        subject = luma[h // 4:h - h // 4, w // 4:w - w // 4]
    if subject.size == 0:
        subject = luma
    subject_luma = float(subject.mean())
    subject_clipped = float((subject >= CLIP_HIGH).mean())
    background_luma = None if background is None else float(background.mean())
    metrics.update(
        luma_mean=round(float(luma.mean()), 2),
        luma_shadow=_percentile(hist, 0.5),  # 0.5th percentile
        luma_median=_percentile(hist, 50),
        luma_highlight=p99,  # 99.5th percentile
        clipped_shadows=round(float(hist[:CLIP_LOW + 1].sum()) / total, 4),
        clipped_highlights=round(float(hist[CLIP_HIGH:].sum()) / total, 4),
        subject_luma=round(subject_luma, 2),
        subject_clipped=round(subject_clipped, 4),
        background_luma=None if background_luma is None else round(background_luma, 2),
    )
    who = "face" if face is not None else "centre of the picture"
    out: list[Finding] = []
    if subject_luma < UNDER_SUBJECT_LUMA and p99 < UNDER_MAX_HIGHLIGHT:
        severity = Severity.PROBLEM if subject_luma < UNDER_ERROR_SUBJECT_LUMA else Severity.WARNING
        out.append(Finding("underexposed", severity,
                           f"The picture is too dark: the {who} averages {subject_luma:.0f}/255 and the brightest "
                           f"highlights reach only {p99:.0f}/255.",
                           "Use a brighter photo (daylight, facing a window), or brighten it before uploading; "
                           "detail lost in the shadows cannot be recovered by the model."))
    if subject_clipped >= OVER_SUBJECT_CLIPPED or subject_luma >= OVER_SUBJECT_LUMA:
        severity = Severity.PROBLEM if subject_clipped >= OVER_ERROR_SUBJECT_CLIPPED else Severity.WARNING
        out.append(Finding("overexposed", severity,
                           f"The {who} is blown out: {subject_clipped:.0%} of it is clipped to white (average "
                           f"{subject_luma:.0f}/255).",
                           "Use a photo without harsh flash or direct sun on the subject; clipped areas hold no "
                           "detail for the model to keep."))
    if (face is not None and background_luma is not None and subject_luma < BACKLIGHT_MAX_FACE_LUMA
            and background_luma - subject_luma >= BACKLIGHT_MARGIN):
        out.append(Finding("backlight", Severity.WARNING,
                           f"The subject is backlit: the face averages {subject_luma:.0f}/255 against a background "
                           f"of {background_luma:.0f}/255.",
                           "Use a photo with the light in front of the person (not behind), or brighten the face "
                           "before uploading."))
    return out


def _check_colour(work_rgb: np.ndarray, native_luma: np.ndarray, metrics: dict[str, Any],
                  person: bool = True) -> list[Finding]:
    # Channel-wise maximum/minimum (much faster than reducing over a length-3 axis).
    r, g, b = work_rgb[..., 0], work_rgb[..., 1], work_rgb[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    spread = mx - np.minimum(np.minimum(r, g), b)  # uint8, never negative
    chroma = float(spread.mean())
    lit = mx >= 48  # saturation of near-black pixels is noise
    sat = spread[lit] / mx[lit].astype(np.float32) if lit.any() else np.zeros(1, np.float32)
    sat_mean = float(sat.mean())
    sat_full = float((sat >= 0.98).mean())
    hist = np.bincount(native_luma.ravel(), minlength=256)
    lo, hi = int(_percentile(hist, 0.5)), int(_percentile(hist, 99.5))
    occupancy = float((hist[lo:hi + 1] > 0).mean()) if hi - lo >= 16 else None
    metrics.update(saturation_mean=round(sat_mean, 4), saturation_full_fraction=round(sat_full, 4),
                   chroma_mean=round(chroma, 2), luma_levels=int((hist > 0).sum()),
                   luma_level_occupancy=None if occupancy is None else round(occupancy, 4))
    out: list[Finding] = []
    grayscale = chroma < GRAYSCALE_MEAN_CHROMA
    if grayscale:
        guess = "skin, hair and eye colour" if person else "every colour"
        out.append(Finding("grayscale", Severity.INFO, "The image is black and white.",
                           f"Fine for a black-and-white result. If you want colour, use the colour original: "
                           f"the model has to guess {guess}.",
                           detail=f"mean channel spread {chroma:.1f} levels"))
    # One heavy_filter finding, whatever the filter did: its message lists each sign that was seen.
    signs: list[str] = []
    details: list[str] = []
    if not grayscale and sat_full >= SATURATION_FULL_FRACTION:
        signs.append("colours pushed to full saturation")
        details.append(f"{sat_full:.0%} of the pixels are fully saturated (mean saturation {sat_mean:.2f})")
    if occupancy is not None and occupancy < POSTERISED_OCCUPANCY:
        signs.append("tones flattened into bands (posterised)")
        details.append(f"only {occupancy:.0%} of the grey levels between the darkest and brightest tones are used "
                       f"({int((hist > 0).sum())} levels in all)")
    if signs:
        copies = ("the model copies the filter into skin and clothes, and flattened tones lose the shading that "
                  "shapes a face") if person else "the model copies the filter into the result"
        out.append(Finding("heavy_filter", Severity.WARNING,
                           "The picture looks heavily filtered: " + " and ".join(signs) + ".",
                           f"Use the unfiltered original (no saturation boost, posterise, cartoon or heavy "
                           f"contrast filter): {copies}. Ignore this for flat graphics or genuinely vivid colours.",
                           detail="; ".join(details)))
    return out


def _check_compression(quant: dict[int, Any] | None, native_luma: np.ndarray,
                       metrics: dict[str, Any]) -> list[Finding]:
    quality: int | None = None
    if quant:
        table = quant.get(0) or next(iter(quant.values()))
        try:
            quality = estimate_jpeg_quality(table)
        except ValueError:
            quality = None
    block = blockiness(native_luma)
    metrics.update(jpeg_quality=quality, blockiness=None if block is None else round(block, 3))
    out: list[Finding] = []
    if quality is not None and quality < JPEG_QUALITY_WARN:
        severity = Severity.PROBLEM if quality < JPEG_QUALITY_ERROR else Severity.WARNING
        out.append(Finding("jpeg_quality", severity,
                           f"The JPEG is heavily compressed (quality about {quality} of 100; cameras save at "
                           "85–95): its blocks and smearing are copied into the edit.",
                           "Use the original file, or export at quality 90 or more.",
                           detail=f"quality {quality} estimated from the file's luminance quantisation table"))
    elif (block is not None and block >= BLOCKINESS_WARN
          and (quality is None or quality >= RESAVED_MIN_QUALITY)):
        severity = Severity.PROBLEM if block >= BLOCKINESS_ERROR else Severity.WARNING
        out.append(Finding("jpeg_artifacts", severity,
                           "The picture shows blocky compression marks: it was heavily compressed at some point.",
                           "Use the original file rather than a copy saved from a chat app or a screenshot of "
                           "a compressed picture; re-saving as PNG does not remove the blocks.",
                           detail=f"8x8 blockiness {block:.2f}; clean photos measure 1.0–1.2"))
    return out
