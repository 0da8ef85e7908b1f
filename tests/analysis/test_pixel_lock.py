"""Pixel lock on real photos with simulated Kontext drift (shift/zoom/rotation, colour cast, noise).

The photos are scaled to a long side of 384 px to keep the suite fast; ``benchmarks/pixel_lock.py`` runs the
same cases at 512 px with more seeds and prints the figures.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kontext_studio.analysis.pixel_lock import (
    EDIT_KINDS,
    PixelLockResult,
    SimulatedEdit,
    pixel_lock,
    simulate_edit,
    simulate_restyle,
)
from kontext_studio.core.errors import InvalidImage, InvalidRequest

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "grace_hopper")
SIZE = 384


@cache
def photo(name: str) -> Image.Image:
    if name == "grace_hopper":
        import matplotlib

        img = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    else:
        from skimage import data

        img = Image.fromarray(getattr(data, name)()).convert("RGB")
    scale = SIZE / max(img.size)
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float:
    d = a.astype(np.float64) - b.astype(np.float64)
    if region is not None:
        d = d[region]
    mse = float((d * d).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def eroded(mask: np.ndarray, px: int) -> np.ndarray:
    import cv2

    return cv2.erode(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)) > 0


def arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def drift_error(sim: SimulatedEdit, res: PixelLockResult) -> float:
    w, h = sim.original.size
    yy, xx = np.mgrid[0:h:8, 0:w:8]
    pts = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    return float(np.abs((sim.warp - np.asarray(res.alignment["matrix"])) @ pts).max())


@cache
def drift_case(name: str) -> tuple[SimulatedEdit, PixelLockResult]:
    i = PHOTOS.index(name)
    sim = simulate_edit(photo(name), seed=i, kind=EDIT_KINDS[i % len(EDIT_KINDS)], blob=bool(i % 2))
    return sim, pixel_lock(sim.original, sim.drifted)


# ---------------------------------------------------------------------------------------------------
# The repair itself
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PHOTOS)
def test_drift_is_undone_and_the_edit_survives(name: str) -> None:
    from skimage.metrics import structural_similarity

    sim, res = drift_case(name)
    o, d, e, r = arr(sim.original), arr(sim.drifted), arr(sim.edited), arr(res.image)
    unchanged = eroded(~sim.edit_mask, 3)

    assert res.applied and not res.global_change, res.reason
    assert res.image.size == sim.original.size
    # The simulated drift really is damaging before the lock...
    assert psnr(o, d, unchanged) < 25
    # ...and the untouched part comes back (target 40 dB; outside the mask the pixels are the original's).
    assert psnr(o, r, unchanged) >= 40
    _, smap = structural_similarity(o, r, channel_axis=2, data_range=255, full=True)
    assert smap.mean(axis=2)[unchanged].mean() >= 0.99
    # The edit is kept, on the original's grid and in the original's colours.
    assert psnr(e, r, sim.edit_mask) >= 30
    kept = np.asarray(res.changed_mask) > 0
    assert kept[sim.edit_mask].mean() >= 0.95
    # Geometry within a quarter pixel everywhere in the frame; changed area close to the truth.
    assert drift_error(sim, res) < 0.25
    assert abs(res.changed_fraction - sim.edit_mask.mean()) < 0.05
    assert res.kept_fraction >= res.changed_fraction


@pytest.mark.parametrize("name", ["astronaut", "rocket"])
def test_outside_the_changed_mask_the_pixels_are_the_originals(name: str) -> None:
    sim, res = drift_case(name)
    outside = np.asarray(res.changed_mask) == 0
    assert outside.mean() > 0.5
    assert np.array_equal(arr(res.image)[outside], arr(sim.original)[outside])


def test_the_report_matches_the_simulated_drift() -> None:
    sim, res = drift_case("coffee")
    a = res.alignment
    w, h = sim.original.size
    lin = sim.warp[:, :2]
    true_scale = math.sqrt(abs(np.linalg.det(lin)))
    true_rot = math.degrees(math.atan2(lin[1, 0] - lin[0, 1], lin[0, 0] + lin[1, 1]))
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    true_shift = lin @ c + sim.warp[:, 2] - c
    assert a["scale"] == pytest.approx(true_scale, abs=2e-3)
    assert a["rotation_deg"] == pytest.approx(true_rot, abs=0.05)
    assert (a["dx"], a["dy"]) == pytest.approx(tuple(true_shift), abs=0.2)
    # The colour model maps edited colours back: its gains invert the simulated cast.
    cc = res.color_correction
    assert np.asarray(cc["gain"]) == pytest.approx(1 / sim.gain, abs=0.02)
    assert cc["model"] in ("per_channel", "matrix")
    assert "drift undone" in res.reason and "colour cast undone" in res.reason


def test_drift_without_any_edit_returns_the_original() -> None:
    sim = simulate_edit(photo("chelsea"), seed=21, area=1e-6)
    res = pixel_lock(sim.original, sim.drifted)
    assert res.applied
    assert res.changed_fraction < 0.01
    assert psnr(arr(sim.original), arr(res.image)) >= 40


# ---------------------------------------------------------------------------------------------------
# Global change, mode off, user mask
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "kind"), [("astronaut", "grade"), ("rocket", "grade"), ("coffee", "relight"),
                                            ("grace_hopper", "relight")])
def test_a_global_restyle_is_left_alone(name: str, kind: str) -> None:
    styled = simulate_restyle(photo(name), seed=0, kind=kind)
    res = pixel_lock(photo(name), styled)
    assert not res.applied
    assert res.global_change
    assert res.image is styled
    assert res.reason.startswith("global change")


def test_global_fraction_is_the_threshold() -> None:
    sim, _ = drift_case("chelsea")
    res = pixel_lock(sim.original, sim.drifted, global_fraction=0.05)
    assert res.global_change and not res.applied
    assert res.image is sim.drifted
    assert "more than 5 %" in res.reason


def test_mode_off_returns_the_edit_untouched() -> None:
    sim, _ = drift_case("astronaut")
    res = pixel_lock(sim.original, sim.drifted, mode="off")
    assert res.image is sim.drifted
    assert not res.applied and not res.global_change
    assert res.changed_mask is None
    assert "off" in res.reason


def test_a_user_mask_replaces_the_estimate() -> None:
    sim = simulate_edit(photo("coffee"), seed=5, kind="recolor")
    mask = Image.fromarray(sim.edit_mask.astype(np.uint8) * 255, "L")
    res = pixel_lock(sim.original, sim.drifted, mask=mask)
    o, e, r = arr(sim.original), arr(sim.edited), arr(res.image)
    assert res.applied and res.mask_source == "user"
    assert res.changed_fraction == pytest.approx(sim.edit_mask.mean(), abs=1e-6)
    # Outside the user's mask: the original, byte for byte. Inside: the aligned, colour-corrected edit.
    assert np.array_equal(r[~sim.edit_mask], o[~sim.edit_mask])
    assert psnr(e, r, eroded(sim.edit_mask, 3)) >= 30


def test_a_user_mask_is_honoured_even_where_nothing_changed() -> None:
    sim, _ = drift_case("rocket")
    w, h = sim.original.size
    # A box the user painted (at another resolution) away from the edit: only it keeps the edited pixels.
    small = Image.new("L", (w // 2, h // 2), 0)
    small.paste(255, (4, 4, 40, 30))
    res = pixel_lock(sim.original, sim.drifted, mask=small)
    full = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR)) >= 128
    r, o = arr(res.image), arr(sim.original)
    assert np.array_equal(r[~full], o[~full])
    assert res.mask_source == "user"
    # Black mask: nothing may change. White mask: everything may; the edit is returned as it came.
    black = pixel_lock(sim.original, sim.drifted, mask=Image.new("L", (w, h), 0))
    assert np.array_equal(arr(black.image), o)
    white = pixel_lock(sim.original, sim.drifted, mask=Image.new("L", (8, 8), 255))
    assert white.image is sim.drifted and not white.applied


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------
def test_identical_input_changes_nothing() -> None:
    img = photo("grace_hopper")
    res = pixel_lock(img, img.copy())
    assert res.changed_fraction == 0.0
    assert res.kept_fraction == 0.0
    assert np.array_equal(arr(res.image), arr(img))
    assert res.alignment["max_displacement_px"] == 0.0
    assert "no local change" in res.reason


def test_mismatched_sizes_are_resized_to_the_original() -> None:
    sim, _ = drift_case("astronaut")
    w, h = sim.original.size
    bigger = sim.drifted.resize((round(w * 1.25), round(h * 1.1)), Image.Resampling.BICUBIC)
    res = pixel_lock(sim.original, bigger)
    assert res.image.size == sim.original.size
    assert res.resized_from == bigger.size
    assert "resized" in res.reason
    assert res.applied
    unchanged = eroded(~sim.edit_mask, 3)
    assert psnr(arr(sim.original), arr(res.image), unchanged) >= 40
    assert psnr(arr(sim.edited), arr(res.image), sim.edit_mask) >= 28  # one more resampling than the others


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (15, 15), (16, 16), (20, 31), (40, 24)])
def test_tiny_images_do_not_crash(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    a = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    b = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    for edited in (a.copy(), b, b.resize((size[0] * 2 + 1, size[1] + 3))):
        res = pixel_lock(a, edited)
        assert res.image.size in (a.size, edited.size)
        json.dumps(res.as_dict())
    same = pixel_lock(a, a.copy())
    assert np.array_equal(arr(same.image), arr(a))


def test_grayscale_in_grayscale_out() -> None:
    gray = photo("astronaut").convert("L")
    sim = simulate_edit(gray, seed=3, kind="blur_tint")
    res = pixel_lock(gray, sim.drifted.convert("L"))
    assert res.image.mode == "L"
    assert res.applied, res.reason
    unchanged = eroded(~sim.edit_mask, 3)
    assert psnr(np.asarray(gray), np.asarray(res.image), unchanged) >= 40


@pytest.mark.parametrize(("orig_mode", "edit_mode"), [("RGBA", "RGBA"), ("P", "RGB"), ("L", "RGB"), ("I;16", "L")])
def test_other_modes_are_converted(orig_mode: str, edit_mode: str) -> None:
    sim, _ = drift_case("chelsea")
    res = pixel_lock(sim.original.convert(orig_mode), sim.drifted.convert(edit_mode))
    assert res.image.size == sim.original.size
    assert res.image.mode in ("RGB", "L")


def test_bad_arguments_raise() -> None:
    img = photo("coffee")
    with pytest.raises(InvalidRequest, match="mode"):
        pixel_lock(img, img, mode="strict")
    with pytest.raises(InvalidRequest):
        pixel_lock(img, img, global_fraction=0.0)
    with pytest.raises(InvalidImage, match="edited"):
        pixel_lock(img, np.asarray(img))  # type: ignore[arg-type]
    with pytest.raises(InvalidImage, match="no pixels"):
        pixel_lock(img, Image.new("RGB", (0, 0)))
    with pytest.raises(InvalidRequest):
        simulate_edit(img, 0, kind="sparkle")


def test_as_dict_is_json_without_images() -> None:
    _, res = drift_case("rocket")
    data = res.as_dict()
    text = json.dumps(data)
    assert "image" not in data and "changed_mask" not in data
    assert set(data["alignment"]) >= {"dx", "dy", "scale", "rotation_deg", "matrix"}
    assert set(data["color_correction"]) >= {"model", "gain", "offset", "matrix", "bias"}
    assert json.loads(text)["applied"] is True
