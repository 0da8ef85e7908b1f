#!/usr/bin/env python
"""Pixel lock on simulated editor drift: how much of the untouched picture comes back, and is the edit kept?

Real photos (scikit-image's astronaut, coffee, chelsea, rocket and matplotlib's grace_hopper sample), scaled
to a long side of 512 px. For each photo and seed ``kontext_studio.analysis.pixel_lock.simulate_edit``
makes a simulated Kontext answer with known ground truth:

* a local edit on 5-20 % of the picture (rectangle or blob, 1.5 px soft edge): a hue turn (``recolor``), a
  heavy blur with a colour tint (``blur_tint``) or a stripe texture (``texture``), cycling with the seed;
* global drift on top: a 1-3 % shift and zoom about the centre, a rotation up to 1°, a per-channel colour
  gain in 0.9-1.1 with an offset in ±8 levels, Gaussian noise sigma 2.

``pixel_lock(original, drifted)`` then runs and the table reports, against the original:

* unchanged region = the complement of the true edit mask, eroded by ``--erode`` px (default 3): PSNR and
  SSIM (mean of the SSIM map over the region) of the drifted input ("before") and of the result ("after");
* edit region = the true edit mask (soft edge included): PSNR and mean absolute difference of the result
  against the ground-truth edited picture on the original's grid (the edit as a perfect editor would have
  placed it), and the share of the edit inside the result's ``changed_mask`` (recall);
* the share of the unchanged region that was kept from the edit anyway (over-kept);
* the alignment error: largest displacement between the estimated and the true drift over the frame;
* estimated against true changed fraction, and wall time per call.

Then the global cases, which must be left alone (``applied`` False): a non-linear teal-and-orange colour
grade with a blur and a relight (strong exposure and tint change), both with a small zoom; and the trivial
ones: identical input (must come back unchanged with changed fraction 0) and drift without any edit.

Outside ``changed_mask`` the result is the original byte for byte, so "after" PSNR in the unchanged region
is limited only by how far the mask (with its 1.2 % safety margin and feather) reaches past the true edit
into that region: it is a measure of how tight the mask is, not of resampling quality.

Usage:
    .venv/bin/python benchmarks/pixel_lock.py [--seeds 3] [--size 512] [--erode 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "grace_hopper")
TARGET_UNCHANGED_PSNR = 40.0
TARGET_EDIT_PSNR = 30.0
PSNR_CAP = 99.0  # identical pixels have infinite PSNR; reported as this

_human = True


def say(line: str = "") -> None:
    """Human-readable output (suppressed with --json, where stdout carries only the JSON document)."""
    if _human:
        print(line, flush=True)


def load_photo(name: str, size: int) -> Image.Image:
    """One of the benchmark photos, RGB, scaled (Lanczos) so its long side is ``size``."""
    if name == "grace_hopper":
        import matplotlib

        img = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    else:
        from skimage import data

        img = Image.fromarray(getattr(data, name)()).convert("RGB")
    scale = size / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    d = a.astype(np.float64)[region] - b.astype(np.float64)[region]
    mse = float((d * d).mean()) if d.size else 0.0
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


def ssim_mean(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    _, smap = structural_similarity(a, b, channel_axis=2, data_range=255, full=True)
    return float(smap.mean(axis=2)[region].mean())


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    import cv2

    if px <= 0:
        return mask
    return cv2.erode(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)) > 0


def drift_error(true_warp: np.ndarray, est: list[list[float]], w: int, h: int) -> float:
    """Largest displacement (px) between the true and the estimated drift over a grid covering the frame."""
    yy, xx = np.mgrid[0:h:8, 0:w:8]
    pts = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    diff = (np.asarray(true_warp) - np.asarray(est)) @ pts
    return float(np.abs(diff).max())


def run_case(name: str, img: Image.Image, seed: int, erode_px: int) -> dict[str, Any]:
    from kontext_studio.analysis.pixel_lock import EDIT_KINDS, pixel_lock, simulate_edit

    kind = EDIT_KINDS[seed % len(EDIT_KINDS)]
    sim = simulate_edit(img, seed, kind=kind, blob=bool(seed % 2))
    t0 = time.perf_counter()
    res = pixel_lock(sim.original, sim.drifted)
    wall = time.perf_counter() - t0
    o = np.asarray(sim.original)
    d = np.asarray(sim.drifted)
    e = np.asarray(sim.edited)
    r = np.asarray(res.image.convert("RGB"))
    unchanged = erode(~sim.edit_mask, erode_px)
    edit = sim.edit_mask
    kept = np.asarray(res.changed_mask) > 0 if res.changed_mask is not None else np.zeros(edit.shape, bool)
    return {
        "photo": name, "seed": seed, "kind": kind, "shape": "blob" if seed % 2 else "rectangle",
        "size": f"{img.width}x{img.height}",
        "applied": res.applied, "global_change": res.global_change, "reason": res.reason,
        "psnr_before": psnr(o, d, unchanged), "psnr_after": psnr(o, r, unchanged),
        "ssim_before": ssim_mean(o, d, unchanged), "ssim_after": ssim_mean(o, r, unchanged),
        "edit_psnr": psnr(e, r, edit),
        "edit_mae": float(np.abs(e.astype(np.float64) - r.astype(np.float64))[edit].mean()),
        "edit_recall": float(kept[edit].mean()),
        "over_kept": float(kept[unchanged].mean()),
        "align_error_px": drift_error(sim.warp, res.alignment["matrix"], img.width, img.height),
        "changed_true": float(edit.mean()), "changed_est": res.changed_fraction,
        "true_drift": {"gain": sim.gain.round(4).tolist(), "offset": sim.offset.round(3).tolist(),
                       "matrix": np.asarray(sim.warp).round(5).tolist()},
        "result": res.as_dict(),
        "wall_s": wall,
    }


def run_global(name: str, img: Image.Image) -> list[dict[str, Any]]:
    from kontext_studio.analysis.pixel_lock import pixel_lock, simulate_edit, simulate_restyle

    rows = []
    for kind in ("grade", "relight"):
        styled = simulate_restyle(img, 0, kind)
        t0 = time.perf_counter()
        res = pixel_lock(img, styled)
        rows.append({"photo": name, "case": f"restyle:{kind}", "wall_s": time.perf_counter() - t0,
                     "ok": (not res.applied) and res.global_change and res.image is styled,
                     "applied": res.applied, "global_change": res.global_change,
                     "changed_fraction": res.changed_fraction,
                     "color_shift_p90": res.color_correction.get("shift_p90_levels"), "reason": res.reason})
    t0 = time.perf_counter()
    res = pixel_lock(img, img.copy())
    same = np.array_equal(np.asarray(res.image), np.asarray(img))
    rows.append({"photo": name, "case": "identical", "wall_s": time.perf_counter() - t0,
                 "ok": same and res.changed_fraction == 0.0, "applied": res.applied,
                 "global_change": res.global_change, "changed_fraction": res.changed_fraction,
                 "reason": res.reason})
    sim = simulate_edit(img, 7, area=1e-6)  # drift, cast and noise, but no edit
    t0 = time.perf_counter()
    res = pixel_lock(sim.original, sim.drifted)
    whole = np.ones(sim.edit_mask.shape, bool)
    after = psnr(np.asarray(sim.original), np.asarray(res.image.convert("RGB")), whole)
    rows.append({"photo": name, "case": "drift_only", "wall_s": time.perf_counter() - t0,
                 "ok": res.applied and after >= TARGET_UNCHANGED_PSNR, "applied": res.applied,
                 "global_change": res.global_change, "changed_fraction": res.changed_fraction,
                 "psnr_before": psnr(np.asarray(sim.original), np.asarray(sim.drifted), whole),
                 "psnr_after": after, "reason": res.reason})
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def col(k: str) -> list[float]:
        return [float(r[k]) for r in rows]

    return {
        "cases": len(rows),
        "applied": sum(bool(r["applied"]) for r in rows),
        "psnr_before_mean": statistics.fmean(col("psnr_before")),
        "psnr_after_mean": statistics.fmean(col("psnr_after")),
        "psnr_after_min": min(col("psnr_after")),
        "ssim_before_mean": statistics.fmean(col("ssim_before")),
        "ssim_after_mean": statistics.fmean(col("ssim_after")),
        "ssim_after_min": min(col("ssim_after")),
        "edit_psnr_mean": statistics.fmean(col("edit_psnr")),
        "edit_psnr_min": min(col("edit_psnr")),
        "edit_mae_mean": statistics.fmean(col("edit_mae")),
        "edit_recall_min": min(col("edit_recall")),
        "over_kept_mean": statistics.fmean(col("over_kept")),
        "align_error_px_mean": statistics.fmean(col("align_error_px")),
        "align_error_px_max": max(col("align_error_px")),
        "wall_s_median": statistics.median(col("wall_s")),
        "wall_s_max": max(col("wall_s")),
    }


def main(argv: list[str] | None = None) -> int:
    global _human
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seeds", type=int, default=3, help="simulated edits per photo (kinds cycle with the seed)")
    ap.add_argument("--size", type=int, default=512, help="long side of the photos in pixels")
    ap.add_argument("--erode", type=int, default=3, help="pixels the unchanged region is eroded by")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = ap.parse_args(argv)
    _human = not args.json

    import cv2

    photos = {name: load_photo(name, args.size) for name in PHOTOS}
    # Warm-up: the first call pays OpenCV's and SciPy's lazy initialisation.
    from kontext_studio.analysis.pixel_lock import pixel_lock

    pixel_lock(photos["astronaut"], photos["astronaut"])
    out: dict[str, Any] = {
        "size": args.size, "seeds": args.seeds, "erode_px": args.erode, "cpu_count": os.cpu_count(),
        "opencv_threads": cv2.getNumThreads(),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    t_start = time.perf_counter()
    say(f"pixel lock on simulated drift: {len(PHOTOS)} photos at long side {args.size} px, {args.seeds} seed(s)"
        f" each; unchanged region = true edit mask's complement eroded by {args.erode} px")
    say()
    head = (f"{'photo':<13}{'seed':>4} {'edit':<10}{'PSNR before':>12}{'after':>7}{'SSIM before':>12}{'after':>7}"
            f"{'edit PSNR':>10}{'edit MAE':>9}{'recall':>7}{'over':>6}{'align px':>9}{'changed':>13}{'ms':>6}")
    say(head)
    rows: list[dict[str, Any]] = []
    per_photo: dict[str, dict[str, Any]] = {}
    for name, img in photos.items():
        prow = []
        for seed in range(args.seeds):
            r = run_case(name, img, seed, args.erode)
            prow.append(r)
            flag = "" if r["applied"] else f"  NOT APPLIED: {r['reason']}"
            say(f"{name:<13}{seed:>4} {r['kind']:<10}{r['psnr_before']:12.1f}{r['psnr_after']:7.1f}"
                f"{r['ssim_before']:12.3f}{r['ssim_after']:7.3f}{r['edit_psnr']:10.1f}{r['edit_mae']:9.2f}"
                f"{r['edit_recall']:7.3f}{r['over_kept']:6.3f}{r['align_error_px']:9.3f}"
                f"{r['changed_est']:6.3f}/{r['changed_true']:.3f}{1000 * r['wall_s']:6.0f}{flag}")
        per_photo[name] = summarise(prow)
        rows.extend(prow)
    out["cases"] = rows
    out["per_photo"] = per_photo
    out["overall"] = overall = summarise(rows)
    say()
    say(f"{'per photo':<13}{'PSNR before':>16}{'after':>7}{'min':>6}{'SSIM after':>11}{'edit PSNR':>10}{'min':>6}"
        f"{'align px':>9}{'ms':>6}")
    for name, s in [*per_photo.items(), ("OVERALL", overall)]:
        say(f"{name:<13}{s['psnr_before_mean']:16.1f}{s['psnr_after_mean']:7.1f}{s['psnr_after_min']:6.1f}"
            f"{s['ssim_after_mean']:11.4f}{s['edit_psnr_mean']:10.1f}{s['edit_psnr_min']:6.1f}"
            f"{s['align_error_px_mean']:9.3f}{1000 * s['wall_s_median']:6.0f}")
    say()
    say(f"targets: unchanged region after >= {TARGET_UNCHANGED_PSNR:.0f} dB (worst case "
        f"{overall['psnr_after_min']:.1f} dB), edit region vs ground truth >= {TARGET_EDIT_PSNR:.0f} dB (worst case "
        f"{overall['edit_psnr_min']:.1f} dB); lock applied in {overall['applied']}/{overall['cases']} local edits")
    say(f"runtime per {args.size} px image: median {1000 * overall['wall_s_median']:.0f} ms, max "
        f"{1000 * overall['wall_s_max']:.0f} ms ({os.cpu_count()} CPU cores, OpenCV threads {cv2.getNumThreads()})")
    say()

    say("global and trivial cases (the lock must not apply to restyles; identical input must come back as is)")
    grows: list[dict[str, Any]] = []
    for name, img in photos.items():
        for g in run_global(name, img):
            grows.append(g)
            extra = ""
            if "psnr_after" in g:
                extra = f" PSNR {g['psnr_before']:.1f} -> {g['psnr_after']:.1f} dB;"
            say(f"  {name:<13}{g['case']:<16}{'ok' if g['ok'] else 'FAILED':<7} applied={g['applied']!s:<5} "
                f"changed {g['changed_fraction']:.3f};{extra} {g['reason']}")
    out["global_cases"] = grows
    out["global_ok"] = all(g["ok"] for g in grows)
    out["targets_met"] = bool(
        overall["psnr_after_min"] >= TARGET_UNCHANGED_PSNR and overall["edit_psnr_min"] >= TARGET_EDIT_PSNR
        and overall["applied"] == overall["cases"] and out["global_ok"]
    )
    out["wall_s"] = time.perf_counter() - t_start
    out["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    say()
    say(f"all targets met: {'yes' if out['targets_met'] else 'NO'}; benchmark time {out['wall_s']:.1f} s")
    if args.json:
        print(json.dumps(out, indent=2, default=float))
    return 0 if out["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
