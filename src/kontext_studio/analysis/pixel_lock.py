"""Pixel lock: put back the original pixels everywhere an edit was not asked to change anything.

FLUX.1 Kontext re-renders the whole picture even for a local edit, so its output drifts where nothing
should have moved: the frame shifts or zooms by 1-3 %, turns by a fraction of a degree, the colours move
and fine texture is re-invented. :func:`pixel_lock` repairs this after the edit:

1. **Same grid.** The edited image is resized to the original's size when the two differ (noted in the
   result).
2. **Geometry.** The global misalignment (sub-pixel shift, small scale, small rotation; a full affine so a
   slight aspect change from the model's resolution buckets is covered too) is estimated robustly although
   part of the picture was edited: ORB features matched with a ratio test and a RANSAC similarity give a
   first guess that ignores the edited region (its matches are outliers); ECC (enhanced correlation
   coefficient, a sub-pixel intensity alignment that is blind to brightness/contrast changes) then refines
   it on a Gaussian pyramid, twice, each time with the pixels whose residual is an outlier (the edit) masked
   out. The candidate with the smallest median residual wins, so a failed refinement can never make the
   alignment worse than the first guess or than no warp at all. The edited image is then warped onto the
   original's grid.
3. **Colour.** The colour cast is a 3x3 matrix plus bias (or a per-channel gain/offset when the matrix does
   not fit markedly better) fitted from edited to original colours by iteratively re-weighted least squares
   (Huber, then Tukey) on pixels that are unchanged, unclipped and inside the frame; the edited region is
   rejected by the re-weighting at first and excluded explicitly once it is known.
4. **Changed region.** The original is pushed through the fitted cast (clipped to 0-255 like an 8-bit
   output, so highlights the cast saturated do not pass for edits) and compared with the aligned edit: a
   perceptual colour difference (CIE76 ΔE in Lab on lightly blurred images, which ignores noise and
   resampling residue) plus a local fine-detail energy ratio (which sees texture that appears or vanishes
   with the same mean colour). Hysteresis thresholds come from the noise of the ΔE map (median + k·MAD,
   clamped to a perceptual range: never below a just-noticeable ΔE 3, never so high that a large visible
   change hides itself). The mask is cleaned with morphology (open, close, small components removed, small
   enclosed holes filled) and dilated by a safety margin of 1.2 % of the short side. No box is hard-coded.
5. **Composite.** Original pixels outside the changed region, the aligned colour-corrected edit inside,
   joined by a feathered seam: alpha ramps from 0 at the border of the dilated mask to 1 one margin inside
   (distance transform, smoothstep). Feathering was chosen over Poisson blending (``cv2.seamlessClone``)
   because Poisson changes the colours of the whole pasted region to match its border, which would alter
   the edit itself; after alignment and colour correction the two sides already agree, so a short ramp
   hides the seam. Every pixel outside ``changed_mask`` is byte-for-byte the original.
6. **Global change.** Nothing is undone when the detected change covers more than ``global_fraction`` of
   the picture (default 0.6), when the colour correction would move a tenth of the picture's colours by
   more than ``max_color_shift`` levels (default 30: a relight or colour grade, not drift), or when no
   colour model explains the unchanged part (median residual above 15 levels): the edited image is
   returned untouched with ``global_change`` set and the reason in words. ``mode="off"`` returns the edited
   image untouched without analysis. A user mask (white = edit region) replaces the estimated changed
   region (and the global test: the user said where the edit is).
7. **Report.** The result carries the changed fraction, the alignment (dx, dy, scale, rotation) and the
   colour correction that were applied.

:func:`simulate_edit` and :func:`simulate_restyle` build the synthetic cases used by the benchmark
(``benchmarks/pixel_lock.py``) and the tests: a local edit plus known drift, colour cast and noise.

Everything runs on the CPU with OpenCV, SciPy and NumPy; the heavy imports happen inside the functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np
from PIL import Image

from kontext_studio.core.errors import InvalidImage, InvalidRequest

# Documentation aliases: OpenCV's stubs type every array loosely, so a precise dtype would not check.
FloatArray: TypeAlias = np.ndarray  # float32, 0-255 units, HxW or HxWx3
BoolArray: TypeAlias = np.ndarray  # bool, HxW

Mode = Literal["auto", "off"]
MODES = ("auto", "off")

# Below this many pixels on the short side the lock does nothing (returns the edit untouched).
_MIN_SIDE = 16
# Below this many pixels on the short side there is too little structure for features or ECC: the lock
# still corrects colours and composites, but assumes no geometric drift.
_MIN_ALIGN_SIDE = 24
# Drift plausibility: Kontext drift is a few per cent; anything larger is a failed estimate (or an edit
# that deliberately reframed the picture, which a lock must not undo).
_MAX_SCALE_CHANGE = 0.15
_MAX_ROTATION_DEG = 6.0
_MAX_SHIFT_FRACTION = 0.15
# Estimated drift smaller than this everywhere in the frame (pixels) is treated as none: a warp would only
# soften the picture by resampling.
_NEGLIGIBLE_DRIFT_PX = 0.02
# Weight of the prior that pulls the 3x3 colour matrix toward the per-channel fit, as a share of the data's
# weight: small enough not to bias a well-determined matrix, large enough to pin the directions the picture's
# colours leave free (a blue sky says nothing about what the cast does to reds).
_COLOR_PRIOR = 0.02
# Median colour residual (0-255 units, 3-channel norm) above which no colour model explains the picture
# outside the edit: the whole picture was re-rendered. Drift with noise sigma 2 leaves about 3.
_MAX_COLOR_RESIDUAL = 15.0


# ---------------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------------
@dataclass
class PixelLockResult:
    """What :func:`pixel_lock` did.

    Attributes:
        image: the result. With ``applied`` False it is the ``edited`` object itself, untouched.
        applied: True when original pixels were composited back outside the changed region.
        reason: what was done and why, in words.
        global_change: True when the edit changed most of the picture (restyle, relight) and was left alone.
        changed_fraction: share of the picture detected as changed (or covered by the user mask), before the
            safety margin; 0 for ``mode="off"`` (nothing measured).
        alignment: the geometric drift that was measured (and undone when ``applied``), in the original's
            pixels: ``dx``/``dy`` (displacement of the image centre, edited minus original), ``scale``,
            ``scale_x``, ``scale_y``, ``rotation_deg`` (positive = clockwise on screen, image y points
            down), ``max_displacement_px`` (largest displacement over the frame), ``method`` and ``matrix``
            (2x3 affine mapping original pixel coordinates to edited ones).
        color_correction: the colour model fitted from edited to original colours: ``model``
            (``matrix``, ``per_channel`` or ``identity``), ``matrix`` (3x3), ``bias`` (3, in 0-255 units),
            ``gain``/``offset`` (the diagonal and bias), ``residual`` (robust residual scale, 0-255 units),
            ``mean_shift_delta_e`` (how far the correction moves unchanged colours, CIE76 ΔE) and
            ``shift_p90_levels`` (90th percentile of that move, largest channel, levels of 255).
        changed_mask: mode ``L`` at the original's size. When applied: the region that keeps edited pixels
            (detected change plus safety margin and feather), 255 inside. When left alone as a global change:
            the detected change, for diagnosis. ``None`` when nothing was analysed (mode off, tiny picture).
        kept_fraction: share of the picture that keeps edited pixels (1 when the edit is left alone).
        mask_source: ``estimated``, ``user`` or ``none`` (mode off).
        resized_from: the edited image's size when it had to be resized to the original's, else ``None``.
        timings: seconds per step.
    """

    image: Image.Image
    applied: bool
    reason: str
    global_change: bool
    changed_fraction: float
    alignment: dict[str, Any]
    color_correction: dict[str, Any]
    changed_mask: Image.Image | None
    kept_fraction: float = 0.0
    mask_source: str = "estimated"
    resized_from: tuple[int, int] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Everything but the images, JSON-ready.

        Returns:
            a dict of plain Python values (``image`` and ``changed_mask`` left out).
        """
        return {
            "applied": self.applied,
            "reason": self.reason,
            "global_change": self.global_change,
            "changed_fraction": round(float(self.changed_fraction), 6),
            "kept_fraction": round(float(self.kept_fraction), 6),
            "mask_source": self.mask_source,
            "resized_from": list(self.resized_from) if self.resized_from else None,
            "alignment": dict(self.alignment),
            "color_correction": dict(self.color_correction),
            "timings": {k: round(v, 5) for k, v in self.timings.items()},
        }


