"""The CLI's first seconds: help, --version and every input error answer without loading torch, diffusers,
transformers, OpenCV or dlib; help reads plainly; console text is printed literally; library chatter
stays off the terminal."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cli.test_cli import kontext
from tests.conftest import noise_image

HEAVY = ("torch", "diffusers", "transformers", "cv2", "dlib", "skimage", "scipy")

# Runs each command line in a fresh interpreter, in-process through the console entry point, and reports
# its exit code, its output and which heavy libraries it imported.
_PROBE = textwrap.dedent("""
    import contextlib, io, json, sys
    from kontext_studio.cli.main import app
    args = json.loads(sys.argv[1])
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            app(args, prog_name="kontext")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
    print(json.dumps({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "heavy": heavy}))
""")


def probe(*args: str | Path, env: dict[str, str] | None = None) -> dict[str, object]:
    import os

    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps([str(a) for a in args]), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    photo = tmp_path / "photo.png"
    noise_image(64, 48).save(photo)
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    return {"photo": photo, "text": text, "out": tmp_path / "out.png", "home": tmp_path / "home"}


def test_help_and_version_answer_without_heavy_libraries() -> None:
    for args, expect in ((["--help"], "Examples:"), (["--version"], "kontext 0.1.0"), (["edit", "--help"], "IMG...")):
        r = probe(*args)
        assert r["code"] == 0, r
        assert expect in str(r["stdout"])
        assert r["heavy"] == [], f"{args} imported {r['heavy']}"


@pytest.mark.parametrize(("case", "message", "code"), [
    ("missing_file", "file not found", 2),
    ("text_file", "not a readable image", 2),
    ("unknown_tier", "tier must be one of fast, dev, pro, max; got 'ultra'", 2),
    ("missing_lora", "loras: file not found", 2),
    ("seed_too_large", "seed must be between 0 and 4294967295", 2),
    ("gif_output", "cannot write .gif; use one of .png, .jpg, .jpeg, .webp", 2),
    ("missing_model", "model_index.json missing", 3),
])
def test_input_errors_answer_before_torch_loads(inputs: dict[str, Path], case: str, message: str,
                                                code: int) -> None:
    photo, out = inputs["photo"], inputs["out"]
    args: list[str | Path] = {
        "missing_file": ["edit", photo.with_name("nope.jpg"), "make it snowy", "-o", out],
        "text_file": ["edit", inputs["text"], "make it snowy", "-o", out],
        "unknown_tier": ["edit", photo, "make it snowy", "-o", out, "--tier", "ultra"],
        "missing_lora": ["edit", photo, "make it snowy", "-o", out, "--lora", photo.with_name("style.safetensors")],
        "seed_too_large": ["edit", photo, "make it snowy", "-o", out, "--seed", "4294967296"],
        "gif_output": ["edit", photo, "make it snowy", "-o", out.with_suffix(".gif")],
        "missing_model": ["edit", photo, "make it snowy", "-o", out, "--model", photo.with_name("no-model")],
    }[case]
    r = probe(*args, env={"KONTEXT_HOME": str(inputs["home"])})
    assert r["code"] == code, r
    assert message in " ".join(str(r["stderr"]).split())
    assert "Traceback" not in str(r["stderr"])
    assert r["heavy"] == [], f"{case} imported {r['heavy']} before answering"
    assert not out.exists() and not out.with_suffix(".gif").exists()


def test_help_shows_value_names_not_python_types() -> None:
    for args in (["--help"], ["edit", "--help"], ["series", "--help"], ["train-lora", "run", "--help"],
                 ["coach", "--help"]):
        code, stdout, _ = kontext(*args)
        assert code == 0
        for tag in ("<list[str]>", "<bool>", "<str>", "<int>", "<float>", "<path>", "{"):
            assert tag not in stdout, f"{args}: {tag} in help"
    _, edit_help, _ = kontext("edit", "--help")
    assert "Usage: kontext edit [OPTIONS] IMG... INSTRUCTION" in " ".join(edit_help.split())
    assert "--seed INTEGER" in edit_help and "Examples:" in edit_help


def test_square_brackets_are_text_not_markup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, stdout, _ = kontext("--help")
    assert "Train FLUX.1 Kontext [dev] LoRAs" in " ".join(stdout.split())
    monkeypatch.setenv("KONTEXT_MODEL", str(tmp_path / "no-model"))
    monkeypatch.setenv("KONTEXT_HOME", str(tmp_path / "home"))
    code, stdout, _ = kontext("models")
    assert code == 0
    assert "To get FLUX.1 Kontext [dev]: (1)" in " ".join(stdout.split())
    photo = tmp_path / "[dev] shot.png"
    noise_image(32, 32).save(photo)
    code, stdout, _ = kontext("check-ref", photo)
    assert code == 0 and "[dev] shot.png" in stdout


def test_doctor_says_what_the_memory_is_instead_of_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONTEXT_HOME", str(tmp_path / "home"))
    code, stdout, _ = kontext("doctor", "--device", "cpu")
    assert code == 0
    assert "None" not in stdout
    assert "free vram: no GPU: running on the CPU" in stdout


def test_library_notices_go_to_the_log_not_the_terminal(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import logging, warnings
        from kontext_studio.cli.logs import setup_logging
        from kontext_studio.bootstrap import quiet_third_party_logs
        setup_logging(False)
        quiet_third_party_logs()
        logging.getLogger("torch.utils._pytree").warning("Enum subclass register_constant notice")
        logging.getLogger("torchao").warning("Failed to load some kernel library")
        import transformers.utils.logging as tl
        tl.get_logger("transformers.utils.import_utils").warning("requires torchvision (not installed)")
        warnings.warn("gemm_4bit_forward kernel is not available", UserWarning)
        print("done")
    """)
    import os

    done = subprocess.run([sys.executable, "-W", "default", "-c", script], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "KONTEXT_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    assert done.stderr.strip() == "", done.stderr
    log = (tmp_path / "logs" / "kontext.log").read_text()
    for notice in ("register_constant", "Failed to load", "requires torchvision", "gemm_4bit_forward"):
        assert notice in log


@pytest.mark.parametrize(("args", "message"), [
    (["tool", "relight", "{photo}", "-o", "{out}.gif"], "cannot write .gif; use one of .png, .jpg, .jpeg, .webp"),
    (["tool", "relight", "{missing}", "-o", "{out}.png"], "file not found"),
    (["tool", "relight", "{photo}", "-o", "{out}.png", "--tier", "ultra"], "tier must be one of"),
    (["pixel-lock", "{photo}", "{photo}", "-o", "{out}.gif"], "cannot write .gif"),
])
def test_ai_tools_check_their_inputs_before_torch_loads(inputs: dict[str, Path], args: list[str],
                                                        message: str) -> None:
    values = {"photo": inputs["photo"], "missing": inputs["photo"].with_name("nope.jpg"),
              "out": inputs["out"].with_suffix("")}
    r = probe(*[a.format(**values) for a in args], env={"KONTEXT_HOME": str(inputs["home"])})
    assert r["code"] == 2, r
    assert message in " ".join(str(r["stderr"]).split())
    assert r["heavy"] == [], f"{args} imported {r['heavy']} before answering"


def test_the_loading_spinner_shows_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import time

    from rich.console import Console

    from kontext_studio.cli import output

    for terminal in (True, False):
        buffer = io.StringIO()
        monkeypatch.setattr(output, "err", Console(file=buffer, force_terminal=terminal, width=80))
        with output.loading("loading torch and diffusers"):
            time.sleep(0.3)
        assert ("loading torch and diffusers" in buffer.getvalue()) is terminal
