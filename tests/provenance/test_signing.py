"""Every output carries a signed C2PA manifest: it verifies, fails once the pixels change, keeps the
recipe, names its model and inputs, and keeps an earlier output's history as its parent."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.core.provenance import (
    ContentClaim,
    ContentCredentials,
    CredentialConfig,
    sign_file,
    sign_output,
    sign_tool_output,
)
from kontext_studio.core.provenance.inspect import inspect_provenance
from kontext_studio.core.recipe import read_recipe
from kontext_studio.core.types import EditRequest, Reference
from tests.conftest import noise_image
from tests.provenance.tamper import TAMPER

SUFFIX = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def fake_edit(tmp_path: Path, source: Path, fmt: str = "png", instruction: str = "make it snowy") -> Path:
    """An engine output (fake backend, real Editor) saved the way every face saves it."""
    editor = Editor({"fake": FakeBackend(resolution=128)})
    result = editor.edit(EditRequest(references=[Reference(source)], instruction=instruction, seed=7, steps=2,
                                     output_format=fmt))
    return result.save(tmp_path / f"out{SUFFIX[fmt]}")


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    p = tmp_path / "holiday.png"
    noise_image(160, 120, seed=3).save(p)
    return p


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_engine_output_verifies_keeps_its_recipe_and_fails_after_tampering(
        fmt: str, credentials: ContentCredentials, photo: Path, tmp_path: Path) -> None:
    out = fake_edit(tmp_path, photo, fmt)
    report = inspect_provenance(out)
    assert report.credentials == "trusted", report.summary
    assert report.ai_generated is True and report.format == {"jpeg": "JPEG"}.get(fmt, fmt.upper())
    (step,) = report.history
    edit = next(a for a in step.actions if a.action == "c2pa.edited")
    assert edit.ai and edit.digital_source_type.endswith("trainedAlgorithmicMedia")
    assert edit.description == "make it snowy" and edit.model  # the model that made the pixels is named
    assert [(i.title, i.relationship) for i in step.ingredients] == [("holiday.png", "parentOf")]
    # The recipe and the IPTC mark are still there, after signing.
    assert read_recipe(out)["instruction"] == "make it snowy" and read_recipe(out)["seed"] == 7
    assert report.iptc_source_type and report.iptc_source_type.endswith("trainedAlgorithmicMedia")
    # Change the pixels, keep every byte of metadata: the manifest no longer matches.
    tampered = TAMPER[fmt](out.read_bytes())
    bad = inspect_provenance(tampered)
    assert bad.credentials == "invalid" and not bad.validates
    assert "changed after the image was signed" in bad.credentials_text
    assert any(f.startswith("assertion.dataHash.mismatch") for f in bad.failures)


def test_tampered_png_still_opens_with_other_pixels(credentials: ContentCredentials, photo: Path,
                                                    tmp_path: Path) -> None:
    out = fake_edit(tmp_path, photo, "png")
    tampered = TAMPER["png"](out.read_bytes())
    before = np.asarray(Image.open(out).convert("RGB"))
    after = np.asarray(Image.open(io.BytesIO(tampered)).convert("RGB"))
    assert (before != after).any()  # a real picture change, not a broken file
    assert inspect_provenance(tampered).credentials == "invalid"


def test_edit_then_tool_keeps_the_chain(credentials: ContentCredentials, photo: Path, tmp_path: Path) -> None:
    edited = fake_edit(tmp_path, photo, "jpeg")
    small = io.BytesIO()
    Image.open(edited).resize((80, 60)).save(small, format="WEBP")
    tooled = sign_output(small.getvalue(), "webp", ContentClaim(action="c2pa.resized", ai=False, tool="resize",
                                                                parameters={"width": 80, "height": 60}),
                         [edited])
    assert tooled.signed
    report = inspect_provenance(tooled.data)
    assert report.credentials == "trusted" and report.ai_generated is True  # the AI step is in its history
    newest, parent = report.history
    assert [a.action for a in newest.actions] == ["c2pa.opened", "c2pa.resized"] and not newest.ai
    assert newest.ingredients[0].relationship == "parentOf" and newest.ingredients[0].has_manifest
    assert parent.ai and any(a.description == "make it snowy" for a in parent.actions)
    assert "AI edit" in report.summary and "resized (tool resize)" in report.summary
    # And a second tool on top keeps all three steps.
    again = io.BytesIO()
    Image.open(io.BytesIO(tooled.data)).rotate(90).save(again, format="PNG")
    third = sign_output(again.getvalue(), "png", ContentClaim(action="c2pa.orientation", ai=False,
                                                              tool="rotate"), [tooled.data])
    assert [len(s.actions) > 0 for s in inspect_provenance(third.data).history] == [True, True, True]


def test_several_references_are_component_ingredients(credentials: ContentCredentials, photo: Path,
                                                      tmp_path: Path) -> None:
    garment = tmp_path / "jacket.png"
    noise_image(100, 100, seed=9).save(garment)
    editor = Editor({"fake": FakeBackend(resolution=128)})
    result = editor.edit(EditRequest(references=[Reference(photo), Reference(garment)],
                                     instruction="dress her in the jacket", seed=1, steps=1))
    (step,) = inspect_provenance(result.save(tmp_path / "dressed.png")).history
    assert [(i.title, i.relationship) for i in step.ingredients] == [("holiday.png", "parentOf"),
                                                                     ("jacket.png", "componentOf")]
    assert [a.action for a in step.actions] == ["c2pa.opened", "c2pa.placed", "c2pa.edited"]


def test_another_installation_sees_an_unknown_issuer(credentials: ContentCredentials, photo: Path,
                                                    tmp_path: Path) -> None:
    out = fake_edit(tmp_path, photo)
    elsewhere = ContentCredentials(CredentialConfig(folder=tmp_path / "elsewhere"))
    elsewhere.identity()
    report = inspect_provenance(out, credentials=elsewhere)
    assert report.credentials == "unknown_issuer" and report.validates
    assert "unknown issuer" in report.credentials_text


def test_a_tool_output_without_inputs_is_a_creation(credentials: ContentCredentials, tmp_path: Path) -> None:
    buf = io.BytesIO()
    noise_image(64, 64).save(buf, format="PNG")
    path = tmp_path / "grid.png"
    path.write_bytes(buf.getvalue())
    assert sign_file(path, ContentClaim(action="c2pa.created", ai=False, tool="collage")).signed
    (step,) = inspect_provenance(path).history
    assert [a.action for a in step.actions] == ["c2pa.created"] and not step.ai
    assert step.title == "grid.png"


def test_without_c2pa_outputs_are_written_unsigned_with_a_note(credentials: ContentCredentials, photo: Path,
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "c2pa", None)  # what an install without the package looks like
    editor = Editor({"fake": FakeBackend(resolution=128)})
    result = editor.edit(EditRequest(references=[Reference(photo)], instruction="make it snowy", seed=1, steps=1))
    out = result.save(tmp_path / "plain.png")
    assert any("c2pa-python package is not installed" in w for w in result.warnings)
    assert read_recipe(out)["seed"] == 1
    report = inspect_provenance(out)
    assert report.credentials == "unavailable" and report.ai_generated is True  # the IPTC mark still says so
    monkeypatch.undo()
    assert inspect_provenance(out).credentials == "none"


def test_no_configured_signer_means_unsigned_with_a_note(photo: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from kontext_studio.core.provenance import credentials as credentials_module

    monkeypatch.setattr(credentials_module, "_current", None)
    monkeypatch.setattr(credentials_module, "_provider", None)  # as in a library user's own program
    signed = sign_output(photo.read_bytes(), "png", ContentClaim())
    assert not signed.signed and signed.data == photo.read_bytes()
    assert "no signing identity is configured" in (signed.note or "")


def test_tool_outputs_name_their_action_and_a_collage_composes_its_inputs(
        credentials: ContentCredentials, photo: Path, tmp_path: Path) -> None:
    edited = fake_edit(tmp_path, photo, "png")
    crop = io.BytesIO()
    Image.open(edited).crop((0, 0, 80, 80)).save(crop, format="JPEG")
    cropped = sign_tool_output(crop.getvalue(), "jpeg", "crop", [edited], parameters={"preset": "1:1"})
    newest, parent = inspect_provenance(cropped.data).history
    assert [a.action for a in newest.actions] == ["c2pa.opened", "c2pa.cropped"] and parent.ai
    grid = io.BytesIO()
    Image.new("RGB", (160, 80)).save(grid, format="PNG")
    collage = sign_tool_output(grid.getvalue(), "png", "collage", [cropped.data, photo])
    report = inspect_provenance(collage.data)
    newest = report.history[0]
    assert [a.action for a in newest.actions] == ["c2pa.created", "c2pa.placed"]
    assert [i.relationship for i in newest.ingredients] == ["componentOf", "componentOf"]
    assert report.credentials == "trusted"
    upscaled = sign_tool_output(crop.getvalue(), "jpeg", "upscale", [edited], ai=True, model="Real-ESRGAN x4plus")
    (action,) = [a for a in inspect_provenance(upscaled.data).history[0].actions if a.action == "c2pa.resized"]
    assert action.ai and action.model == "Real-ESRGAN x4plus"


@pytest.mark.parametrize("fmt", ["avif", "tiff", "gif"])
def test_other_formats_a_tool_can_write_are_signed_too(fmt: str, credentials: ContentCredentials,
                                                       photo: Path) -> None:
    buf = io.BytesIO()
    Image.open(photo).save(buf, format=fmt.upper())
    # This test's own signer on both sides, whatever another test left installed process-wide.
    signed = sign_tool_output(buf.getvalue(), fmt, "convert", [photo], credentials=credentials)
    assert signed.signed, signed.note
    report = inspect_provenance(signed.data, credentials=credentials)
    assert report.credentials == "trusted" and report.format == fmt.upper(), report.summary
    assert Image.open(io.BytesIO(signed.data)).size == (160, 120)  # still a picture every reader opens


def test_inspecting_a_decompression_bomb_reads_no_pixels(tmp_path: Path) -> None:
    from tests.core.test_images import png_header_only

    report = inspect_provenance(png_header_only(tmp_path / "bomb.png", 30_000, 30_000))
    assert report.format == "PNG" and report.size is None and report.credentials == "none"
    assert report.ai_generated is None