def _identity_alignment(method: str = "none") -> dict[str, Any]:
    return {"dx": 0.0, "dy": 0.0, "scale": 1.0, "scale_x": 1.0, "scale_y": 1.0, "rotation_deg": 0.0,
            "max_displacement_px": 0.0, "method": method, "matrix": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]}


def _identity_color() -> dict[str, Any]:
    eye = np.eye(3)
    return {"model": "identity", "matrix": eye.tolist(), "bias": [0.0, 0.0, 0.0], "gain": [1.0, 1.0, 1.0],
            "offset": [0.0, 0.0, 0.0], "residual": 0.0, "mean_shift_delta_e": 0.0}


# ---------------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------------
def pixel_lock(
    original: Image.Image,
    edited: Image.Image,
    mode: Mode | str = "auto",
    mask: Image.Image | None = None,
    *,
    global_fraction: float = 0.6,
    max_color_shift: float = 30.0,
    max_side: int = 1024,
) -> PixelLockResult:
    """Undo an editor's global drift outside the region it was asked to change.

    Args:
        original: the picture that was edited.
        edited: the editor's output; any size (resized to the original's when it differs).
        mode: ``"auto"`` (measure, then lock unless the change is global) or ``"off"`` (return ``edited``
            untouched, nothing measured).
        mask: optional user mask, white (>= 128) = the region the edit was allowed to change; any size
            (resized to the original's). It replaces the estimated changed region and disables the
            global-change test (the user said where the edit is).
        global_fraction: detected changed share above which the edit counts as global and is left alone.
        max_color_shift: how far (levels of 255, 90th percentile over the unchanged pixels, largest channel)
            the colour correction may move the picture's colours; more means the edit re-graded the whole
            picture on purpose (relight, colour grade) and is left alone. A drift cast of gain 0.9-1.1 and
            offset ±8 moves them by about 5-23 levels on the benchmark photos; the relights and grades there
            need 37 or more.
        max_side: the analysis (alignment, colour fit, change detection) runs at most at this long side; the
            warp and the composite always run at the original's full size.

    Returns:
        a :class:`PixelLockResult`; ``image`` has the original's size (or is ``edited`` itself, untouched,
        when the lock did not apply), mode ``L`` when both inputs are grayscale, else ``RGB`` (alpha and
        palettes are flattened).

    Raises:
        InvalidRequest: ``mode`` is not ``auto`` or ``off``, or a threshold is out of range.
        InvalidImage: an input is not a PIL image or has no pixels.
    """
    if mode not in MODES:
        raise InvalidRequest(f"pixel lock mode must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
    if not 0.0 < global_fraction <= 1.0:
        raise InvalidRequest(f"global_fraction must be in (0, 1], got {global_fraction}", field="global_fraction")
    if max_side < 16:
        raise InvalidRequest(f"max_side must be at least 16, got {max_side}", field="max_side")
    for name, img in (("original", original), ("edited", edited), ("mask", mask)):
        if img is None and name == "mask":
            continue
        if not isinstance(img, Image.Image):
            raise InvalidImage(f"{name} must be a PIL image, got {type(img).__name__}", field=name)
        if img.width < 1 or img.height < 1:
            raise InvalidImage(f"{name} has no pixels ({img.width}x{img.height})", field=name)

    if mode == "off":
        return PixelLockResult(
            image=edited, applied=False, reason="pixel lock is off: the edited image is returned untouched",
            global_change=False, changed_fraction=0.0, alignment=_identity_alignment(),
            color_correction=_identity_color(), changed_mask=None, mask_source="none",
        )
    return _Lock(original, edited, mask, global_fraction, max_color_shift, max_side).run()


# ---------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------
class _Lock:
    """One pixel-lock run; holds the arrays shared by the steps."""

    def __init__(self, original: Image.Image, edited: Image.Image, mask: Image.Image | None,
                 global_fraction: float, max_color_shift: float, max_side: int):
        self.original_img, self.edited_img = original, edited
        self.global_fraction, self.max_color_shift = global_fraction, max_color_shift
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        t0 = time.perf_counter()

        self.orig = _rgb_array(original)
        self.h, self.w = self.orig.shape[:2]
        self.resized_from: tuple[int, int] | None = None
        edit_img = edited
        if edited.size != original.size:
            # The model may answer at one of its preferred resolutions: bring it back onto the original's grid
            # first; any residual aspect change is part of the affine drift estimated next.
            self.resized_from = edited.size
            edit_img = edited.convert("RGB").resize(original.size, Image.Resampling.LANCZOS)
            self.notes.append(f"edited image resized from {edited.width}x{edited.height} to "
                              f"{original.width}x{original.height}")
        self.edit = _rgb_array(edit_img)

        self.user_mask: BoolArray | None = None
        if mask is not None:
            m = mask.convert("L")
            if m.size != original.size:
                m = m.resize(original.size, Image.Resampling.BILINEAR)
            self.user_mask = np.asarray(m) >= 128

        # Working resolution for the analysis; the warp and the composite stay at full size.
        self.f = min(1.0, max_side / max(self.h, self.w))
        self.wh, self.ww = max(1, round(self.h * self.f)), max(1, round(self.w * self.f))
        self.f_y, self.f_x = self.wh / self.h, self.ww / self.w
        self.orig_w = _resize_area(self.orig.astype(np.float32), self.ww, self.wh)
        self.edit_w = _resize_area(self.edit.astype(np.float32), self.ww, self.wh)
        self.user_mask_w: BoolArray | None = None
        if self.user_mask is not None:
            self.user_mask_w = _resize_mask(self.user_mask, self.ww, self.wh)
        # Unit length for morphology at the working size: about 1/300 of the short side.
        self.unit = max(1, round(min(self.wh, self.ww) / 300))
        self.timings["prepare"] = time.perf_counter() - t0

    # -- the run ------------------------------------------------------------------------------------
    def run(self) -> PixelLockResult:
        import cv2

        if min(self.h, self.w) < _MIN_SIDE:
            # A handful of pixels cannot separate an edit from drift; dropping an edit is the worse mistake.
            return PixelLockResult(
                image=self.edited_img, applied=False, global_change=False, changed_fraction=0.0,
                reason=f"picture too small ({self.w}x{self.h}, under {_MIN_SIDE} px on a side) to tell the edit "
                       "from drift: the edited image is returned untouched",
                alignment=_identity_alignment(), color_correction=_identity_color(), changed_mask=None,
                mask_source="none", resized_from=self.resized_from, timings=self.timings,
            )
        if self.user_mask is not None and self.user_mask.mean() >= 0.999:
            return PixelLockResult(
                image=self.edited_img, applied=False, global_change=False, changed_fraction=1.0,
                reason="the mask covers the whole picture: nothing to lock, the edited image is returned untouched",
                alignment=_identity_alignment(), color_correction=_identity_color(),
                changed_mask=Image.new("L", (self.w, self.h), 255), kept_fraction=1.0, mask_source="user",
                resized_from=self.resized_from, timings=self.timings,
            )
        t = time.perf_counter()
        warp_w, method = self._align()
        warp_full = _rescale_warp(warp_w, self.f_x, self.f_y)
        alignment = _describe_warp(warp_full, self.w, self.h, method)
        if alignment["max_displacement_px"] < _NEGLIGIBLE_DRIFT_PX:
            # No measurable drift: keep the edited pixels as they are instead of resampling them.
            warp_full = np.eye(2, 3)
            warp_w = np.eye(2, 3)
            alignment = _identity_alignment("none (no measurable drift)" if method != "identity" else method)
        aligned, valid = _warp_rgb(self.edit.astype(np.float32), warp_full)
        aligned_w = _resize_area(aligned, self.ww, self.wh)
        valid_w = _resize_mask(valid, self.ww, self.wh, threshold=0.999)
        self.timings["align"] = time.perf_counter() - t

        # Colour: first pass with the robust weights alone (or the user mask), then refit once the changed
        # region is known so the edit cannot bias the cast.
        t = time.perf_counter()
        exclude = self.user_mask_w if self.user_mask_w is not None else np.zeros((self.wh, self.ww), bool)
        color = _fit_color(aligned_w, self.orig_w, valid_w & ~exclude)
        self.timings["color"] = time.perf_counter() - t

        t = time.perf_counter()
        if self.user_mask_w is not None:
            detected = self.user_mask_w.copy()
            mask_source = "user"
        else:
            mask_source = "estimated"
            detected = self._detect(color, aligned_w, valid_w)
            refit_exclude = cv2.dilate(detected.astype(np.uint8), _disk(3 * self.unit)) > 0
            if (valid_w & ~refit_exclude).sum() >= 64:
                color = _fit_color(aligned_w, self.orig_w, valid_w & ~refit_exclude)
                detected = self._detect(color, aligned_w, valid_w)
        changed_fraction = float(detected.mean())
        self.timings["detect"] = time.perf_counter() - t

        # Global change: leave the edit alone.
        verdict = self._global_verdict(changed_fraction, color, mask_source)
        if verdict is not None:
            self.timings["total"] = sum(self.timings.values())
            return PixelLockResult(
                image=self.edited_img, applied=False, reason=verdict, global_change=True,
                changed_fraction=changed_fraction, alignment=alignment, color_correction=color.describe(),
                changed_mask=Image.fromarray(_resize_mask(detected, self.w, self.h).astype(np.uint8) * 255, "L"),
                kept_fraction=1.0, mask_source=mask_source, resized_from=self.resized_from,
                timings=self.timings,
            )

        t = time.perf_counter()
        full = _resize_mask(detected, self.w, self.h) if (self.wh, self.ww) != (self.h, self.w) else detected
        if mask_source == "user" and self.user_mask is not None:
            full = self.user_mask  # honour the user's mask at full resolution, not its downsampled copy
        margin = 0 if mask_source == "user" else max(2, round(0.012 * min(self.h, self.w)))
        feather = max(1, round(0.006 * min(self.h, self.w))) if mask_source == "user" else margin
        kept = cv2.dilate(full.astype(np.uint8), _disk(margin)) > 0 if margin else full
        alpha = _feather_alpha(kept, feather) * valid.astype(np.float32)
        corrected = color.apply(aligned)
        out = self.orig.astype(np.float32)
        out += alpha[..., None] * (corrected - out)
        result = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        image = Image.fromarray(result, "RGB")
        if self.edited_img.mode in ("L", "LA", "I", "I;16", "F") and self.original_img.mode in ("L", "LA", "I",
                                                                                               "I;16", "F"):
            image = image.convert("L")
        kept_mask = alpha > 0
        self.timings["composite"] = time.perf_counter() - t
        self.timings["total"] = sum(self.timings.values())

        parts = []
        if mask_source == "user":
            parts.append(f"user mask honoured ({100 * changed_fraction:.1f} % of the picture kept from the edit)")
        elif changed_fraction == 0:
            parts.append("no local change found: the original pixels are returned")
        else:
            parts.append(f"edit found on {100 * changed_fraction:.1f} % of the picture and kept; original pixels "
                         "restored elsewhere")
        if alignment["method"] not in ("identity",) and alignment["max_displacement_px"] > 0:
            parts.append(f"drift undone: shift ({alignment['dx']:+.2f}, {alignment['dy']:+.2f}) px, scale "
                         f"{alignment['scale']:.4f}, rotation {alignment['rotation_deg']:+.2f}°")
        if color.model != "identity" and color.mean_shift_delta_e >= 0.5:
            parts.append(f"colour cast undone ({color.model.replace('_', '-')}, mean ΔE "
                         f"{color.mean_shift_delta_e:.1f})")
        parts.extend(self.notes)
        return PixelLockResult(
            image=image, applied=True, reason="; ".join(parts), global_change=False,
            changed_fraction=changed_fraction, alignment=alignment, color_correction=color.describe(),
            changed_mask=Image.fromarray(kept_mask.astype(np.uint8) * 255, "L"),
            kept_fraction=float(kept_mask.mean()), mask_source=mask_source, resized_from=self.resized_from,
            timings=self.timings,
        )

    def _global_verdict(self, changed_fraction: float, color: _ColorModel, mask_source: str) -> str | None:
        """The reason the edit counts as global, or None when it is local."""
        if mask_source == "user":
            return None
        if changed_fraction > self.global_fraction:
            return (f"global change: {100 * changed_fraction:.0f} % of the picture changed (more than "
                    f"{100 * self.global_fraction:.0f} %), e.g. a restyle or relight; the edit is left untouched")
        if color.shift_p90 > self.max_color_shift:
            return (f"global change: the colour correction would move a tenth of the picture's colours by more "
                    f"than {color.shift_p90:.0f} levels of 255 (drift moves them by at most "
                    f"{self.max_color_shift:.0f}), e.g. a relight or colour grade; the edit is left untouched")
        if color.residual > _MAX_COLOR_RESIDUAL:
            return (f"global change: no colour model explains the unchanged part (residual {color.residual:.1f} "
                    "levels everywhere), e.g. a restyle; the edit is left untouched")
        return None

    # -- step 2: alignment --------------------------------------------------------------------------
    def _align(self) -> tuple[np.ndarray, str]:
        """The 2x3 affine (working pixels) mapping original coordinates to edited ones, and how it was found."""
        import cv2

        if min(self.wh, self.ww) < _MIN_ALIGN_SIDE:
            self.notes.append("picture too small to measure geometric drift; only colours corrected")
            return np.eye(2, 3), "identity"
        og = cv2.cvtColor(self.orig_w, cv2.COLOR_RGB2GRAY)
        eg = cv2.cvtColor(self.edit_w, cv2.COLOR_RGB2GRAY)
        exclude = self.user_mask_w
        candidates: dict[str, np.ndarray] = {"identity": np.eye(2, 3)}
        feat = _feature_similarity(og, eg, exclude)
        if feat is not None and _plausible(feat, self.ww, self.wh):
            candidates["features"] = feat
        start_name = min(candidates, key=lambda k: _alignment_cost(og, eg, candidates[k], exclude))
        warp = candidates[start_name]
        # Robust ECC: refine, find the pixels that still disagree (the edit), mask them out, refine again.
        levels = 4
        for _ in range(2):
            inliers = _alignment_inliers(og, eg, warp, exclude, self.unit)
            refined = _ecc_pyramid(og, eg, warp, inliers, levels)
            if refined is not None and _plausible(refined, self.ww, self.wh):
                warp = refined
            levels = 2  # the second round starts close: only the two finest levels
        if not np.allclose(warp, candidates[start_name]):
            candidates["ecc"] = warp
        best = min(candidates, key=lambda k: _alignment_cost(og, eg, candidates[k], exclude))
        method = {"identity": "identity", "features": "features (ORB + RANSAC)",
                  "ecc": f"ECC affine refined from {start_name}"}[best]
        return candidates[best], method

    # -- step 4: changed region ---------------------------------------------------------------------
    def _detect(self, color: _ColorModel, aligned_w: FloatArray, valid_w: BoolArray) -> BoolArray:
        """Pixels (working size) where the aligned edit differs perceptibly from the original seen through the
        colour cast.

        The comparison runs in the edited image's colours: the original is pushed through the cast and clipped
        to 0-255 like the editor's output. A highlight the cast pushed past 255 then matches its clipped
        counterpart instead of passing for an edit (in the original's colours the clipped value cannot be
        undone and would differ).
        """
        import cv2

        expected = color.forward(self.orig_w)
        score = _delta_e_map(expected, aligned_w, sigma=1.5)
        score[~valid_w] = 0.0
        values = score[valid_w]
        if values.size < 16:
            return np.zeros_like(valid_w)
        med = float(np.median(values))
        mad = 1.4826 * float(np.median(np.abs(values - med)))
        # Noise-adaptive thresholds, clamped: never below a just-noticeable difference (ΔE ~2.3), never so
        # high that a large clearly visible change could raise its own threshold above itself.
        low = float(np.clip(med + 4.0 * mad, 3.0, 6.0))
        high = float(np.clip(med + 8.0 * mad, 6.0, 12.0))
        # The blurred colour difference is blind to fine detail that appears or vanishes with the same mean
        # colour (a smoothed or newly patterned surface): compare local detail energy as well.
        detail = _detail_change(expected, aligned_w)
        detail[~valid_w] = 0.0
        changed = _hysteresis((score > low) | (detail > 1.0), (score > high) | (detail > 1.6))
        u = self.unit
        changed = cv2.morphologyEx(changed.astype(np.uint8), cv2.MORPH_OPEN, _disk(u)) > 0
        changed = cv2.morphologyEx(changed.astype(np.uint8), cv2.MORPH_CLOSE, _disk(3 * u)) > 0
        area = changed.size
        changed = _remove_small(changed, max(4, round(0.0008 * area)))
        changed = ~_remove_small(~changed, max(4, round(0.01 * area)), keep_border=True)
        return changed & valid_w


# ---------------------------------------------------------------------------------------------------
# Image helpers
# ---------------------------------------------------------------------------------------------------
def _rgb_array(img: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB; grayscale, palette and alpha images are converted (alpha dropped)."""
    if img.mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode in ("I", "I;16", "F"):
        # 16-bit / float grayscale: scale to 8 bits by range so the analysis sees the picture, not clipping.
        a = np.asarray(img, dtype=np.float64)
        hi = float(a.max()) if a.size else 1.0
        a8 = np.clip(np.rint(a * (255.0 / hi)) if hi > 255 else a, 0, 255).astype(np.uint8)
        return np.repeat(a8[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _resize_area(a: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    if a.shape[1] == w and a.shape[0] == h:
        return a.copy()
    return np.asarray(cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA))


def _resize_mask(m: np.ndarray, w: int, h: int, threshold: float = 0.5) -> BoolArray:
    import cv2

    if m.shape[1] == w and m.shape[0] == h:
        return m.astype(bool)
    interp = cv2.INTER_AREA if w < m.shape[1] else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(m.astype(np.float32), (w, h), interpolation=interp)) >= threshold


def _disk(radius: int) -> np.ndarray:
    import cv2

    r = max(0, int(radius))
    return np.asarray(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))


def _remove_small(m: BoolArray, min_area: int, keep_border: bool = False) -> BoolArray:
    """``m`` without its connected components smaller than ``min_area`` pixels.

    With ``keep_border`` components touching the frame are kept whatever their size: used on the complement
    to fill only enclosed holes, never the background around an edit.
    """
    from scipy import ndimage

    labels, n = ndimage.label(m)
    if n == 0:
        return m.copy()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_area
    if keep_border:
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        keep[border] = True
    keep[0] = False
    return np.asarray(keep[labels])


def _hysteresis(weak: BoolArray, strong: BoolArray) -> BoolArray:
    """``weak`` pixels connected to a ``strong`` one: a faint part of an edit is kept when it touches a
    clear part, isolated faint noise is not."""
    from scipy import ndimage

    labels, n = ndimage.label(weak)
    if n == 0:
        return weak
    keep = np.zeros(n + 1, bool)
    keep[np.unique(labels[strong & weak])] = True
    keep[0] = False
    return np.asarray(keep[labels])


def _detail_change(a: FloatArray, b: FloatArray) -> FloatArray:
    """|log2| of the ratio of local fine-detail energy (gray minus its σ=2 blur, RMS over σ=4) between two
    images, with the noise floor (10th percentile of either energy map, at least 2 levels) added to both so
    flat areas and noise never count: 1 means one image has twice the other's detail there."""
    import cv2

    if min(a.shape[:2]) < 8:
        return np.zeros(a.shape[:2], np.float32)

    def energy(rgb: FloatArray) -> FloatArray:
        g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        hp = g - cv2.GaussianBlur(g, (0, 0), 2.0)
        return np.asarray(np.sqrt(cv2.GaussianBlur(hp * hp, (0, 0), 4.0)))

    ea, eb = energy(a), energy(b)
    floor = 1.5 * max(2.0, float(np.percentile(ea, 10)), float(np.percentile(eb, 10)))
    return np.abs(np.log2((eb + floor) / (ea + floor))).astype(np.float32)


def _lab(rgb: FloatArray) -> FloatArray:
    import cv2

    return np.asarray(cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab))


def _delta_e_map(a: FloatArray, b: FloatArray, sigma: float) -> FloatArray:
    """CIE76 ΔE between two RGB float images after a Gaussian blur (noise and resampling residue are fine
    detail; an edit is not)."""
    import cv2

    if sigma > 0 and min(a.shape[:2]) >= 3:
        a = cv2.GaussianBlur(a, (0, 0), sigma)
        b = cv2.GaussianBlur(b, (0, 0), sigma)
    d = _lab(a) - _lab(b)
    return np.sqrt((d * d).sum(axis=2)).astype(np.float32)


def _feather_alpha(kept: BoolArray, feather: int) -> FloatArray:
    """Alpha 0 outside ``kept``, rising to 1 ``feather`` pixels inside its border (smoothstep): the seam lies
    entirely inside the kept region, so pixels outside it stay exactly the original."""
    import cv2

    if not kept.any():
        return np.zeros(kept.shape, np.float32)
    # Pad so the frame edge does not count as a border: an edit touching the edge keeps full strength there.
    padded = np.pad(kept.astype(np.uint8), 1, mode="edge")
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    t = np.clip(dist / max(feather, 1), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------------------
def _as3(m: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(m, np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])


def _rescale_warp(warp_w: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """A warp measured on the working image, expressed on the full-size image.

    ``cv2.resize`` with INTER_AREA maps full-size pixel centres to working ones by x_w = (x + 0.5) f - 0.5,
    so W_full = S^-1 W_w S with S that mapping.
    """
    if fx == 1.0 and fy == 1.0:
        return np.asarray(warp_w, np.float64).reshape(2, 3)
    s = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5], [0.0, 0.0, 1.0]])
    return (np.linalg.inv(s) @ _as3(warp_w) @ s)[:2]


