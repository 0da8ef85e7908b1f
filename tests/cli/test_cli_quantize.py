"""``kontext quantize`` writes a quantized copy that ``kontext edit --model`` runs; bad input gets a clear message."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_cli import kontext, model_env  # noqa: F401  (fixture)


def test_quantize_then_edit_with_the_copy(model_env: Path, photo: Path, tmp_path: Path) -> None:  # noqa: F811
    gguf = tmp_path / "t-q8.gguf"
    code, stdout, stderr = kontext("quantize", model_env, "-o", gguf, "--format", "q8_0", "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["tensor_types"]["Q8_0"] > 0 and data["ratio_to_bf16"] < 1
    out = tmp_path / "out.png"
    code, stdout, stderr = kontext("edit", photo, "make it snowy", "-o", out, "--steps", "2", "--seed", "3",
                                   "--model", gguf, "--base", model_env, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["recipe"]["model"]["weights"]["precision"] == "gguf-q8_0"


def test_quantize_fp8_and_bad_input(model_env: Path, tmp_path: Path) -> None:  # noqa: F811
    code, stdout, _ = kontext("quantize", model_env, "-o", tmp_path / "t.safetensors", "--format", "fp8")
    assert code == 0 and "wrote" in stdout
    code, _, stderr = kontext("quantize", model_env, "-o", tmp_path / "t.gguf", "--format", "q3_k")
    assert code == 2 and "--format" in stderr and "q8_0" in stderr
    code, _, stderr = kontext("quantize", model_env, "-o", tmp_path / "t.bin", "--format", "q4_k")
    assert code == 2 and "must end in .gguf" in stderr
    code, _, stderr = kontext("quantize", tmp_path, "-o", tmp_path / "t.gguf")
    assert code == 2 and "neither a diffusers model folder" in stderr


def test_edit_with_a_damaged_gguf_exits_2(model_env: Path, photo: Path, tmp_path: Path) -> None:  # noqa: F811
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 20)
    code, _, stderr = kontext("edit", photo, "x", "-o", tmp_path / "o.png", "--steps", "1", "--model", bad,
                              "--base", model_env)
    assert code == 2 and "damaged GGUF file" in " ".join(stderr.split())


def test_draft_halves_the_steps_visibly(model_env: Path, photo: Path, tmp_path: Path) -> None:  # noqa: F811
    code, stdout, stderr = kontext("edit", photo, "x", "-o", tmp_path / "o.png", "--tier", "fast", "--steps", "4",
                                   "--draft", "--json")
    assert code == 0, stderr
    recipe = json.loads(stdout)["recipe"]
    assert recipe["steps"] == 2 and recipe["draft"] is True and recipe["acceleration"]["profile"] == "fast"


def test_a_profile_says_what_it_turned_on_and_what_it_could_not_use(model_env: Path, photo: Path,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    code, stdout, stderr = kontext("edit", photo, "x", "-o", tmp_path / "o.png", "--steps", "2",
                                   "--acceleration", "lossless")
    assert code == 0, stderr
    text = " ".join(stdout.split())
    assert "speed: lossless profile (fused QKV)" in text
    assert "not used: regional compilation is a GPU speed-up; skipped on the CPU" in text
    code, stdout, _ = kontext("edit", photo, "x", "-o", tmp_path / "s.png", "--steps", "2")
    assert code == 0 and "speed:" not in stdout  # stock: nothing to say


def test_a_quantized_qwen_copy_runs_with_the_command_quantize_prints(tiny_family_dirs: dict[str, Path],
                                                                      photo: Path, tmp_path: Path) -> None:
    import shlex

    folder = tiny_family_dirs["qwen"]
    gguf = tmp_path / "qwen-q8.gguf"
    code, stdout, stderr = kontext("quantize", folder, "-o", gguf, "--format", "q8_0")
    assert code == 0, stderr
    (hint,) = [line for line in stdout.splitlines() if line.startswith("use it: ")]
    assert f"--model qwen-edit --weights {gguf} --base {folder}" in hint
    args = shlex.split(hint.removeprefix("use it: kontext "))
    args = [str(photo) if a == "IMG" else str(tmp_path / "out.png") if a == "out.png" else a for a in args]
    code, stdout, stderr = kontext(*args, "--steps", "2", "--json")  # the command as printed
    assert code == 0, stderr
    weights = json.loads(stdout)["recipe"]["model"]["weights"]
    assert weights["format"] == "gguf" and weights["precision"] == "gguf-q8_0"
