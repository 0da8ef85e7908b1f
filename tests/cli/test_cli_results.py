"""What the commands report: a lost face in words, drift as drift, scores without algorithm names, series
file names and notes, and training at the tiny model's resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from kontext_studio.cli.edit import scene_file_name
from kontext_studio.cli.words import drift_line, identity_line
from kontext_studio.core.recipe import read_recipe
from tests.cli.test_cli import kontext
from tests.conftest import noise_image


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(p)
    return p


def test_identity_reports_a_lost_face_in_words(astronaut: Path, tmp_path: Path) -> None:
    faceless = tmp_path / "wall.png"
    Image.new("RGB", (512, 512), (180, 170, 160)).save(faceless)
    code, stdout, stderr = kontext("identity", astronaut, faceless)
    assert code == 0, stderr
    assert "Traceback" not in stdout + stderr
    text = " ".join(stdout.split())
    assert "face lost: the reference has 1 face(s), the edited image no face" in text
    code, stdout, _ = kontext("identity", astronaut, faceless, "--json")
    report = json.loads(stdout)
    assert code == 0 and report["lost_faces"] == 1 and report["distance"] is None


def test_scores_are_words_not_algorithm_names() -> None:
    obj = {"similarity": 0.12, "passed": False, "measured": False, "method": "sift-ransac", "candidates": [{}]}
    line = identity_line(obj)
    assert line is not None
    assert "sift" not in line and "NOT kept" not in line and "ransac" not in line
    assert "the object looks different from the reference" in line
    face = {"similarity": 0.81, "passed": True, "measured": True, "method": "dlib-resnet", "candidates": [{}, {}]}
    assert identity_line(face) == "face: the same person (similarity 0.81; 0.50 or more is the same person, " \
                                  "best of 2 seeds)"


def test_drift_is_reported_as_drift() -> None:
    # A chain whose output is very similar to the original has drifted little: a small number.
    line = drift_line({"turn": 3, "drift": {"similarity": 0.9, "method": "dlib-resnet"}})
    assert line == "drift from the original after 3 edits: 0.10 (0 = unchanged, 1 = nothing of it left)"
    assert drift_line({"turn": 2, "drift": {"drift": 0.75, "similarity": 0.25}}) is not None
    assert "0.75" in str(drift_line({"turn": 2, "drift": {"drift": 0.75, "similarity": 0.25}}))
    assert drift_line({"turn": 2, "drift": None}) is None


def test_scene_file_names_keep_whole_words() -> None:
    name = scene_file_name(1, "put her on a beach at sunset with golden light and long shadows")
    assert name == "01-put-her-on-a-beach-at-sunset-with-golden.png"
    stem = name[3:-4]
    asked = "put her on a beach at sunset with golden light and long shadows"
    assert all(w in asked.split(" ") for w in stem.split("-"))
    assert scene_file_name(12, "###") == "12-scene.png"
    assert scene_file_name(2, "x" * 60) == "02-" + "x" * 40 + ".png"


def test_series_prints_the_reference_notes_edit_prints(tiny_model_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONTEXT_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("KONTEXT_HOME", str(tmp_path / "home"))
    photo = tmp_path / "small.png"
    noise_image(320, 240).save(photo)
    prompts = tmp_path / "scenes.txt"
    prompts.write_text("put it on a beach at sunset with golden light and long shadows\nin the snow\n")
    code, _, edit_err = kontext("edit", photo, "in the snow", "-o", tmp_path / "one.png", "--steps", "1")
    assert code == 0
    code, _, series_err = kontext("series", photo, "--prompts", prompts, "-o", tmp_path / "s", "--steps", "1",
                                       "--seed", "3")
    assert code == 0, series_err
    edit_notes = [ln for ln in edit_err.splitlines() if ln.startswith("note: reference 1")]
    assert edit_notes, edit_err
    for note in edit_notes:
        assert series_err.count(note) == 1, f"{note!r} missing or repeated in:\n{series_err}"
    names = sorted(p.name for p in (tmp_path / "s").glob("0*.png"))
    assert names == ["01-put-it-on-a-beach-at-sunset-with-golden.png", "02-in-the-snow.png"]


def test_editing_an_output_again_reports_drift(tiny_model_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONTEXT_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("KONTEXT_HOME", str(tmp_path / "home"))
    photo = tmp_path / "photo.png"
    noise_image(256, 192).save(photo)
    first = tmp_path / "first.png"
    assert kontext("edit", photo, "in the snow", "-o", first, "--steps", "1", "--seed", "1")[0] == 0
    code, stdout, stderr = kontext("edit", first, "at night", "-o", tmp_path / "second.png", "--steps", "1")
    assert code == 0, stderr
    drift = read_recipe(tmp_path / "second.png")["chain"]["drift"]
    if drift is not None and drift["similarity"] is not None:
        assert drift["drift"] == pytest.approx(1 - drift["similarity"], abs=1e-3)
        assert f"drift from the original after 2 edits: {drift['drift']:.2f}" in stdout
    assert "similarity" not in "\n".join(ln for ln in stdout.splitlines() if ln.startswith("drift"))


def test_train_check_and_run_follow_the_training_resolution(tmp_path: Path) -> None:
    from kontext_studio.training.synthetic import make_pairs

    root = make_pairs(tmp_path / "ds", 3, size=(128, 128))
    code, stdout, _ = kontext("train-lora", "check", root)
    assert code == 2 and "below 256 px" in stdout  # 128 px pairs for a 512 px run: too small
    code, stdout, _ = kontext("train-lora", "check", root, "--resolution", "128")
    assert code == 0, stdout
    code, stdout, stderr = kontext("train-lora", "run", root, "-o", tmp_path / "run", "--resolution", "128",
                                   "--model", tmp_path / "no-model", "--steps", "1")
    assert "too_small" not in stdout + stderr and "below" not in stdout + stderr
    assert code == 3, stdout + stderr  # past the dataset check: only the missing model stops it


def test_exporting_a_missing_or_broken_adapter_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    code, _, stderr = kontext("train-lora", "export", tmp_path / "nope.safetensors", "-o", tmp_path / "k.safetensors")
    assert code == 2 and "export: file not found" in stderr and "Traceback" not in stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not an adapter")
    code, _, stderr = kontext("train-lora", "export", bad, "-o", tmp_path / "k.safetensors")
    assert code == 2 and "is not a readable .safetensors adapter" in " ".join(stderr.split())
    assert not (tmp_path / "k.safetensors").exists()