def _describe_warp(warp: np.ndarray, w: int, h: int, method: str) -> dict[str, Any]:
    a = np.asarray(warp, np.float64)
    lin = a[:, :2]
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    centre_shift = lin @ c + a[:, 2] - c
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1], [(w - 1) / 2, (h - 1) / 2]], np.float64)
    disp = corners @ lin.T + a[:, 2] - corners
    det = float(np.linalg.det(lin))
    return {
        "dx": float(centre_shift[0]),
        "dy": float(centre_shift[1]),
        "scale": math.sqrt(abs(det)),
        "scale_x": float(np.hypot(lin[0, 0], lin[1, 0])),
        "scale_y": float(np.hypot(lin[0, 1], lin[1, 1])),
        "rotation_deg": math.degrees(math.atan2(lin[1, 0] - lin[0, 1], lin[0, 0] + lin[1, 1])),
        "max_displacement_px": float(np.abs(disp).max()),
        "method": method,
        "matrix": [[float(v) for v in row] for row in a],
    }


def _plausible(warp: np.ndarray, w: int, h: int) -> bool:
    d = _describe_warp(warp, w, h, "")
    return bool(
        np.all(np.isfinite(warp))
        and abs(d["scale_x"] - 1) < _MAX_SCALE_CHANGE and abs(d["scale_y"] - 1) < _MAX_SCALE_CHANGE
        and abs(d["rotation_deg"]) < _MAX_ROTATION_DEG
        and abs(d["dx"]) < _MAX_SHIFT_FRACTION * w and abs(d["dy"]) < _MAX_SHIFT_FRACTION * h
    )


