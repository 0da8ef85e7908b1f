"""``kontext verify`` on outputs of ``kontext edit``: trusted here, failing once tampered, replayable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kontext_studio.core.provenance import current_content_credentials, use_content_credentials
from tests.cli.test_cli import kontext
from tests.provenance.tamper import TAMPER


@pytest.fixture()
def home_env(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    before = current_content_credentials()
    use_content_credentials(None)  # commands find this installation's signer through the CLI's provider
    monkeypatch.setenv("KONTEXT_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("KONTEXT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KONTEXT_SIGNING_CERT", raising=False)
    monkeypatch.delenv("KONTEXT_SIGNING_KEY", raising=False)
    yield tmp_path / "home"
    use_content_credentials(before)


def test_edit_output_verifies_and_replays_and_tampering_fails(home_env: Path, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jpg"
    code, _, stderr = kontext("edit", photo, "as an oil painting", "-o", out, "--steps", "2", "--seed", "3")
    assert code == 0, stderr
    assert (home_env / "credentials" / "ca.pem").is_file()  # made on first start, in the data folder
    code, stdout, _ = kontext("verify", out, "--json")
    report = json.loads(stdout)
    assert code == 0 and report["credentials"] == "trusted" and report["ai_generated"] is True
    step = report["history"][0]
    assert step["ingredients"][0] == {"title": "photo.jpg", "relationship": "parentOf", "has_manifest": False}
    assert report["recipe"]["seed"] == 3
    code, stdout, _ = kontext("verify", out)
    assert code == 0 and "a CA this installation trusts" in " ".join(stdout.split())
    # The recipe still drives a replay of a signed output, and the replay is signed too.
    code, stdout, stderr = kontext("replay", out, "--json")
    assert code == 0 and json.loads(stdout)["identical"] is True, stderr
    assert kontext("verify", json.loads(stdout)["output"])[0] == 0
    tampered = tmp_path / "tampered.jpg"
    tampered.write_bytes(TAMPER["jpeg"](out.read_bytes()))
    code, stdout, _ = kontext("verify", tampered)
    assert code == 1 and "FAILS validation" in stdout and "changed after" in " ".join(stdout.split())


def test_verify_a_photo_without_credentials_and_bad_input(home_env: Path, photo: Path, tmp_path: Path) -> None:
    code, stdout, _ = kontext("verify", photo, "--json")
    assert code == 4 and json.loads(stdout)["credentials"] == "none"
    code, _, stderr = kontext("verify", tmp_path / "missing.png")
    assert code == 2 and "no such file" in stderr
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    code, _, stderr = kontext("verify", text)
    assert code == 2 and "not an image" in stderr


def test_bring_your_own_certificate_from_the_environment(home_env: Path, photo: Path, tmp_path: Path,
                                                         organisation: tuple[Path, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    chain, key = organisation
    monkeypatch.setenv("KONTEXT_SIGNING_CERT", str(chain))
    monkeypatch.setenv("KONTEXT_SIGNING_KEY", str(key))
    out = tmp_path / "org.png"
    assert kontext("edit", photo, "in winter", "-o", out, "--steps", "1", "--seed", "1")[0] == 0
    code, stdout, _ = kontext("verify", out, "--json")
    report = json.loads(stdout)
    assert code == 0 and report["credentials"] == "trusted"
    assert report["signer"] == "Example Newsroom picture desk"
    assert not (home_env / "credentials").exists()


def test_a_self_signed_certificate_in_the_environment_is_refused(home_env: Path, photo: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.provenance.conftest import make_cert, pem

    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "me.pem").write_bytes(pem(make_cert("Me", key)))
    (tmp_path / "me.key").write_bytes(pem(key))
    monkeypatch.setenv("KONTEXT_SIGNING_CERT", str(tmp_path / "me.pem"))
    monkeypatch.setenv("KONTEXT_SIGNING_KEY", str(tmp_path / "me.key"))
    code, _, stderr = kontext("edit", photo, "in winter", "-o", tmp_path / "x.png", "--steps", "1")
    assert code == 3 and "self-signed" in stderr and "issued by a CA" in " ".join(stderr.split())
    assert not (tmp_path / "x.png").exists()


def test_pixel_lock_output_is_signed_with_the_edit_as_parent(home_env: Path, photo: Path, tmp_path: Path) -> None:
    edited = tmp_path / "edited.png"
    assert kontext("edit", photo, "in winter", "-o", edited, "--steps", "1", "--seed", "2")[0] == 0
    use_content_credentials(None)  # the pixel lock alone: no engine was built in this process
    fixed = tmp_path / "fixed.png"
    code, _, stderr = kontext("pixel-lock", photo, edited, "-o", fixed)
    assert code == 0, stderr
    code, stdout, _ = kontext("verify", fixed, "--json")
    report = json.loads(stdout)
    assert code == 0 and report["credentials"] == "trusted"
    newest, parent = report["history"]
    assert newest["ai"] is False and "pixel-lock" in newest["sentence"]
    assert [i["relationship"] for i in newest["ingredients"]] == ["parentOf", "componentOf"]
    assert parent["ai"] is True
