"""The prompt coach: exact finding codes on a table of real-world prompts, spans, fixes, rewrites, speed."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import pytest

from kontext_studio.analysis.common import Finding, Severity
from kontext_studio.analysis.prompt_coach import CODES, CoachReport, coach
from tests.analysis.prompt_table import BAD, GOOD, TABLE, Case

IDS = [c.id for c in TABLE]


def run(c: Case, prompt: str | None = None) -> CoachReport:
    return coach(c.prompt if prompt is None else prompt, references=c.references,
                 roles=list(c.roles) if c.roles is not None else None)


def test_table_is_big_and_covers_every_code() -> None:
    assert len(TABLE) >= 40
    assert len(GOOD) >= 15 and len(BAD) >= 25
    assert len({(c.prompt, c.references, c.roles) for c in TABLE}) == len(TABLE)
    seen = set().union(*(c.codes for c in BAD)) | {"too_long"}  # too_long has its own test
    assert seen == set(CODES)


@pytest.mark.parametrize("c", TABLE, ids=IDS)
def test_exact_codes(c: Case) -> None:
    assert run(c).codes == set(c.codes)


@pytest.mark.parametrize("c", TABLE, ids=IDS)
def test_findings_are_well_formed(c: Case) -> None:
    report = run(c)
    for f in report.findings:
        assert isinstance(f, Finding)
        assert f.severity is CODES[f.code]
        assert f.span is not None
        start, end = f.span
        assert 0 <= start <= end <= len(c.prompt)
        if c.prompt.strip():
            assert end > start and c.prompt[start:end].strip(), f"{f.code} points at nothing"
            assert c.prompt[start:end] == c.prompt[start:end].strip(), f"{f.code} span has loose whitespace"
        assert len(f.message) > 40 and len(f.fix) > 20  # why it matters, and what to do
    severities = [f.severity for f in report.findings]
    order = [Severity.ERROR, Severity.WARNING, Severity.INFO]
    assert severities == sorted(severities, key=order.index)


@pytest.mark.parametrize("c", [c for c in BAD if c.spans], ids=[c.id for c in BAD if c.spans])
def test_spans_point_at_the_relevant_words(c: Case) -> None:
    report = run(c)
    for code, words in c.spans.items():
        texts = [c.prompt[f.span[0]:f.span[1]].lower() for f in report.findings if f.code == code and f.span]
        assert texts, code
        assert any(all(w.lower() in t for w in words) for t in texts), (code, texts, words)


@pytest.mark.parametrize("c", [c for c in BAD if c.rewrite], ids=[c.id for c in BAD if c.rewrite])
def test_rewrite_fixes_what_was_found(c: Case) -> None:
    report = run(c)
    assert report.rewrite is not None
    again = run(c, report.rewrite)
    assert not (again.codes & c.codes), (report.rewrite, again.codes)
    # and introduces nothing new either
    assert again.codes == set(), (report.rewrite, [str(f) for f in again.findings])
    assert report.rewrite[0].isupper() and report.rewrite.endswith(".")


@pytest.mark.parametrize("c", GOOD, ids=[c.id for c in GOOD])
def test_good_prompts_get_no_rewrite(c: Case) -> None:
    assert run(c).rewrite is None


def test_bfl_style_rewrites() -> None:
    assert coach("put her on a beach at sunset").rewrite == (
        "Put the woman on a beach at sunset; keep her face, pose and outfit exactly the same.")
    assert coach("in a navy suit").rewrite == (
        "Dress the person in a navy suit; keep their face, pose, expression and the background exactly the same.")
    assert coach("as art").rewrite == "Turn the image into art; keep the composition and layout the same."
    assert coach("change the sign text from OPEN to CLOSED").rewrite == (
        'Replace "OPEN" with "CLOSED" on the sign; keep the font, colours and layout exactly the same.')
    many = coach("change the background to a beach and make her wear a red dress and turn it into a watercolor "
                 "and add a hat")
    assert many.rewrite == ("Change the background to a beach and make the woman wear a red dress; keep her face, "
                            "pose and expression exactly the same.")
    fix = next(f.fix for f in many.findings if f.code == "too_many_changes")
    assert "watercolor" in fix and "add a hat" in fix  # the rest is chained, not lost


def test_redescription_rewrite_uses_a_stable_reference() -> None:
    report = coach("A beautiful blonde woman with blue eyes on a beach")
    assert report.rewrite == "Put the woman on a beach; keep her face, pose and outfit exactly the same."
    for word in ("blonde", "blue", "beautiful"):
        assert word not in report.rewrite.lower()


def test_redescription_depends_on_references_and_roles() -> None:
    prompt = "Put a blonde woman with blue eyes in a navy suit; keep the background"
    assert "redescribes_subject" in coach(prompt).codes
    assert "redescribes_subject" in coach(prompt, references=2, roles=["subject", "garment"]).codes
    assert "redescribes_subject" not in coach(prompt, references=0).codes
    assert "redescribes_subject" not in coach(prompt, references=1, roles=["garment"]).codes
    # a selector with "the" names a person already in the picture, as BFL's guide recommends
    assert coach("Put the woman with short black hair in a navy suit; keep her face and pose").codes == set()


def test_pronoun_check_needs_two_subject_references() -> None:
    prompt = "Put her next to him; keep both faces unchanged"
    assert coach(prompt).codes == set()
    assert coach(prompt, references=2).codes == set()  # roles unknown: no guess
    assert coach(prompt, references=2, roles=["subject", "subject"]).codes == {"ambiguous_pronoun"}
    rewrite = coach(prompt, references=2, roles=["subject", "subject"]).rewrite
    assert rewrite == ("Put the person from the first image next to the person from the second image; keep both "
                       "faces unchanged.")


def test_style_reference_names_the_style() -> None:
    assert "unnamed_style" in coach("Make it in a different style").codes
    assert coach("Make it in a different style; keep the composition", references=2,
                 roles=["subject", "style"]).codes == set()


def test_too_long_for_t5() -> None:
    prompt = "Change the background to a beach; keep her face. " + "Extra detail words here. " * 120
    report = coach(prompt)
    found = [f for f in report.findings if f.code == "too_long"]
    assert len(found) == 1
    start, end = found[0].span  # type: ignore[misc]
    assert end == len(prompt) and 0 < start < end
    assert "too_long" not in coach("Change the background to a beach; keep her face.").codes


def test_as_dict_is_json_ready() -> None:
    report = coach("A beautiful blonde woman with blue eyes on a beach")
    data = report.as_dict()
    assert set(data) == {"ok", "findings", "rewrite"}
    assert data["ok"] is False and data["rewrite"] == report.rewrite
    first = data["findings"][0]
    assert set(first) == {"code", "severity", "message", "fix", "span"}
    assert first["severity"] in {"error", "warning", "info"} and isinstance(first["span"], list)
    assert json.loads(json.dumps(data)) == data
    assert coach("Replace 'joy' with 'BFL'").as_dict() == {"ok": True, "findings": [], "rewrite": None}


def test_deterministic() -> None:
    for c in TABLE:
        first = run(c).as_dict()
        assert all(run(c).as_dict() == first for _ in range(3))


def test_fast() -> None:
    prompts = [c for c in TABLE] * 5
    for c in TABLE:  # warm the regex caches
        run(c)
    start = time.perf_counter()
    for c in prompts:
        run(c)
    per_prompt = (time.perf_counter() - start) / len(prompts)
    assert per_prompt < 0.005, f"{per_prompt * 1000:.2f} ms per prompt"


def test_module_is_pure() -> None:
    """No entry point, no randomness, no clock, no environment: a pure function of its arguments."""
    import kontext_studio.analysis.prompt_coach as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        assert not (isinstance(node, ast.Constant) and node.value == "__main__")
    assert imported <= {"__future__", "math", "re", "collections", "dataclasses", "typing", "kontext_studio"}
    assert set(module.__all__) == {"CODES", "CoachReport", "coach"}
