"""``kontext tools`` and ``kontext tool``: outputs written, facts printed, exit codes for each mistake."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from kontext_studio.cli.main import app

from .conftest import photo

runner = CliRunner()


def kontext(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture()
def jpg(tmp_path: Path) -> Path:
    path = tmp_path / "coffee.jpg"
    photo("coffee").save(path, quality=92)
    return path


def test_tools_lists_free_and_ai_tools_with_prices() -> None:
    code, out, _ = kontext("tools", "--json")
    assert code == 0
    data = json.loads(out)
    names = {t["name"] for t in data["free"]}
    assert {"remove-background", "upscale", "erase", "inspect"} <= names and len(names) >= 20
    assert all(t["credits"] == 0 for t in data["free"])
    colorize = next(t for t in data["ai"] if t["name"] == "colorize")
    assert colorize["credits"]["dev"] > 0 and colorize["free"] is False
    code, text, _ = kontext("tools")
    assert code == 0 and "remove-background" in text and "restore-photo" in text


def test_tool_writes_the_output_with_params(jpg: Path, tmp_path: Path) -> None:
    out = tmp_path / "small.webp"
    code, text, _ = kontext("tool", "resize", jpg, "-o", out, "--width", "150", "--json")
    assert code == 0, text
    report = json.loads(text)
    assert report["info"] == {"width": 150, "height": 100} and report["output"] == str(out)
    with Image.open(out) as img:
        assert img.format == "WEBP" and img.size == (150, 100)


def test_convert_takes_the_format_from_the_output_name(jpg: Path, tmp_path: Path) -> None:
    out = tmp_path / "coffee.avif"
    code, _, err = kontext("tool", "convert", jpg, "-o", out, "--quality", "80")
    assert code == 0, err
    with Image.open(out) as img:
        assert img.format == "AVIF"


def test_erase_with_a_mask_file(jpg: Path, tmp_path: Path) -> None:
    mask = tmp_path / "mask.png"
    m = Image.new("L", (600, 400), 0)
    m.paste(255, (280, 180, 320, 220))
    m.save(mask)
    out = tmp_path / "erased.png"
    code, _, err = kontext("tool", "erase", jpg, "--mask", mask, "-o", out, "--method", "fast")
    assert code == 0, err
    before = np.asarray(Image.open(jpg), dtype=np.int16)
    after = np.asarray(Image.open(out), dtype=np.int16)
    assert np.abs(after - before)[180:220, 280:320].mean() > 0.5
    assert np.abs(after - before)[:100].max() == 0


def test_info_prints_facts_without_an_output(jpg: Path) -> None:
    code, text, _ = kontext("tool", "info", jpg, "--json", "--no-faces")
    assert code == 0
    assert json.loads(text)["info"]["format"] == "jpeg"


def test_tool_params_help(jpg: Path) -> None:
    code, text, _ = kontext("tool", "upscale", "--params")
    assert code == 0 and "--scale" in text and "quality, fast, photo" in text


@pytest.mark.parametrize(("args", "code", "message"), [
    (["tool", "upscale", "{jpg}", "-o", "{out}", "--scale", "3"], 2, "scale must be 2 or 4"),
    (["tool", "upscale", "{jpg}", "-o", "{out}", "--zoom", "3"], 2, "unknown parameter 'zoom'"),
    (["tool", "nope", "{jpg}", "-o", "{out}"], 2, "no tool named 'nope'"),
    (["tool", "erase", "{jpg}", "-o", "{out}"], 2, "needs a mask"),
    (["tool", "resize", "{txt}", "-o", "{out}", "--width", "5"], 2, "not an image"),
    (["tool", "resize", "{jpg}", "-o", "{tmp}/x.gif", "--width", "5"], 2, "name the output"),
    (["tool", "resize", "{jpg}", "--width", "5"], 2, "name the output file"),
    (["tool", "remove-background", "{jpg}", "-o", "{tmp}/cut.jpg"], 2, "JPEG cannot hold"),
    (["tool", "resize", "{tmp}/missing.png", "-o", "{out}", "--width", "5"], 2, "input not found"),
])
def test_mistakes_exit_with_a_clear_message(jpg: Path, tmp_path: Path, args: list[str], code: int,
                                            message: str) -> None:
    txt = tmp_path / "notes.png"
    txt.write_text("not a picture")
    filled = [a.format(jpg=jpg, out=tmp_path / "out.png", txt=txt, tmp=tmp_path) for a in args]
    got, out, err = kontext(*filled)
    assert got == code and message in err and "Traceback" not in err + out
    assert not (tmp_path / "out.png").exists()


def test_missing_model_exits_3_with_the_install_command(jpg: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KONTEXT_TOOL_MODELS", str(tmp_path / "empty"))
    code, _, err = kontext("tool", "remove-background", jpg, "-o", tmp_path / "cut.png")
    assert code == 3 and "make install" in err


def test_ai_tool_runs_as_an_edit_with_its_instruction(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KONTEXT_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("KONTEXT_HOME", str(tmp_path / "home"))
    src = tmp_path / "old.png"
    photo("camera").resize((64, 64)).convert("RGB").save(src)
    out = tmp_path / "colour.png"
    code, text, err = kontext("tool", "colorize", src, "-o", out, "--hint", "a blue coat", "--steps", "2",
                              "--seed", "3", "--json")
    assert code == 0, err
    report = json.loads(text)
    assert report["instruction"].startswith("Colorize this black-and-white photograph")
    assert "a blue coat" in report["instruction"] and "Keep every face" in report["instruction"]
    from kontext_studio.core.recipe import read_recipe

    assert read_recipe(out)["instruction"] == report["instruction"]


def test_ai_tool_runs_on_another_catalogue_model(tmp_path: Path, monkeypatch) -> None:
    from kontext_studio.core.recipe import read_recipe
    from kontext_studio.testing.tiny_model import build_tiny_model

    # FLUX.2 [klein] 4B on its tiny pipeline (random weights): named like kontext edit names it.
    klein = build_tiny_model(tmp_path / "tiny-klein", family="klein")
    monkeypatch.setenv("KONTEXT_HOME", str(tmp_path / "home"))
    src = tmp_path / "old.png"
    photo("camera").resize((64, 64)).convert("RGB").save(src)
    out = tmp_path / "lit.png"
    code, text, err = kontext("tool", "relight", src, "-o", out, "--light", "warm candle light", "--model",
                              "klein-4b", "--weights", klein, "--steps", "2", "--seed", "3", "--json")
    assert code == 0, err
    report = json.loads(text)
    assert "warm candle light" in report["instruction"]
    recipe = read_recipe(out)
    assert recipe["instruction"] == report["instruction"] and "klein" in json.dumps(recipe).lower()
    code, _, err = kontext("tool", "relight", src, "-o", tmp_path / "x.png", "--model", "flux-3-ultra")
    assert code == 2 and "flux-3-ultra" in err and "klein-4b" in err and not (tmp_path / "x.png").exists()


def test_tool_output_carries_content_credentials_that_break_when_tampered(jpg: Path, tmp_path: Path,
                                                                          monkeypatch) -> None:
    pytest.importorskip("c2pa")
    monkeypatch.setenv("KONTEXT_HOME", str(tmp_path / "home"))
    out = tmp_path / "small.png"
    code, text, err = kontext("tool", "resize", jpg, "-o", out, "--percent", "50", "--json")
    assert code == 0, err
    assert json.loads(text)["content_credentials"] is True
    code, text, _ = kontext("tool", "inspect", out, "--json")
    report = json.loads(text)["info"]
    assert code == 0 and report["validates"] is True
    assert "c2pa.resized" in [a["action"] for a in report["history"][0]["actions"]]
    # Change pixels, keep the file's manifest: the credentials no longer validate.
    with Image.open(out) as img:
        pixels = np.asarray(img).copy()
    raw = out.read_bytes()
    pixels[10:20, 10:20] = 0
    tampered = tmp_path / "tampered.png"
    import io

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    # Splice the original manifest chunk (caBX) into the re-encoded file.
    start = raw.index(b"caBX") - 4
    length = int.from_bytes(raw[start:start + 4], "big")
    chunk = raw[start:start + 12 + length]
    new = buf.getvalue()
    tampered.write_bytes(new[:33] + chunk + new[33:])
    code, text, _ = kontext("tool", "inspect", tampered, "--json")
    assert json.loads(text)["info"]["credentials"] == "invalid"
