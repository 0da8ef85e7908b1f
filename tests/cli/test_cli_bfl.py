"""``kontext edit --tier pro|max`` against the fake BFL server: same output, recipe and scores as a local edit,
and clear messages and exit codes for what BFL refuses."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from kontext_studio.core.recipe import read_recipe
from kontext_studio.testing.fake_bfl import FakeBflServer, Scenario
from tests.cli.test_cli import kontext
from tests.conftest import noise_image

KEY = "fake-bfl-key"


@pytest.fixture()
def bfl_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBflServer]:
    monkeypatch.setenv("KONTEXT_HOME", str(tmp_path / "home"))
    with FakeBflServer(KEY, Scenario(pending_polls=1)) as fake:
        monkeypatch.setenv("BFL_API_KEY", KEY)
        monkeypatch.setenv("BFL_BASE_URL", fake.url)
        yield fake


def test_edit_pro_keeps_the_exact_size_and_records_the_task(bfl_env: FakeBflServer, photo: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "beach.png"
    code, stdout, stderr = kontext("edit", photo, "put her on a beach at sunset", "-o", out, "--tier", "pro",
                                   "--seed", "7", "--safety-tolerance", "5", "--prompt-upsampling")
    assert code == 0, stderr
    assert f"saved {out}" in stdout.replace("\n", "") and ("subject:" in stdout or "face:" in stdout)
    with Image.open(out) as img:
        assert img.size == (1000, 700)
    recipe = read_recipe(out)
    assert recipe["tier"] == "pro" and recipe["seed"] == 7 and recipe["hosted"]["task_id"] == "fake-task-1"
    assert recipe["hosted"]["cost"] == 4.0 and recipe["identity"]["similarity"] is not None
    assert recipe["pixel_lock_result"] is not None and len(bfl_env.submissions) == 1
    body = bfl_env.submissions[0]
    assert body["safety_tolerance"] == 5 and body["prompt_upsampling"] is True and body["seed"] == 7
    code, stdout, stderr = kontext("edit", photo, "x", "-o", tmp_path / "g.png", "--tier", "pro", "--identity-guard",
                                   "0.99", "--json")
    assert code == 0, stderr  # one candidate on a hosted tier: scored and reported, not retried at BFL's expense
    assert len(json.loads(stdout)["identity"]["candidates"]) == 1 and len(bfl_env.submissions) == 2
    code, _, stderr = kontext("edit", photo, "x", "-o", tmp_path / "o.png", "--tier", "pro", "--safety-tolerance", "9")
    assert code == 2 and "safety_tolerance must be an integer from 0 (strictest) to 6" in " ".join(stderr.split())


def test_edit_max_with_four_references_and_roles_as_json(bfl_env: FakeBflServer, tmp_path: Path) -> None:
    paths = []
    for i in range(4):
        p = tmp_path / f"ref{i}.jpg"
        noise_image(300 + 20 * i, 400, seed=i).save(p)
        paths.append(p)
    roles = ["subject", "garment", "object", "background"]
    code, stdout, stderr = kontext("edit", *paths, "she wears the coat and holds the cup", "-o", tmp_path / "o.jpg",
                                   "--tier", "max", *[x for r in roles for x in ("--role", r)], "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["size"] == [300, 400] and data["recipe"]["hosted"]["endpoint"] == "flux-kontext-max"
    assert data["recipe"]["output_format"] == "jpeg" and data["identity"] is not None
    body = bfl_env.submissions[0]
    sizes = [Image.open(io.BytesIO(base64.b64decode(body[f]))).size
             for f in ("input_image", "input_image_2", "input_image_3", "input_image_4")]
    assert sizes == [(300, 400), (320, 400), (340, 400), (360, 400)] and body["output_format"] == "jpeg"
    assert body["prompt"].startswith("Image 1 is the subject; image 2 is the garment; image 3 is the object")


def test_pro_with_two_references_is_a_clear_error(bfl_env: FakeBflServer, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.png"
    code, _, stderr = kontext("edit", photo, photo, "x", "-o", out, "--tier", "pro")
    assert code == 2 and "tier pro takes at most 1 reference" in " ".join(stderr.split())
    assert bfl_env.submit_attempts == [] and not out.exists()


def test_bad_key_and_moderation_get_their_exit_codes(bfl_env: FakeBflServer, photo: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BFL_API_KEY", "wrong")
    code, _, stderr = kontext("edit", photo, "x", "-o", tmp_path / "o.png", "--tier", "pro")
    assert code == 3 and "BFL refused the API key" in " ".join(stderr.split())
    monkeypatch.setenv("BFL_API_KEY", KEY)
    bfl_env.scenario.final_status = "Content Moderated"
    code, stdout, stderr = kontext("edit", photo, "x", "-o", tmp_path / "o.png", "--tier", "pro", "--json")
    assert code == 4 and json.loads(stdout)["error"]["code"] == "content_moderated"
    assert "moderation withheld" in " ".join(stderr.split()) and not (tmp_path / "o.png").exists()


def test_models_and_doctor_show_the_bfl_configuration(bfl_env: FakeBflServer, monkeypatch: pytest.MonkeyPatch) -> None:
    code, stdout, _ = kontext("models", "--json")
    tiers = {t["tier"]: t for t in json.loads(stdout)["tiers"]}
    assert code == 0 and tiers["pro"]["status"] == f"configured: BFL API at {bfl_env.url}"
    assert tiers["max"]["status"].startswith("configured") and tiers["max"]["backend"] == "bfl_api"
    code, stdout, _ = kontext("doctor", "--json")
    assert code == 0 and json.loads(stdout)["bfl_api"].startswith("configured")
    monkeypatch.delenv("BFL_API_KEY")
    code, stdout, _ = kontext("models", "--json")
    tiers = {t["tier"]: t for t in json.loads(stdout)["tiers"]}
    assert tiers["pro"]["status"].startswith("not configured: needs BFL_API_KEY")
    code, stdout, _ = kontext("doctor", "--json")
    assert "set BFL_API_KEY" in json.loads(stdout)["bfl_api"]
