"""Weights-free subject consistency for non-face subjects (products, objects, scenes).

When the reference has no face there is no identity to measure, but users still want to know whether
the edit kept *their* object: the same label, the same bottle, the same sneaker. Local feature matches
answer that without any model weights: SIFT keypoints (OpenCV main), Lowe's ratio test, then a RANSAC
homography. Keypoints that survive all three describe the same physical surface seen in both images,
even after the subject was scaled, rotated, cropped or relit.

Score (documented, monotone in both inputs)::

    count_term = 1 - exp(-max(0, inliers - INLIER_FLOOR) / INLIER_SCALE)
    ratio_term = min(1, inlier_ratio / RATIO_SATURATION)
    score      = count_term * ratio_term

``inliers`` counts distinct RANSAC inliers (duplicate keypoints at one spot count once); ``inlier_ratio``
is inliers / ratio-test matches. Two unrelated photographs still yield a handful of chance inliers
(a homography only needs 4 points; ~5–10 were measured on skimage's sample photos), hence the floor of 8.
A score of ``CONSISTENCY_THRESHOLD`` (0.5) or more reads as "the same subject".

The image helper :func:`rgb_array` also lives here because both this module and
:mod:`kontext_studio.analysis.identity` need the same conversion of any PIL mode to 8-bit RGB.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# Chance inliers between unrelated images stay below this (measured ≤ 10 on skimage sample photos).
INLIER_FLOOR = 8
# Inliers above the floor needed to reach 1 - 1/e ≈ 0.63 of the count term.
INLIER_SCALE = 15.0
# An inlier ratio at or above this counts fully; same-subject pairs measured 0.9–0.97, unrelated 0.3–0.4.
RATIO_SATURATION = 0.6
CONSISTENCY_THRESHOLD = 0.5
# Feature extraction works on at most this longest side: enough detail for a product, and it bounds
# the cost (SIFT grows with the pixel count) to well under a second per pair on a laptop CPU.
FEATURE_MAX_SIDE = 768
MIN_SIDE = 32
_RATIO_TEST = 0.75
_RANSAC_PIXELS = 5.0


@dataclass(frozen=True)
class ConsistencyReport:
    """How well the reference subject's local features reappear in the output.

    Attributes:
        measured: False when an image was too small or had no texture to describe.
        reason: why it was not measured, in words (None when measured).
        method: ``"sift-ransac"``.
        score: in [0, 1], see the module docstring for the formula; 0.0 when not measured.
        consistent: ``score >= threshold`` (None when not measured).
        threshold: the score threshold used.
        reference_keypoints: keypoints found in the reference.
        output_keypoints: keypoints found in the output.
        matches: matches that passed the ratio test.
        inliers: distinct RANSAC homography inliers.
        inlier_ratio: inliers / matches (0.0 without matches).
    """

    measured: bool
    reason: str | None
    method: str
    score: float
    consistent: bool | None
    threshold: float
    reference_keypoints: int = 0
    output_keypoints: int = 0
    matches: int = 0
    inliers: int = 0
    inlier_ratio: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field."""
        return asdict(self)