def _warp_rgb(img: FloatArray, warp: np.ndarray) -> tuple[FloatArray, BoolArray]:
    """``img`` resampled on the original's grid (pixel p takes img at warp·p), and where that sample lies
    inside ``img`` (elsewhere the edited picture has no content for the original's pixel)."""
    import cv2

    h, w = img.shape[:2]
    if np.allclose(warp, np.eye(2, 3)):
        return img, np.ones((h, w), bool)
    flags = cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP
    m = np.asarray(warp, np.float64)
    out = cv2.warpAffine(img, m, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    ones = np.ones((h, w), np.float32)
    cover = cv2.warpAffine(ones, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # Lanczos-4 reads four pixels around the sample: stay that far from the replicated border.
    valid = cv2.erode((cover >= 0.999).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    return np.asarray(out, np.float32), np.asarray(valid)


def _warp_gray(g: FloatArray, warp: np.ndarray) -> tuple[FloatArray, BoolArray]:
    import cv2

    h, w = g.shape
    m = np.asarray(warp, np.float64)
    out = cv2.warpAffine(g, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    cover = cv2.warpAffine(np.ones((h, w), np.float32), m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.asarray(out, np.float32), np.asarray(cover >= 0.999)


def _gray_residual(og: FloatArray, eg: FloatArray, warp: np.ndarray,
                   exclude: BoolArray | None) -> tuple[FloatArray, BoolArray]:
    """|original - (a·warped edit + b)| on blurred grays, with (a, b) a robust fit (ECC is blind to
    brightness and contrast, so the residual must be too), and the validity of the warped pixels."""
    import cv2

    warped, valid = _warp_gray(eg, warp)
    ob = cv2.GaussianBlur(og, (0, 0), 1.0)
    wb = cv2.GaussianBlur(warped, (0, 0), 1.0)
    sel = valid if exclude is None else valid & ~exclude
    if sel.sum() < 16:
        return np.abs(ob - wb), valid
    step = max(1, int(math.sqrt(sel.sum() / 8000)))
    xs, ys = wb[::step, ::step][sel[::step, ::step]], ob[::step, ::step][sel[::step, ::step]]
    if xs.size < 16:
        xs, ys = wb[sel], ob[sel]
    x1 = np.stack([xs, np.ones_like(xs)], axis=1).astype(np.float64)
    y1 = ys[:, None].astype(np.float64)
    coef, _, _ = _irls(lambda w: _wls(x1, y1, w), lambda c: x1 @ c, y1, iters=6)
    r = np.abs(ob - (coef[0, 0] * wb + coef[1, 0])).astype(np.float32)
    return r, valid


def _alignment_cost(og: FloatArray, eg: FloatArray, warp: np.ndarray, exclude: BoolArray | None) -> float:
    """Median photometric-invariant residual: robust to an edit covering up to half of the picture."""
    r, valid = _gray_residual(og, eg, warp, exclude)
    sel = valid if exclude is None else valid & ~exclude
    vals = r[::2, ::2][sel[::2, ::2]]  # every other pixel: the median is just as stable, twice as fast
    return float(np.median(vals)) if vals.size else float("inf")


def _alignment_inliers(og: FloatArray, eg: FloatArray, warp: np.ndarray, exclude: BoolArray | None,
                       unit: int) -> BoolArray:
    """Pixels that agree with the current alignment (residual within the noise): the ones ECC may use."""
    import cv2

    r, valid = _gray_residual(og, eg, warp, exclude)
    sel = valid if exclude is None else valid & ~exclude
    vals = r[sel]
    if vals.size < 16:
        return sel
    med = float(np.median(vals))
    thr = max(med + 5.0 * 1.4826 * float(np.median(np.abs(vals - med))), 4.0)
    outliers = cv2.dilate((r > thr).astype(np.uint8), _disk(3 * unit)) > 0
    inl = sel & ~outliers
    # Keep at least a quarter of the picture; otherwise the residual is not telling edit from drift.
    return inl if inl.mean() > 0.25 else sel


def _feature_similarity(og: FloatArray, eg: FloatArray, exclude: BoolArray | None) -> np.ndarray | None:
    """ORB matches with a ratio test, then a RANSAC similarity (rotation, uniform scale, shift). Matches in
    the edited region do not agree with the drift and end up as RANSAC outliers."""
    import cv2

    a = np.clip(og, 0, 255).astype(np.uint8)
    b = np.clip(eg, 0, 255).astype(np.uint8)
    orb = cv2.ORB.create(nfeatures=2000)
    mask = None if exclude is None else (~exclude).astype(np.uint8) * 255
    try:
        k1, d1 = orb.detectAndCompute(a, mask)
        k2, d2 = orb.detectAndCompute(b, None)
    except cv2.error:
        return None
    if d1 is None or d2 is None or len(k1) < 8 or len(k2) < 8:
        return None
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(d1, d2, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.75 * p[1].distance]
    if len(good) < 8:
        return None
    src = np.array([k1[m.queryIdx].pt for m in good], np.float32)
    dst = np.array([k2[m.trainIdx].pt for m in good], np.float32)
    m, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=2.0,
                                             maxIters=3000, confidence=0.995, refineIters=10)
    if m is None or inliers is None or int(inliers.sum()) < 8:
        return None
    return np.asarray(m, np.float64)


def _ecc_pyramid(og: FloatArray, eg: FloatArray, warp: np.ndarray, inliers: BoolArray,
                 levels: int) -> np.ndarray | None:
    """ECC affine refinement, coarse to fine on a Gaussian pyramid, on the ``inliers`` of the original only.

    ``pyrDown`` puts coarse pixel i on fine pixel 2i, so between levels only the translation doubles.
    Returns None when ECC failed at every level.
    """
    import cv2

    pyr_o: list[np.ndarray] = [og]
    pyr_e: list[np.ndarray] = [eg]
    pyr_m: list[np.ndarray] = [inliers.astype(np.uint8) * 255]
    while len(pyr_o) < levels and min(pyr_o[-1].shape) >= 2 * 48:
        pyr_o.append(cv2.pyrDown(pyr_o[-1]))
        pyr_e.append(cv2.pyrDown(pyr_e[-1]))
        m = pyr_m[-1]
        pyr_m.append(cv2.resize(m, (pyr_o[-1].shape[1], pyr_o[-1].shape[0]), interpolation=cv2.INTER_NEAREST))
    n = len(pyr_o)
    w = np.asarray(warp, np.float32).copy()
    w[:, 2] /= 2 ** (n - 1)
    ok = False
    for level in range(n - 1, -1, -1):
        iters = 60 if level else 40
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iters, 1e-6)
        full = np.full(pyr_e[level].shape, 255, np.uint8)
        try:
            _, found = cv2.findTransformECCWithMask(pyr_o[level], pyr_e[level], pyr_m[level], full, w,
                                                    cv2.MOTION_AFFINE, crit, 5)
            w = np.asarray(found, np.float32)
            ok = True
        except cv2.error:
            pass  # did not converge at this level: keep the estimate from the coarser one
        if level:
            w[:, 2] *= 2
    return np.asarray(w, np.float64) if ok else None


# ---------------------------------------------------------------------------------------------------
# Colour helpers
# ---------------------------------------------------------------------------------------------------
def _wls(x: np.ndarray, y: np.ndarray, w: np.ndarray, prior: tuple[np.ndarray, np.ndarray] | None = None,
         prior_weight: float = 0.0) -> np.ndarray:
    """Weighted least squares by the normal equations (a few unknowns, many samples: fast and exact enough).

    ``prior`` rows (x, y) are added with a total weight of ``prior_weight`` times the data's: a Tikhonov
    pull toward the model those rows describe, which only matters where the data leave the model
    undetermined (e.g. a picture made of one colour cannot say what happens to the others).
    """
    xw = x * w[:, None]
    a = xw.T @ x
    b = xw.T @ y
    if prior is not None and prior_weight > 0:
        xp, yp = prior
        k = prior_weight * float(w.sum()) / len(xp)
        a = a + k * (xp.T @ xp)
        b = b + k * (xp.T @ yp)
    a = a + 1e-9 * np.eye(x.shape[1])
    return np.asarray(np.linalg.solve(a, b))


def _irls(fit: Callable[[np.ndarray], np.ndarray], predict: Callable[[np.ndarray], np.ndarray], y: np.ndarray,
          iters: int = 10) -> tuple[np.ndarray, np.ndarray, float]:
    """Robust fit by iteratively re-weighted least squares: least squares, then Huber weights, then Tukey's
    biweight (which gives changed pixels weight 0). Residuals are vector norms; their median is the scale.

    Args:
        fit: weights -> model (a weighted least-squares solve).
        predict: model -> predicted ``y``.
        y: the targets, (n, k).
        iters: re-weighting rounds.

    Returns:
        (model, weights, scale).
    """
    w = np.ones(len(y))
    model = fit(w)
    scale = 1.0
    for it in range(iters):
        r = np.sqrt(((y - predict(model)) ** 2).sum(axis=1))
        scale = max(float(np.median(r)), 0.5)  # floor: 8-bit quantisation, never a zero scale
        if it < iters // 2:
            w = np.minimum(1.0, 1.5 * scale / np.maximum(r, 1e-9))
        else:
            u = r / (3.0 * scale)
            w = np.where(u < 1.0, (1.0 - u * u) ** 2, 0.0)
        if (w > 0).sum() < 16:
            break
        model = fit(w)
    return model, w, scale


@dataclass
class _ColorModel:
    """corrected = edited @ matrix.T + bias (0-255 units)."""

    model: str
    matrix: np.ndarray
    bias: np.ndarray
    residual: float
    mean_shift_delta_e: float
    shift_p90: float = 0.0

    def apply(self, rgb: FloatArray) -> FloatArray:
        if self.model == "identity":
            return rgb
        import cv2

        m = np.hstack([self.matrix, self.bias[:, None]]).astype(np.float32)
        return np.asarray(cv2.transform(np.ascontiguousarray(rgb, np.float32), m), np.float32)

    def forward(self, rgb: FloatArray) -> FloatArray:
        """The cast itself (the inverse of :meth:`apply`): original colours as the editor's output shows them,
        clipped to 0-255 as an 8-bit output is."""
        if self.model == "identity":
            return rgb
        import cv2

        if abs(float(np.linalg.det(self.matrix))) < 1e-3:
            return rgb  # degenerate fit: compare without the cast rather than amplify noise
        inv = np.linalg.inv(self.matrix)
        m = np.hstack([inv, (-inv @ self.bias)[:, None]]).astype(np.float32)
        out = cv2.transform(np.ascontiguousarray(rgb, np.float32), m)
        return np.clip(np.asarray(out, np.float32), 0.0, 255.0)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "matrix": [[round(float(v), 6) for v in row] for row in self.matrix],
            "bias": [round(float(v), 4) for v in self.bias],
            "gain": [round(float(v), 6) for v in np.diag(self.matrix)],
            "offset": [round(float(v), 4) for v in self.bias],
            "residual": round(self.residual, 4),
            "mean_shift_delta_e": round(self.mean_shift_delta_e, 4),
            "shift_p90_levels": round(self.shift_p90, 4),
        }


def _fit_color(src: FloatArray, dst: FloatArray, usable: BoolArray, max_samples: int = 20000) -> _ColorModel:
    """Fit the colour cast from the aligned edit (``src``) to the original (``dst``) on ``usable`` pixels.

    Clipped pixels (0 or 255 in either image) are left out: their true value is unknown. Both a 3x3+bias
    model and a per-channel gain/offset are fitted; the matrix is kept only when its residual is clearly
    smaller, because on colours absent from the unchanged part (the edit's) the simpler model extrapolates
    more safely.
    """
    idx = np.flatnonzero(usable.reshape(-1))
    if idx.size > max_samples:
        idx = idx[:: idx.size // max_samples]  # a regular stride: deterministic and spread over the picture
    xs = src.reshape(-1, 3)[idx].astype(np.float64)
    ys = dst.reshape(-1, 3)[idx].astype(np.float64)
    unclipped = (xs.min(axis=1) > 0.5) & (xs.max(axis=1) < 254.5) & (ys.min(axis=1) > 0.5) & (ys.max(axis=1) < 254.5)
    xs, ys = xs[unclipped], ys[unclipped]
    if len(xs) < 50:
        return _ColorModel("identity", np.eye(3), np.zeros(3), 0.0, 0.0)
    x1 = np.hstack([xs, np.ones((len(xs), 1))])

    # Per channel first: three 1-D fits sharing one weight per pixel, so every channel rejects the edit.
    def fit_diag(w: np.ndarray) -> np.ndarray:
        coef = np.zeros((4, 3))
        for c in range(3):
            g, o = _wls(x1[:, [c, 3]], ys[:, c], w)
            coef[c, c], coef[3, c] = g, o
        return coef

    def predict(coef: np.ndarray) -> np.ndarray:
        return x1 @ coef

    coef_diag, w_diag, s_diag = _irls(fit_diag, predict, ys)
    # The 3x3 model, pulled toward the per-channel one by prior rows on a grid of the RGB cube (2 % of the
    # data's weight): where the picture's colours leave the matrix undetermined (a blue sky says nothing
    # about reds) it stays per-channel instead of extrapolating wildly.
    grid = np.linspace(16.0, 240.0, 5)
    cube = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1).reshape(-1, 3)
    cube1 = np.hstack([cube, np.ones((len(cube), 1))])
    prior = (cube1, cube1 @ coef_diag)
    coef_full, w_full, s_full = _irls(lambda w: _wls(x1, ys, w, prior, _COLOR_PRIOR), predict, ys)

    if s_full < 0.85 * s_diag:
        matrix, bias, scale, weights, model = coef_full[:3].T, coef_full[3], s_full, w_full, "matrix"
    else:
        matrix, bias, scale, weights, model = coef_diag[:3].T, coef_diag[3], s_diag, w_diag, "per_channel"
    # How far the correction moves the unchanged colours: drift moves them a little, a relight a lot.
    inl = weights > 0.5
    if inl.sum() >= 10:
        before = xs[inl].astype(np.float32)[:, None, :]
        after = np.clip(before[:, 0, :] @ matrix.T + bias, 0, 255).astype(np.float32)[:, None, :]
        diff = _lab(before) - _lab(after)
        shift = float(np.sqrt((diff * diff).sum(axis=2)).mean())
        p90 = float(np.percentile(np.abs(after - before).max(axis=2), 90))
    else:
        shift = p90 = 0.0
    return _ColorModel(model, np.asarray(matrix, np.float64), np.asarray(bias, np.float64), scale, shift, p90)


# ---------------------------------------------------------------------------------------------------
# Simulation (benchmark and tests)
# ---------------------------------------------------------------------------------------------------
@dataclass
class SimulatedEdit:
    """A synthetic editor output with known ground truth.

    Attributes:
        original: the input picture.
        edited: the clean local edit on the original's grid (what a perfect editor would return).
        drifted: ``edited`` after global drift, colour cast and noise (what the editor "returned").
        edit_mask: True where ``edited`` differs from ``original`` (the edit's footprint, soft edge included).
        warp: 2x3 affine of the drift, original pixel coordinates to drifted ones.
        gain: per-channel colour gain of the cast.
        offset: per-channel colour offset of the cast (0-255 units).
        kind: the local edit (``recolor``, ``blur_tint`` or ``texture``).
    """

    original: Image.Image
    edited: Image.Image
    drifted: Image.Image
    edit_mask: np.ndarray
    warp: np.ndarray
    gain: np.ndarray
    offset: np.ndarray
    kind: str


EDIT_KINDS = ("recolor", "blur_tint", "texture")


def _edit_region(rng: np.random.Generator, h: int, w: int, area: float, blob: bool) -> np.ndarray:
    """A region covering about ``area`` of the picture, away from the frame: a rectangle or a smooth blob."""
    import cv2

    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    aspect = rng.uniform(0.6, 1.6)
    if not blob:
        rh = math.sqrt(area * h * w / aspect)
        rw = area * h * w / rh
        y0, x0 = int(max(0.08 * h, cy - rh / 2)), int(max(0.08 * w, cx - rw / 2))
        y1, x1 = int(min(0.92 * h, y0 + rh)), int(min(0.92 * w, x0 + rw))
        m = np.zeros((h, w), bool)
        m[y0:y1, x0:x1] = True
        return m
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    sy, sx = math.sqrt(aspect) * min(h, w) * 0.2, min(h, w) * 0.2 / math.sqrt(aspect)
    field_ = -(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), min(h, w) / 16)
    field_ = field_ + 0.8 * noise / max(float(noise.std()), 1e-6)
    margin = np.zeros((h, w), bool)
    margin[int(0.08 * h):int(0.92 * h), int(0.08 * w):int(0.92 * w)] = True
    thr = np.quantile(field_[margin], 1.0 - area * h * w / margin.sum())
    m = (field_ >= thr) & margin
    from scipy import ndimage

    labels, n = ndimage.label(m)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        m = labels == int(np.argmax(sizes))
    return m


def _local_edit(rng: np.random.Generator, img: np.ndarray, kind: str) -> np.ndarray:
    """The picture with the edit applied everywhere (it is composited through the region afterwards)."""
    import cv2

    f = img.astype(np.float32)
    h, w = img.shape[:2]
    if kind == "recolor":
        hsv = cv2.cvtColor(f / 255.0, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(90, 180)) % 360.0
        hsv[..., 1] = np.maximum(hsv[..., 1], 0.55)  # a hue turn on grey pixels would change nothing
        return np.asarray(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)) * 255.0
    if kind == "blur_tint":
        tint = rng.uniform(0, 255, 3).astype(np.float32)
        return 0.6 * cv2.GaussianBlur(f, (0, 0), 6.0) + 0.4 * tint
    # texture: band-limited stripes in two colours, shaded by the picture's own light (period >= 10 px, so
    # the pattern survives resampling and is a fair test of the kept edit).
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(10, 20)
    t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pattern = t[..., None] * c1 + (1 - t[..., None]) * c2
    shade = cv2.GaussianBlur(f.mean(axis=2), (0, 0), 3.0)[..., None] / 128.0
    return np.clip(pattern * (0.5 + 0.5 * shade), 0, 255)


