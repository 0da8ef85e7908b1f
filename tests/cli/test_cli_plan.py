"""``kontext plan``: plans for another card, JSON, and the exit code when nothing fits."""

from __future__ import annotations

import json

from tests.cli.test_cli import kontext


def test_plan_for_a_12_gb_card_covers_every_local_model() -> None:
    code, stdout, _ = kontext("plan", "--vram", "12")
    assert code == 0
    text = " ".join(stdout.split())
    assert "Plans for a 12 GB ada card" in text
    for title in ("FLUX.1 Kontext [dev]", "FLUX.2 [klein] 4B", "Qwen-Image-Edit-2511"):
        assert title in text


def test_plan_json_for_one_model() -> None:
    code, stdout, _ = kontext("plan", "--vram", "80", "--gpu", "hopper", "--model", "dev", "--json")
    assert code == 0
    data = json.loads(stdout)
    (plan,) = data["plans"]
    assert plan["fits"] and plan["precision"] == "bf16" and plan["offload"] == "gpu"
    assert plan["attention"] == "_flash_3"


def test_plan_that_cannot_fit_exits_3_with_the_smallest_plan() -> None:
    code, stdout, _ = kontext("plan", "--vram", "8", "--ram", "32", "--model", "flux2-dev", "--json")
    assert code == 3
    (plan,) = json.loads(stdout)["plans"]
    assert not plan["fits"] and plan["smallest"]["vram_gib"] > 7
    assert "smallest plan" in plan["error"]


def test_plan_bad_input_names_the_option() -> None:
    code, _, stderr = kontext("plan", "--vram", "12", "--gpu", "voodoo")
    assert code == 2 and "--gpu must be one of" in stderr
    code, _, stderr = kontext("plan", "--model", "sdxl", "--vram", "12")
    assert code == 2 and "dev" in stderr


def test_doctor_shows_the_plan_for_this_machine() -> None:
    code, stdout, _ = kontext("doctor", "--json")
    assert code == 0
    assert "Kontext" in json.loads(stdout)["plan"]


def test_models_shows_the_plan_for_this_machine() -> None:
    code, stdout, _ = kontext("models", "--json")
    assert code == 0
    assert "FLUX.1 Kontext [dev]" in json.loads(stdout)["plan"]