def rgb_array(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to a contiguous ``uint8`` RGB array (H, W, 3).

    EXIF orientation is applied first (phone photos otherwise lie on their side and no face is found).
    16-bit and 32-bit integer images are scaled down to 8 bits rather than clipped (PIL's own
    ``convert("RGB")`` clips ``I;16`` to white); float images in [0, 1] are scaled to [0, 255];
    palette, grayscale, alpha and CMYK images go through PIL's conversion (alpha is dropped).

    Args:
        image: any PIL image.

    Returns:
        A C-contiguous ``uint8`` array of shape (H, W, 3).

    Raises:
        TypeError: when ``image`` is not a PIL image.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = float(values.max()) if values.size else 0.0
        if image.mode == "F" and peak <= 1.0:
            values = values * 255.0
        elif peak > 255.0:
            # 16-bit data (the common case) maps 65535 → 255; anything wider is stretched to its peak.
            values = values / (257.0 if peak <= 65535.0 else peak / 255.0)
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _gray_for_features(rgb: np.ndarray) -> np.ndarray:
    import cv2

    height, width = rgb.shape[:2]
    longest = max(height, width)
    if longest > FEATURE_MAX_SIDE:
        scale = FEATURE_MAX_SIDE / longest
        rgb = cv2.resize(
            rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
        )
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def consistency_score(inliers: int, inlier_ratio: float) -> float:
    """Map RANSAC inliers and inlier ratio to a score in [0, 1] (formula in the module docstring).

    Args:
        inliers: distinct RANSAC inliers.
        inlier_ratio: inliers / ratio-test matches, in [0, 1].

    Returns:
        The score, 0.0 at or below ``INLIER_FLOOR`` inliers, approaching 1 for many consistent inliers.
    """
    count_term = 1.0 - math.exp(-max(0, inliers - INLIER_FLOOR) / INLIER_SCALE)
    ratio_term = min(1.0, max(0.0, inlier_ratio) / RATIO_SATURATION)
    return float(count_term * ratio_term)


def _plausible_homography(matrix: np.ndarray) -> bool:
    # A homography that folds, collapses or explodes the plane fits matches clustered on one spot,
    # not a real view of the same object: reject it rather than count its "inliers".
    if matrix is None or not np.all(np.isfinite(matrix)):
        return False
    linear = matrix[:2, :2] / matrix[2, 2] if matrix[2, 2] != 0 else None
    if linear is None:
        return False
    det = float(np.linalg.det(linear))
    return 1 / 64 < det < 64 and float(np.abs(matrix[2, :2] / matrix[2, 2]).max()) < 0.01


def compare_features(reference: Image.Image, output: Image.Image) -> ConsistencyReport:
    """Score how consistently the reference subject reappears in the output, without model weights.

    Args:
        reference: the reference picture (any PIL mode).
        output: the edited picture (any PIL mode).

    Returns:
        A :class:`ConsistencyReport`; ``measured`` is False (with a reason) for images under 32 px
        or without enough texture to describe.

    Raises:
        TypeError: when an argument is not a PIL image.
    """
    import cv2

    ref_rgb, out_rgb = rgb_array(reference), rgb_array(output)
    for label, rgb in (("reference", ref_rgb), ("output", out_rgb)):
        if min(rgb.shape[:2]) < MIN_SIDE:
            return ConsistencyReport(
                measured=False,
                reason=f"the {label} image is {rgb.shape[1]}x{rgb.shape[0]} px, too small to describe "
                f"(needs at least {MIN_SIDE} px on each side)",
                method="sift-ransac",
                score=0.0,
                consistent=None,
                threshold=CONSISTENCY_THRESHOLD,
            )
    sift = cv2.SIFT.create(nfeatures=2000)
    ref_kp, ref_desc = sift.detectAndCompute(_gray_for_features(ref_rgb), None)
    out_kp, out_desc = sift.detectAndCompute(_gray_for_features(out_rgb), None)
    counts = {"reference_keypoints": len(ref_kp), "output_keypoints": len(out_kp)}
    if ref_desc is None or len(ref_kp) < 8:
        return ConsistencyReport(
            measured=False,
            reason=f"the reference is too plain to compare (almost no detail: {len(ref_kp)} distinct points)",
            method="sift-ransac",
            score=0.0,
            consistent=None,
            threshold=CONSISTENCY_THRESHOLD,
            **counts,
        )
    good: list[Any] = []
    if out_desc is not None and len(out_kp) >= 2:
        pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(ref_desc, out_desc, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < _RATIO_TEST * p[1].distance]
    inliers = 0
    if len(good) >= 4:
        src = np.array([ref_kp[m.queryIdx].pt for m in good], dtype=np.float32)
        dst = np.array([out_kp[m.trainIdx].pt for m in good], dtype=np.float32)
        matrix, mask = cv2.findHomography(src, dst, cv2.RANSAC, _RANSAC_PIXELS)
        if mask is not None and _plausible_homography(matrix):
            keep = mask.ravel().astype(bool)
            # SIFT places several keypoints (one per dominant orientation) at one spot: count spots once.
            spots = {(round(x), round(y)) for x, y in src[keep]}
            inliers = len(spots)
    distinct_matches = len({(round(ref_kp[m.queryIdx].pt[0]), round(ref_kp[m.queryIdx].pt[1])) for m in good})
    ratio = inliers / distinct_matches if distinct_matches else 0.0
    score = consistency_score(inliers, ratio)
    return ConsistencyReport(
        measured=True,
        reason=None,
        method="sift-ransac",
        score=round(score, 4),
        consistent=score >= CONSISTENCY_THRESHOLD,
        threshold=CONSISTENCY_THRESHOLD,
        matches=len(good),
        inliers=inliers,
        inlier_ratio=round(ratio, 4),
        **counts,
    )
