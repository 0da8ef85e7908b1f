"""The reference checker speaks to the picture it sees: severities info / warning / problem, advice that fits a
person or an object, plain words with the measurement on request, and no camera-photo verdicts on an earlier
result fed back in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageFilter
from skimage import data

from kontext_studio.analysis.common import Severity
from kontext_studio.analysis.reference_check import check_reference
from kontext_studio.core.images import load_reference
from kontext_studio.core.recipe import save_image_with_recipe
from kontext_studio.core.types import Reference
from tests.cli.test_cli import kontext

JARGON = ("laplacian", "normalised", "normalized", "quantisation", "quantization", "blockiness", "variance", "luma")


@pytest.fixture(scope="module")
def portrait() -> Image.Image:
    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def product() -> Image.Image:
    return Image.fromarray(data.coffee())  # a cup on a table: no face


def finding(report, code):  # type: ignore[no-untyped-def]
    return next(f for f in report.findings if f.code == code)


def test_severities_are_info_warning_problem(portrait: Image.Image) -> None:
    small = portrait.resize((300, 300), Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(3))
    report = check_reference(small)
    assert {f.severity for f in report.findings} <= {Severity.INFO, Severity.WARNING, Severity.PROBLEM}
    assert finding(report, "low_resolution").severity is Severity.PROBLEM
    assert report.as_dict()["findings"][0]["severity"] == "problem" and not report.ok


def test_advice_fits_a_product_or_a_person(portrait: Image.Image, product: Image.Image) -> None:
    cup = check_reference(product.resize((600, 400), Image.Resampling.BOX))
    low = finding(cup, "low_resolution")
    assert "facial" not in low.message.lower() and "texture" in low.message
    no_face = finding(cup, "no_face")
    assert no_face.severity is Severity.INFO and "person" not in (no_face.message + no_face.fix).lower()
    face = check_reference(portrait.resize((600, 600), Image.Resampling.BOX))
    assert "facial detail" in finding(face, "low_resolution").message
    assert "no_face" not in face.codes


def test_plain_words_with_the_number_on_request(portrait: Image.Image) -> None:
    soft = portrait.resize((400, 400), Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(3))
    report = check_reference(soft)
    for f in report.findings:
        text = (f.message + " " + f.fix).lower()
        assert not any(word in text for word in JARGON), f.message
    blur = finding(report, "blur")
    assert blur.detail is not None and f"{report.metrics['sharpness']:.3f}" in blur.detail
    assert "detail" in blur.as_dict()


def test_check_ref_shows_the_measurement_only_when_asked(portrait: Image.Image, tmp_path: Path) -> None:
    p = tmp_path / "soft.png"
    portrait.resize((400, 400), Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(3)).save(p)
    code, plain, _ = kontext("check-ref", p)
    assert code == 0 and "problem" in plain and "measured:" not in plain
    assert not any(word in plain.lower() for word in JARGON)
    code, detailed, _ = kontext("check-ref", p, "--details")
    assert code == 0 and "measured: sharpness" in detailed
    code, raw, _ = kontext("check-ref", p, "--json")
    blur = next(f for f in json.loads(raw)[str(p)]["findings"] if f["code"] == "blur")
    assert blur["severity"] == "problem" and "sharpness" in blur["detail"]


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_an_earlier_result_is_not_judged_as_a_camera_photo(portrait: Image.Image, tmp_path: Path,
                                                            suffix: str) -> None:
    # What a result of a small, soft input looks like: the same picture an edit writes back.
    soft = portrait.resize((480, 480), Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(3))
    plain = tmp_path / f"photo{suffix}"
    soft.save(plain, quality=30) if suffix != ".png" else soft.save(plain)
    assert {"low_resolution", "blur"} <= check_reference(plain).codes
    result = save_image_with_recipe(soft, tmp_path / f"result{suffix}", {"schema": 1, "seed": 1})
    for source in (result, load_reference(Reference(result)).image):  # a path (check-ref) or the engine's image
        report = check_reference(source)
        assert not {"low_resolution", "blur", "jpeg_quality", "jpeg_artifacts"} & report.codes, report.codes
        assert "earlier_result" in report.codes and report.metrics["made_by_kontext"] is True
