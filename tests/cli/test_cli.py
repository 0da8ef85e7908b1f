"""The ``kontext`` CLI end to end on the tiny model: outputs, JSON, exit codes and messages for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from kontext_studio.cli.main import app
from tests.conftest import noise_image
from tests.core.test_images import png_header_only

runner = CliRunner()


def kontext(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture()
def model_env(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KONTEXT_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("KONTEXT_HOME", str(tmp_path / "home"))
    return tiny_model_dir


def test_edit_writes_the_exact_input_size_with_recipe(model_env: Path, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    code, stdout, stderr = kontext("edit", photo, "put her on a beach at sunset", "-o", out, "--steps", "2",
                                   "--seed", "7")
    assert code == 0, stderr
    assert f"saved {out}" in stdout.replace("\n", "")
    with Image.open(out) as img:
        assert img.size == (1000, 700)
    assert "output restored to 1000x700" in stderr
    assert "random weights" in stderr


def test_json_output_is_machine_readable(model_env: Path, photo: Path, tmp_path: Path) -> None:
    code, stdout, _ = kontext("edit", photo, "make it snowy", "-o", tmp_path / "o.webp", "--steps", "1",
                              "--aspect", "16:9", "--json")
    assert code == 0
    data = json.loads(stdout)
    w, h = data["size"]
    assert w * 9 == h * 16
    assert data["recipe"]["output_format"] == "webp" and isinstance(data["seed"], int)
    assert any("16:9" in x for x in data["warnings"])


def test_several_references_with_roles(model_env: Path, tmp_path: Path) -> None:
    paths = []
    for i, size in enumerate([(300, 400), (200, 200), (500, 250)]):
        p = tmp_path / f"r{i}.png"
        noise_image(*size, seed=i).save(p)
        paths.append(p)
    code, stdout, stderr = kontext("edit", *paths, "she wears the coat in front of the house", "-o",
                                   tmp_path / "o.png", "--role", "subject", "--role", "garment", "--role",
                                   "background", "--strategy", "offset", "--steps", "1", "--json")
    assert code == 0, stderr
    refs = json.loads(stdout)["recipe"]["references"]
    assert [r["role"] for r in refs] == ["subject", "garment", "background"]


def test_replay_reports_identical_pixels(model_env: Path, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jpg"
    assert kontext("edit", photo, "as an oil painting", "-o", out, "--steps", "2", "--seed", "3")[0] == 0
    code, stdout, stderr = kontext("replay", out, "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["identical"] is True and data["seed"] == 3
    assert Path(data["output"]).exists()


def test_series_writes_images_and_a_contact_sheet(model_env: Path, photo: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "scenes.txt"
    prompts.write_text("# campaign\non a beach at sunset\nin a snowy forest\n\nin a neon city at night\n")
    out = tmp_path / "campaign"
    code, _, stderr = kontext("series", photo, "--prompts", prompts, "-o", out, "--steps", "1", "--seed", "5")
    assert code == 0, stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["01-on-a-beach-at-sunset.png", "02-in-a-snowy-forest.png", "03-in-a-neon-city-at-night.png",
                     "contact_sheet.png", "series.json"]
    summary = json.loads((out / "series.json").read_text())
    assert summary["seed"] == 5 and len(summary["scenes"]) == 3


def test_models_and_doctor(model_env: Path) -> None:
    code, stdout, _ = kontext("models", "--json")
    assert code == 0
    data = json.loads(stdout)
    tiers = {t["tier"]: t for t in data["tiers"]}
    assert {k: v["credits"] for k, v in tiers.items()} == {"fast": 4, "dev": 5, "pro": 8, "max": 15}
    assert tiers["dev"]["status"] == "ready" and tiers["pro"]["status"].startswith("not configured")
    assert data["weights"]["random_weights"] is True
    code, stdout, _ = kontext("doctor", "--json")
    assert code == 0
    report = json.loads(stdout)
    assert report["device"] == "cpu" and "random test weights" in report["weights"]


def test_build_tiny_model_is_labelled(tmp_path: Path) -> None:
    code, stdout, _ = kontext("build-tiny-model", tmp_path / "m")
    assert code == 0 and "random weights" in stdout
    assert json.loads((tmp_path / "m" / "kontext_studio.json").read_text())["random_weights"] is True


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("not_an_image", 2, "not a readable image"),
        ("empty_file", 2, "empty (0 bytes)"),
        ("huge_image", 2, "too large"),
        ("five_references", 2, "at most 4 reference images"),
        ("empty_instruction", 2, "instruction: describe the change"),
        ("unknown_tier", 2, "tier must be one of fast, dev, pro, max; got 'ultra'"),
        ("unknown_aspect", 2, "aspect_ratio must be between 21:9 and 9:21, got '5:1'"),
        ("bad_role", 2, "role must be one of"),
        ("corrupt_lora", 2, "is not a readable .safetensors LoRA"),
        ("missing_lora", 2, "loras: file not found"),
        ("pro_tier", 3, "needs BFL_API_KEY"),
        ("no_instruction", 2, "give at least one image and an instruction"),
    ],
)
def test_bad_input_gets_a_clear_message_and_exit_code(model_env: Path, photo: Path, tmp_path: Path, case: str,
                                                      code: int, message: str) -> None:
    out = tmp_path / "o.png"
    args: list[str | Path] = ["edit", photo, "make it snowy", "-o", out, "--steps", "1"]
    if case == "not_an_image":
        bad = tmp_path / "notes.jpg"
        bad.write_text("hello")
        args[1] = bad
    elif case == "empty_file":
        bad = tmp_path / "empty.png"
        bad.touch()
        args[1] = bad
    elif case == "huge_image":
        args[1] = png_header_only(tmp_path / "huge.png", 20000, 20000)
    elif case == "five_references":
        args[1:2] = [photo] * 5
    elif case == "empty_instruction":
        args[2] = "  "
    elif case == "unknown_tier":
        args += ["--tier", "ultra"]
    elif case == "unknown_aspect":
        args += ["--aspect", "5:1"]
    elif case == "bad_role":
        args += ["--role", "hat"]
    elif case == "corrupt_lora":
        lora = tmp_path / "broken.safetensors"
        lora.write_bytes(b"\x00\x01garbage" * 10)
        args += ["--lora", f"{lora}:0.7"]
    elif case == "missing_lora":
        args += ["--lora", str(tmp_path / "nope.safetensors")]
    elif case == "pro_tier":
        args += ["--tier", "pro"]
    elif case == "no_instruction":
        args = ["edit", photo, "-o", out]
    got, stdout, stderr = kontext(*args)
    assert got == code, stderr
    assert message in " ".join(stderr.split()), stderr
    assert "Traceback" not in stderr + stdout
    assert not out.exists(), "nothing is written for a failed edit"


def test_missing_weights_explain_how_to_get_them(photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KONTEXT_MODEL", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache
    monkeypatch.setenv("KONTEXT_HOME", str(tmp_path / "home"))
    code, stdout, stderr = kontext("edit", photo, "make it snowy", "-o", tmp_path / "o.png", "--json")
    assert code == 3
    text = " ".join(stderr.split())
    assert "FLUX.1-Kontext-dev is not in the Hugging Face cache" in text and "HF_TOKEN" in text
    assert json.loads(stdout)["error"]["code"] == "weights_not_found"
    code, _, stderr = kontext("edit", photo, "x", "-o", tmp_path / "o.png", "--model", str(tmp_path / "nowhere"))
    assert code == 3 and "model_index.json missing" in stderr


def test_the_installed_console_script_runs(model_env: Path, photo: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("kontext")
    out = tmp_path / "cli.png"
    done = subprocess.run([str(exe), "edit", str(photo), "make it snowy", "-o", str(out), "--steps", "1",
                           "--seed", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with Image.open(out) as img:
        assert img.size == (1000, 700)
        assert np.asarray(img).std() > 0
    bad = subprocess.run([str(exe), "edit", str(photo), "x", "-o", str(out), "--aspect", "banana"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "aspect_ratio" in bad.stderr