def simulate_edit(image: Image.Image, seed: int, *, kind: str | None = None, area: float | None = None,
                  blob: bool | None = None, drift: float | None = None, noise: float = 2.0) -> SimulatedEdit:
    """A local edit plus the drift FLUX.1 Kontext adds, with the ground truth kept.

    The edit (hue turn, blur + tint, or a stripe texture) covers 5-20 % of the picture in a rectangle or a
    blob, with a 1.5 px soft edge. The drift is a 1-3 % shift and a 1-3 % zoom about the centre, a rotation
    up to 1°, a per-channel gain in 0.9-1.1 with an offset in ±8 levels, and Gaussian noise.

    Args:
        image: the original picture (converted to RGB).
        seed: makes every random choice.
        kind: one of ``EDIT_KINDS``; random when None.
        area: share of the picture to edit; random in 0.05-0.2 when None.
        blob: blob (True) or rectangle (False); random when None.
        drift: size of the shift and zoom as a fraction (default: random in 0.01-0.03).
        noise: standard deviation of the added noise, 0-255 units.

    Returns:
        a :class:`SimulatedEdit`.

    Raises:
        InvalidRequest: ``kind`` is unknown.
    """
    import cv2

    rng = np.random.default_rng(seed)
    kind = kind if kind is not None else str(rng.choice(EDIT_KINDS))
    if kind not in EDIT_KINDS:
        raise InvalidRequest(f"simulated edit kind must be one of {', '.join(EDIT_KINDS)}, got {kind!r}", "kind")
    orig = _rgb_array(image)
    h, w = orig.shape[:2]
    area = area if area is not None else float(rng.uniform(0.05, 0.2))
    blob = blob if blob is not None else bool(rng.integers(0, 2))
    region = _edit_region(rng, h, w, area, blob)
    soft = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 1.5)[..., None]
    edited = orig.astype(np.float32) * (1 - soft) + _local_edit(rng, orig, kind) * soft
    edited_u8 = np.clip(np.rint(edited), 0, 255).astype(np.uint8)
    edit_mask = np.abs(edited_u8.astype(np.int16) - orig.astype(np.int16)).max(axis=2) > 0
    edit_mask |= soft[..., 0] > 0.01

    def amount() -> float:
        d = drift if drift is not None else rng.uniform(0.01, 0.03)
        return float(d * rng.choice([-1.0, 1.0]))

    scale = 1.0 + amount()
    shift = np.array([amount() * w, amount() * h])
    angle = math.radians(rng.uniform(-1.0, 1.0))
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    lin = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    warp = np.hstack([lin, (c + shift - lin @ c)[:, None]])
    # Forward warp: content at p moves to warp·p. Reflection fills the uncovered border plausibly.
    moved = cv2.warpAffine(edited_u8.astype(np.float32), warp, (w, h), flags=cv2.INTER_LANCZOS4,
                           borderMode=cv2.BORDER_REFLECT_101)
    gain = rng.uniform(0.9, 1.1, 3)
    offset = rng.uniform(-8.0, 8.0, 3)
    cast = moved * gain + offset + rng.normal(0.0, noise, moved.shape)
    drifted = np.clip(np.rint(cast), 0, 255).astype(np.uint8)
    return SimulatedEdit(Image.fromarray(orig, "RGB"), Image.fromarray(edited_u8, "RGB"),
                         Image.fromarray(drifted, "RGB"), edit_mask, warp, gain, offset, kind)


