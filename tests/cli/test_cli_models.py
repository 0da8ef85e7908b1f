"""The CLI names any catalogue model: --model, --weights, generation from text, kontext models, tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.cli.test_cli import kontext


@pytest.fixture()
def family_env(tiny_family_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("KONTEXT_MODEL", str(tiny_family_dirs["kontext"]))
    monkeypatch.setenv("KONTEXT_WEIGHTS", f"klein-4b={tiny_family_dirs['klein']},qwen-edit={tiny_family_dirs['qwen']}")
    monkeypatch.setenv("KONTEXT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BFL_API_KEY", raising=False)
    return tiny_family_dirs


def test_models_lists_the_catalogue_with_licences_and_where_weights_are(family_env: dict[str, Path]) -> None:
    code, stdout, _ = kontext("models", "--json")
    assert code == 0
    rows = {r["key"]: r for r in json.loads(stdout)["models"]}
    assert rows["klein-4b"]["ready"] and rows["klein-4b"]["weights_path"] == str(family_env["klein"])
    assert rows["klein-4b"]["commercial_use"] is True and rows["klein-9b"]["commercial_use"] is False
    assert rows["klein-9b"]["status"].startswith("weights missing: accept the licence")
    assert "huggingface.co/black-forest-labs/FLUX.2-klein-9B" in rows["klein-9b"]["status"]
    assert rows["flux2-pro"]["status"].startswith("not configured: needs BFL_API_KEY")
    assert rows["dev"]["price_credits"] == 5 and rows["qwen-edit"]["max_references"] == 3
    code, stdout, _ = kontext("models")
    assert code == 0 and "klein-4b (FLUX.2 [klein] 4B, Apache-2.0)" in " ".join(stdout.split())


def test_edit_and_generate_on_a_catalogue_model(family_env: dict[str, Path], photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.png"
    code, stdout, stderr = kontext("edit", photo, "make it snowy", "-o", out, "--model", "flux-2-klein-4b",
                                   "--steps", "2", "--seed", "3", "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["size"] == [1000, 700] and data["recipe"]["model_name"] == "black-forest-labs/flux-2-klein-4b"
    code, stdout, stderr = kontext("edit", "a red fox in the snow", "-o", tmp_path / "g.png", "--model", "klein-4b",
                                   "--width", "200", "--height", "120", "--steps", "2")
    assert code == 0, stderr
    with Image.open(tmp_path / "g.png") as img:
        assert img.size == (200, 120)
    code, stdout, stderr = kontext("replay", out)
    assert code == 0 and "identical" in stdout, stderr


def test_weights_option_points_a_model_at_a_folder(family_env: dict[str, Path], photo: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KONTEXT_WEIGHTS")
    code, _, stderr = kontext("edit", photo, "x y", "-o", tmp_path / "o.png", "--model", "qwen-edit", "--steps", "2")
    assert code == 3 and "Qwen-Image-Edit-2511 weights not found" in " ".join(stderr.split())
    code, _, stderr = kontext("edit", photo, "x y", "-o", tmp_path / "o.png", "--model", "qwen-edit", "--steps", "2",
                              "--weights", family_env["qwen"])
    assert code == 0, stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "flux-3-ultra"], "model must be one of black-forest-labs/flux-kontext-dev"),
        (["--model", "qwen-edit", "--instruction-only"], "only edits: give at least one reference image"),
        (["--model", "klein-4b", "--five"], "takes at most 4 reference images, got 5"),
        (["--model", "klein-4b", "--lora"], "loras: file not found"),
    ],
)
def test_bad_model_input_exits_2_with_the_reason(family_env: dict[str, Path], photo: Path, tmp_path: Path,
                                                  args: list[str], message: str) -> None:
    images = [photo] * (5 if "--five" in args else 0 if "--instruction-only" in args else 1)
    extra = [a for a in args if a not in ("--five", "--instruction-only", "--lora")]
    if "--lora" in args:
        extra += ["--lora", str(tmp_path / "missing.safetensors")]
    code, _, stderr = kontext("edit", *images, "make it snowy", "-o", tmp_path / "o.png", *extra)
    assert code == 2 and message in " ".join(stderr.split()), stderr
    assert not (tmp_path / "o.png").exists()


def test_build_tiny_model_builds_any_family(tmp_path: Path) -> None:
    code, stdout, _ = kontext("build-tiny-model", tmp_path / "q", "--family", "qwen", "--json")
    assert code == 0 and json.loads(stdout)["family"] == "qwen"
    index = json.loads((tmp_path / "q" / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageEditPlusPipeline" and index["processor"][1] == "Qwen2VLProcessor"
    code, _, stderr = kontext("build-tiny-model", tmp_path / "x", "--family", "sdxl")
    assert code == 2 and "--family must be one of kontext, klein, flux2, qwen" in stderr


def test_kontext_bases_gives_a_single_file_model_its_other_parts(tiny_family_dirs: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    from kontext_studio.bootstrap import family_source
    from kontext_studio.core.catalogue import get_model
    from kontext_studio.settings import Settings

    env = {"KONTEXT_WEIGHTS": f"qwen-edit={tmp_path / 'q.gguf'}",
           "KONTEXT_BASES": f"qwen-edit={tiny_family_dirs['qwen']}"}
    source = family_source(Settings.from_env(env), get_model("qwen-edit"))
    assert source.kind == "single_file" and source.base == str(tiny_family_dirs["qwen"])
    default = family_source(Settings.from_env({"KONTEXT_WEIGHTS": f"qwen-edit={tmp_path / 'q.gguf'}"}),
                            get_model("qwen-edit"))
    assert default.base == get_model("qwen-edit").weights.hub  # no base given: the model's hub repo
