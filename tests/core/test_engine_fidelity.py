"""The engine's fidelity hooks: reference checks, identity guard over candidates, pixel lock, edit chains.

These use the named fake analyser (pixel statistics) so the engine's control flow is tested on its own;
the real analyser is tested in tests/analysis and end to end in tests/cli.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kontext_studio.analysis.fake import FakeFidelity
from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import InvalidRequest
from kontext_studio.core.registry import get_tier
from kontext_studio.core.types import EditRequest, Reference
from tests.conftest import noise_image


@pytest.fixture()
def checked(backend) -> tuple[Editor, FakeFidelity]:  # type: ignore[no-untyped-def]
    backend.loras.apply([])
    fidelity = FakeFidelity()
    return Editor({"diffusers": backend}, fidelity=fidelity), fidelity


def similarities(editor: Editor, img: Image.Image, seeds: range) -> list[float]:
    """The fake analyser's score for each seed, from plain edits."""
    plain = Editor({"diffusers": editor.backend_for(get_tier("dev"))})
    fake = FakeFidelity()
    return [fake.identity(img, plain.edit(EditRequest([Reference(img)], "x", seed=s, steps=2)).image).similarity
            or 0.0 for s in seeds]


def test_result_carries_identity_and_reference_findings(checked: tuple[Editor, FakeFidelity]) -> None:
    editor, fidelity = checked
    r = editor.edit(EditRequest([Reference(noise_image(300, 200))], "make it snowy", seed=3, steps=2))
    assert r.identity is not None and 0.0 <= r.identity["similarity"] <= 1.0
    assert r.identity["candidates"] == [{"seed": 3, "similarity": r.identity["similarity"],
                                         "passed": r.identity["passed"]}]
    assert r.findings[0][0]["code"] == "low_resolution"
    assert any(w.startswith("reference 1: short side 200 px") for w in r.warnings)
    assert r.recipe["identity"] == r.identity and r.recipe["reference_checks"] == r.findings
    assert fidelity.calls == {"check_reference": 1, "identity": 1, "lock": 1}


def test_guard_tries_seeds_until_one_passes_and_keeps_the_best(checked: tuple[Editor, FakeFidelity]) -> None:
    editor, _ = checked
    img = noise_image(128, 128, seed=4)
    sims = similarities(editor, img, range(10, 14))
    assert len(set(sims)) == 4
    threshold = sims[1 + int(np.argmax(sims[1:]))]  # reached by at least one seed after the first
    r = editor.edit(EditRequest([Reference(img)], "x", seed=10, steps=2, identity_guard=threshold, candidates=4))
    tried = r.identity["candidates"]
    stop = next(i for i, s in enumerate(sims) if s >= threshold)
    assert [t["seed"] for t in tried] == list(range(10, 10 + stop + 1)), "stops at the first passing seed"
    assert r.seed == 10 + stop and r.recipe["seed"] == r.seed
    assert all(t["similarity"] == pytest.approx(s) for t, s in zip(tried, sims, strict=False))


def test_guard_that_nobody_passes_returns_the_best_with_a_warning(checked: tuple[Editor, FakeFidelity]) -> None:
    editor, _ = checked
    img = noise_image(128, 128, seed=4)
    sims = similarities(editor, img, range(20, 23))
    r = editor.edit(EditRequest([Reference(img)], "x", seed=20, steps=2, identity_guard=1.0, candidates=3))
    assert len(r.identity["candidates"]) == 3
    assert r.seed == 20 + int(np.argmax(sims))
    assert r.identity["similarity"] == pytest.approx(max(sims))
    assert any("no candidate reached similarity 1.00 in 3 tries" in w for w in r.warnings)
    # the chosen candidate is exactly what a plain edit with its seed gives
    plain = editor.edit(EditRequest([Reference(img)], "x", seed=r.seed, steps=2))
    assert np.array_equal(np.asarray(plain.image), np.asarray(r.image))


def test_guard_fields_are_validated() -> None:
    for bad in ({"identity_guard": 1.5}, {"candidates": 0}, {"candidates": 99}, {"pixel_lock": "sometimes"}):
        with pytest.raises(InvalidRequest):
            EditRequest([Reference("a.png")], "x", **bad).validate()  # type: ignore[arg-type]


def test_pixel_lock_off_and_changed_geometry_are_reported(checked: tuple[Editor, FakeFidelity]) -> None:
    editor, fidelity = checked
    img = noise_image(200, 150)
    off = editor.edit(EditRequest([Reference(img)], "x", seed=1, steps=1, pixel_lock="off"))
    assert off.pixel_lock is None and fidelity.calls["lock"] == 0
    ratio = editor.edit(EditRequest([Reference(img)], "x", seed=1, steps=1, aspect_ratio="16:9"))
    assert ratio.pixel_lock is not None and ratio.pixel_lock["applied"] is False
    assert "aspect ratio changed" in ratio.pixel_lock["reason"]


def test_mask_must_match_the_input(checked: tuple[Editor, FakeFidelity], tmp_path: Path) -> None:
    editor, _ = checked
    mask = tmp_path / "mask.png"
    Image.new("L", (50, 50), 255).save(mask)
    with pytest.raises(InvalidRequest, match="lock_mask is 50x50 but the input is 200x150"):
        editor.edit(EditRequest([Reference(noise_image(200, 150))], "x", steps=1, lock_mask=mask))


def test_a_chain_of_edits_reports_drift_from_the_original(checked: tuple[Editor, FakeFidelity],
                                                         tmp_path: Path) -> None:
    editor, _ = checked
    original = tmp_path / "original.png"
    noise_image(160, 128, seed=2).save(original)
    first = editor.edit(EditRequest([Reference(original)], "make it snowy", seed=1, steps=1))
    assert first.recipe["chain"] is None  # a plain photo starts no chain
    turn1 = first.save(tmp_path / "turn1.png")
    second = editor.edit(EditRequest([Reference(turn1)], "now at night", seed=2, steps=1))
    chain = second.recipe["chain"]
    assert chain["turn"] == 2 and chain["origin"]["path"] == str(original.resolve())
    assert 0.0 <= chain["drift"]["similarity"] <= 1.0
    turn2 = second.save(tmp_path / "turn2.png")
    third = editor.edit(EditRequest([Reference(turn2)], "add a hat", seed=3, steps=1))
    assert third.recipe["chain"]["turn"] == 3
    assert third.recipe["chain"]["origin"]["sha256"] == first.recipe["references"][0]["sha256"]


def test_series_contact_sheet_labels_carry_the_score(checked: tuple[Editor, FakeFidelity]) -> None:
    editor, fidelity = checked
    res = editor.series(EditRequest([Reference(noise_image(128, 128))], "x", seed=2, steps=1),
                        ["on a beach", "in the snow"])
    assert all(r.identity and r.identity["similarity"] is not None for r in res.results)
    assert fidelity.calls["identity"] == 2