def simulate_restyle(image: Image.Image, seed: int, kind: str = "grade") -> Image.Image:
    """A whole-picture change the lock must leave alone.

    Args:
        image: the original picture.
        seed: makes the random choices.
        kind: ``grade`` (non-linear teal-and-orange colour grade, saturation boost and a blur, plus drift) or
            ``relight`` (a strong affine exposure and tint change, plus drift).

    Returns:
        the restyled picture, RGB, the original's size.

    Raises:
        InvalidRequest: ``kind`` is unknown.
    """
    import cv2

    if kind not in ("grade", "relight"):
        raise InvalidRequest(f"restyle kind must be grade or relight, got {kind!r}", "kind")
    rng = np.random.default_rng(seed)
    f = _rgb_array(image).astype(np.float32) / 255.0
    h, w = f.shape[:2]
    if kind == "grade":
        gammas = np.array([0.6, 0.9, 1.5]) if rng.integers(0, 2) else np.array([1.5, 0.9, 0.6])
        g = f ** gammas
        grey = g.mean(axis=2, keepdims=True)
        g = np.clip(grey + 1.6 * (g - grey), 0, 1)
        g = cv2.GaussianBlur(g.astype(np.float32), (0, 0), 2.5)
    else:
        g = np.clip(f * np.array([1.35, 1.1, 0.7]) + np.array([0.08, 0.02, -0.02]), 0, 1)
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    scale = 1.0 + rng.uniform(0.01, 0.02)
    warp = np.hstack([scale * np.eye(2), (c * (1 - scale))[:, None]])
    g = cv2.warpAffine(np.asarray(g, np.float32), warp, (w, h), flags=cv2.INTER_CUBIC,
                       borderMode=cv2.BORDER_REFLECT_101)
    out = g * 255.0 + rng.normal(0, 2.0, g.shape)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")
