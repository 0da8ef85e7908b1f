"""``kontext train-lora``: check reports and exit codes, a run on the tiny model, resume, bad options."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from kontext_studio.cli.main import app
from kontext_studio.training.synthetic import make_pairs
from tests.training.test_dataset import broken_dataset

runner = CliRunner()


def test_check_reports_a_broken_dataset_and_exits_2(tmp_path: Path) -> None:
    root = broken_dataset(tmp_path / "ds")
    res = runner.invoke(app, ["train-lora", "check", str(root), "--min-side", "64", "--json"])
    assert res.exit_code == 2
    report = json.loads(res.stdout)
    assert (report["pairs_found"], report["usable"], report["errors"], report["warnings"]) == (10, 4, 6, 2)
    codes = {p["code"]: p["count"] for p in report["problems"]}
    assert codes == {"missing_partner": 2, "unreadable": 1, "too_small": 1, "aspect_mismatch": 1,
                     "missing_caption": 1, "duplicate": 2}
    text = runner.invoke(app, ["train-lora", "check", str(root), "--min-side", "64"])
    assert text.exit_code == 2
    assert "not trainable as is" in text.stdout and "wide (source 96x96, target 160x96)" in text.stdout


def test_check_passes_a_good_dataset(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "ds", 3, size=(64, 64))
    res = runner.invoke(app, ["train-lora", "check", str(root), "--min-side", "64"])
    assert res.exit_code == 0 and "ok" in res.stdout and "3 usable" in res.stdout


def test_run_refuses_a_broken_dataset_before_loading_any_model(tmp_path: Path) -> None:
    root = broken_dataset(tmp_path / "ds")
    res = runner.invoke(app, ["train-lora", "run", str(root), "-o", str(tmp_path / "out"), "--min-side", "64",
                              "--model", str(tmp_path / "no-such-model")])
    assert res.exit_code == 2 and "--skip-bad-pairs" in res.output
    assert not (tmp_path / "out").exists()


def test_run_trains_resumes_and_exports(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "ds", 4, size=(128, 128))
    out = tmp_path / "run"
    common = ["train-lora", "run", str(root), "-o", str(out), "--model", str(tiny_model_dir), "--min-side", "64",
              "--rank", "4", "--lr", "3e-3", "--validate-every", "4", "--validation-pairs", "1",
              "--validation-steps", "2", "--checkpoint-every", "2", "--cache-dir", str(tmp_path / "cache")]
    first = runner.invoke(app, [*common, "--steps", "4", "--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["status"] == "completed" and Path(summary["lora"]).is_file()
    assert [v["step"] for v in summary["validations"]] == [0, 4]
    resumed = runner.invoke(app, [*common, "--steps", "6", "--resume", str(out), "--export-kohya"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from" in resumed.output and "step 6" in resumed.stdout
    assert (out / "lora_kohya.safetensors").is_file()
    assert (out / "metrics.csv").read_text().count("\n") == 1 + 6


def test_bad_options_name_the_field(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "ds", 2, size=(128, 128))
    res = runner.invoke(app, ["train-lora", "run", str(root), "-o", str(tmp_path / "o"), "--min-side", "64",
                              "--model", str(tiny_model_dir), "--rank", "0", "--json"])
    assert res.exit_code == 2
    assert json.loads(res.stdout)["error"]["message"].startswith("rank must be")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"steps": 2, "lerning_rate": 1}))
    res = runner.invoke(app, ["train-lora", "run", str(root), "-o", str(tmp_path / "o"), "--min-side", "64",
                              "--model", str(tiny_model_dir), "--config", str(cfg)])
    assert res.exit_code == 2 and "lerning_rate" in res.output


def test_run_with_an_fp8_base(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    root = make_pairs(tmp_path / "ds", 3, size=(128, 128))
    out = tmp_path / "run"
    res = runner.invoke(app, ["train-lora", "run", str(root), "-o", str(out), "--model", str(tiny_model_dir),
                              "--min-side", "64", "--rank", "4", "--steps", "2", "--validate-every", "0",
                              "--validation-pairs", "0", "--cache-dir", str(tmp_path / "cache"),
                              "--base-precision", "fp8", "--gradient-checkpointing"])
    assert res.exit_code == 0, res.output
    assert "base weights stored in fp8" in res.output
    with safe_open(str(out / "lora.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["kontext_studio"])["config"]["base_precision"] == "fp8"
    assert {v.dtype for v in load_file(str(out / "lora.safetensors")).values()} == {torch.float32}


def test_fp8_without_checkpointing_is_refused_before_loading_the_model(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "ds", 2, size=(128, 128))
    res = runner.invoke(app, ["train-lora", "run", str(root), "-o", str(tmp_path / "o"), "--min-side", "64",
                              "--model", str(tmp_path / "no-such-model"), "--base-precision", "fp8", "--json"])
    assert res.exit_code == 2, res.output
    error = json.loads(res.stdout)["error"]
    assert error["message"].startswith("base_precision must be") and "gradient_checkpointing" in error["message"]
