"""The fidelity commands on real photos: check-ref, coach, identity, pixel-lock, and the guard on edit."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.cli.test_cli import kontext

HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(p)
    return p


def test_check_ref_reports_findings_with_fixes(astronaut: Path, tmp_path: Path) -> None:
    blurry = tmp_path / "blurry.jpg"
    from PIL import ImageFilter

    Image.open(astronaut).filter(ImageFilter.GaussianBlur(4)).save(blurry, quality=20)
    code, stdout, _ = kontext("check-ref", astronaut, blurry, "--json")
    assert code == 0
    reports = json.loads(stdout)
    sharp, soft = reports[str(astronaut)], reports[str(blurry)]
    assert sharp["faces"] == 1 and "blur" not in {f["code"] for f in sharp["findings"]}
    codes = {f["code"] for f in soft["findings"]}
    assert {"blur", "jpeg_quality", "low_resolution"} <= codes
    assert all(f["fix"] for f in soft["findings"])
    code, stdout, _ = kontext("check-ref", blurry)
    assert code == 0 and "fix:" in stdout


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("not an image"), "not a readable image"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: Image.new("RGB", (10, 10)).save(p, format="PNG"), "too small"),
    ],
)
def test_check_ref_bad_files(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "bad.png"
    make(p)
    code, _, stderr = kontext("check-ref", p)
    assert code == 2 and message in stderr and "Traceback" not in stderr


def test_check_ref_converts_unusual_modes(astronaut: Path, tmp_path: Path) -> None:
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(np.asarray(Image.open(astronaut).convert("L"), dtype=np.uint16) * 257).save(gray16)
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(astronaut).convert("CMYK").save(cmyk, quality=95)
    code, stdout, _ = kontext("check-ref", gray16, cmyk, "--json")
    assert code == 0
    reports = json.loads(stdout)
    assert reports[str(gray16)]["faces"] == 1 and reports[str(cmyk)]["faces"] == 1


def test_identity_same_and_different_person(astronaut: Path, tmp_path: Path) -> None:
    shifted = tmp_path / "astronaut_small.jpg"
    Image.open(astronaut).resize((384, 384)).save(shifted, quality=80)
    code, stdout, _ = kontext("identity", astronaut, shifted, "--json")
    assert code == 0 and json.loads(stdout)["same_person"] is True
    code, stdout, _ = kontext("identity", astronaut, HOPPER, "--json")
    assert code == 0 and json.loads(stdout)["same_person"] is False
    code, stdout, _ = kontext("identity", astronaut, HOPPER)
    assert "different person" in stdout


def test_coach_flags_and_rewrites(tmp_path: Path) -> None:
    code, stdout, _ = kontext("coach", "A beautiful blonde woman with blue eyes on a beach", "--json")
    assert code == 0
    report = json.loads(stdout)
    assert "redescribes_subject" in {f["code"] for f in report["findings"]}
    assert report["rewrite"]
    code, stdout, _ = kontext("coach", "Change the background to a mountain landscape at sunset; keep the person, "
                              "their face, pose and outfit exactly the same.")
    assert code == 0 and "looks good" in stdout


def test_pixel_lock_command_restores_the_unedited_area(astronaut: Path, tmp_path: Path) -> None:
    original = np.asarray(Image.open(astronaut).convert("RGB")).astype(np.float64)
    edited = original.copy()
    edited[300:400, 300:420] = [30, 200, 40]  # the intended local edit
    # drift: 2 px shift right and a warm cast everywhere
    edited = np.roll(edited, 2, axis=1) * [1.05, 1.0, 0.95]
    edited_path = tmp_path / "edited.png"
    Image.fromarray(np.clip(edited, 0, 255).astype(np.uint8)).save(edited_path)
    out = tmp_path / "locked.png"
    code, stdout, stderr = kontext("pixel-lock", astronaut, edited_path, "-o", out, "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["applied"] is True and 0.0 < report["changed_fraction"] < 0.3
    locked = np.asarray(Image.open(out).convert("RGB")).astype(np.float64)
    far = (slice(20, 200), slice(20, 200))  # well away from the edit
    assert np.abs(locked[far] - original[far]).mean() < np.abs(edited[far] - original[far]).mean() / 3
    assert np.abs(locked[320:380, 320:400] - [30, 200, 40]).mean() < 40  # the edit survives


def test_edit_with_identity_guard_on_the_tiny_model(tiny_model_dir: Path, astronaut: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONTEXT_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("KONTEXT_HOME", str(tmp_path / "home"))
    out = tmp_path / "guarded.png"
    code, stdout, stderr = kontext("edit", astronaut, "put her on a beach; keep her face", "-o", out, "--steps", "1",
                                   "--seed", "5", "--identity-guard", "0.9", "--candidates", "2", "--json")
    assert code == 0, stderr
    result = json.loads(stdout)
    # random weights make noise: the guard tries both seeds, finds no face, and says so
    assert [c["seed"] for c in result["identity"]["candidates"]] == [5, 6]
    assert result["identity"]["details"]["reference_faces"] == 1
    assert result["findings"][0] and result["pixel_lock"]["mode"] == "auto"
    assert any("identity guard" in w for w in result["warnings"])
